"""What a kernel parameter expects, and the one check of launch arguments against it.

Both launchers check every launch the same way, before it starts:

* array arguments must be C-contiguous, of a dtype the parameter's pointee
  type accepts, and (on a device) live on the current device; nothing is ever
  copied to make an argument fit (a copied output would be written and lost);
* scalar arguments must be NumPy scalars of the parameter's exact kind and size
  (a Python ``int`` is refused: CuPy would pass it as a 64-bit integer).

A parameter is described by the tuple ``(size, kind, pointee_size,
pointee_kind)`` (kinds: ``i`` signed, ``u`` unsigned, ``f`` floating, ``h``
``__half``, ``b`` ``__nv_bfloat16``, ``p`` pointer, ``v`` void, ``B`` bool,
``o`` other; sizes in bytes, 0 where unknown). The emulator reads these from
the compiled C++ signature (``shim.h``); on a device they are read from the
kernel's Itanium-mangled name that NVRTC reports (``params_from_mangled``),
the same C++ signature in another spelling. CI checks, for every name
expression of every kernel file, that both readings agree.
"""

from __future__ import annotations

import re

import numpy as np

from ._arrays import is_cupy

__all__ = [
    "KernelArgumentError",
    "params_from_mangled",
    "param_names",
    "describe_param",
    "check_launch_args",
]


class KernelArgumentError(TypeError, ValueError):
    """A launch argument does not fit its kernel parameter (names both)."""


_KIND_NAMES = {
    ord("i"): "signed integer", ord("u"): "unsigned integer", ord("f"): "floating",
    ord("h"): "__half", ord("b"): "__nv_bfloat16", ord("p"): "pointer", ord("v"): "void",
    ord("B"): "bool", ord("o"): "struct",
}

# Itanium builtin type codes -> (size, kind)
_BUILTINS = {
    "v": (0, "v"), "b": (1, "B"), "c": (1, "i"), "a": (1, "i"), "h": (1, "u"),
    "s": (2, "i"), "t": (2, "u"), "i": (4, "i"), "j": (4, "u"), "l": (8, "i"),
    "m": (8, "u"), "x": (8, "i"), "y": (8, "u"), "n": (16, "i"), "o": (16, "u"),
    "f": (4, "f"), "d": (8, "f"), "w": (4, "i"),
}
_NAMED = {"__half": (2, "h"), "__nv_bfloat16": (2, "b"), "half": (2, "h")}


class _Type:
    """A parsed type: kind/size, and the pointee for pointers."""

    __slots__ = ("size", "kind", "pointee")

    def __init__(self, size, kind, pointee=None):
        self.size, self.kind, self.pointee = size, kind, pointee

    def describe(self):
        if self.kind == "p":
            return (8, ord("p"), self.pointee.size, ord(self.pointee.kind))
        return (self.size, ord(self.kind), 0, 0)


class _Demangler:
    """Recursive-descent reader of the Itanium manglings kernel signatures use.

    Covers builtin types, cv/restrict qualifiers, pointers, (nested) class
    names with template arguments, substitutions (``S_``, ``S0_``...),
    template parameters (``T_``...), literals in template arguments and
    function types (``F...E``, as ``typeid`` spells a kernel's pointer type).
    """

    def __init__(self, text):
        self.text, self.pos = text, 0
        self.subs = []
        self.template_args = []

    def error(self, what):
        raise ValueError(f"cannot read the mangled name {self.text!r} at {self.pos}: {what}")

    def peek(self, n=1):
        return self.text[self.pos:self.pos + n]

    def take(self, n=1):
        value = self.text[self.pos:self.pos + n]
        self.pos += n
        return value

    def number(self):
        match = re.match(r"n?\d+", self.text[self.pos:])
        if not match:
            self.error("expected a number")
        self.pos += len(match.group(0))
        return match.group(0)

    def seq_id(self, terminator="_"):
        match = re.match(r"([0-9A-Z]*)" + terminator, self.text[self.pos:])
        if not match:
            self.error("expected a sequence id")
        self.pos += len(match.group(0))
        digits = match.group(1)
        return 0 if not digits else int(digits, 36) + 1

    def source_name(self):
        length = int(self.number())
        return self.take(length)

    def template_args_list(self):
        if self.take() != "I":
            self.error("expected I")
        args = []
        while self.peek() != "E":
            if self.peek() == "L":
                self.take()
                self.type()
                while self.peek() not in ("E", ""):
                    self.take()
                self.take()
                args.append(None)
            elif self.peek() == "X":
                self.error("expressions in template arguments are not supported")
            else:
                args.append(self.type())
        self.take()
        return args

    def unqualified_name(self):
        if self.peek().isdigit():
            return self.source_name()
        self.error("expected a source name")

    def class_type(self, name):
        size, kind = _NAMED.get(name, (0, "o"))
        return _Type(size, kind)

    def nested_name(self):
        self.take()  # N
        while self.peek() in ("K", "V", "r"):
            self.take()
        components = []  # [name, template arguments or None]
        while self.peek() != "E":
            if self.peek() == "S":
                self.substitution()
                components.append(["?", None])
                continue
            if self.peek() == "I":
                args = self.template_args_list()
                if components:
                    components[-1][1] = args
                self.subs.append(None)
                continue
            components.append([self.unqualified_name(), None])
            self.subs.append(None)
        self.take()
        return self.resolve_member(components)

    def resolve_member(self, components):
        """A class named by a nested name; ``csc_acc<T>::type`` (the accumulation
        type of raw_kernels/csc_convert.cuh) is resolved: double for double,
        float otherwise."""
        if (len(components) == 2 and components[0][0] == "csc_acc"
                and components[1][0] == "type" and components[0][1]):
            value = components[0][1][0]
            if value is not None and value.kind == "f" and value.size == 8:
                return _Type(8, "f")
            return _Type(4, "f")
        return self.class_type(components[-1][0])

    def substitution(self):
        self.take()  # S
        if self.peek() in ("t", "a", "b", "s", "i", "o", "d"):
            self.take()
            return _Type(0, "o")
        index = self.seq_id()
        if index >= len(self.subs) or self.subs[index] is None:
            if index < len(self.subs):
                return _Type(0, "o")
            self.error(f"substitution {index} out of range")
        return self.subs[index]

    def function_type(self):
        self.take()  # F
        self.type()  # return type
        params = []
        while self.peek() != "E":
            params.append(self.type())
        self.take()
        return _Type(8, "o"), params

    def type(self):
        c = self.peek()
        if c in _BUILTINS:
            self.take()
            size, kind = _BUILTINS[c]
            return _Type(size, kind)
        if c == "D":
            code = self.take(2)
            if code == "DF":
                bits = self.number()
                self.take()  # _
                return _Type(int(bits) // 8, "f")
            self.error(f"unsupported type {code}")
        if c in ("K", "V", "r"):
            self.take()
            inner = self.type()
            self.subs.append(inner)
            return inner
        if c == "P":
            self.take()
            inner = self.type()
            result = _Type(8, "p", inner)
            self.subs.append(result)
            return result
        if c in ("R", "O"):
            self.error("reference parameters are not supported")
        if c == "F":
            self.error("function types as parameters are not supported")
        if c == "S":
            result = self.substitution()
            if self.peek() == "I":
                self.template_args_list()
                result = _Type(0, "o")
                self.subs.append(result)
            return result
        if c == "T":
            self.take()
            index = self.seq_id()
            if index >= len(self.template_args) or self.template_args[index] is None:
                self.error(f"template parameter {index} unknown")
            result = self.template_args[index]
            self.subs.append(result)
            return result
        if c == "N":
            # nested_name already recorded each prefix, the whole name included, as
            # a substitution candidate
            return self.nested_name()
        if c.isdigit():
            name = self.source_name()
            result = self.class_type(name)
            self.subs.append(result)
            if self.peek() == "I":
                self.template_args_list()
                result = _Type(0, "o")
                self.subs.append(result)
            return result
        self.error(f"unsupported type code {c!r}")

    def function_encoding(self):
        if self.take(2) != "_Z":
            self.error("expected _Z")
        is_template = False
        if self.peek() == "N":
            self.take()
            while self.peek() != "E":
                if self.peek() == "I":
                    self.template_args = self.template_args_list()
                    is_template = True
                else:
                    self.unqualified_name()
                    self.subs.append(None)
            self.take()
        else:
            self.unqualified_name()
            if self.peek() == "I":
                self.subs.append(None)  # the template name is a substitution candidate
                self.template_args = self.template_args_list()
                is_template = True
        if is_template:
            self.type()  # return type (void)
        params = []
        while self.pos < len(self.text):
            if self.peek() == "v" and self.pos == len(self.text) - 1 and not params:
                self.take()
                break
            params.append(self.type())
        return params


def params_from_mangled(mangled: str) -> list[tuple[int, int, int, int]]:
    """Parameter descriptors of a kernel from its Itanium-mangled name.

    Parameters
    ----------
    mangled : str
        ``_Z...`` as NVRTC's ``nvrtcGetLoweredName`` returns it (or an
        ``extern "C"`` name, which carries no types: then ``[]``), or a
        function (pointer) type ``PF...E`` as ``typeid(...).name()`` spells it.

    Returns
    -------
    list of (size, kind, pointee_size, pointee_kind)

    Raises
    ------
    ValueError
        When the mangling uses a construct this reader does not cover.
    """
    if mangled.startswith("PF") or mangled.startswith("F"):
        demangler = _Demangler(mangled)
        if demangler.peek() == "P":
            demangler.take()
        _, params = demangler.function_type()
    elif mangled.startswith("_Z"):
        params = _Demangler(mangled).function_encoding()
    else:
        raise ValueError(f"{mangled!r} carries no parameter types (an extern \"C\" kernel?)")
    return [p.describe() for p in params if p.kind != "v"]


_GLOBAL = re.compile(r"__global__\s+(?:void\s+)?(?:__launch_bounds__\s*\([^)]*\)\s*)?"
                     r"(?:void\s+)?([A-Za-z_]\w*)\s*\(", re.S)


def param_names(source: str, name_expression: str) -> list[str]:
    """Parameter names of kernel ``name_expression`` as written in ``source`` (for
    error messages; ``[]`` when the declaration is not found)."""
    base = name_expression.split("<", 1)[0].strip()
    for match in _GLOBAL.finditer(source):
        if match.group(1) != base:
            continue
        depth, start, names = 1, match.end(), []
        i = start
        while i < len(source) and depth:
            ch = source[i]
            if ch in "(<[":
                depth += 1
            elif ch in ")>]":
                depth -= 1
            if (ch == "," and depth == 1) or depth == 0:
                words = re.findall(r"[A-Za-z_]\w*", source[start:i])
                if words:
                    names.append(words[-1])
                start = i + 1
            i += 1
        return names
    return []


def describe_param(param) -> str:
    """``"pointer to 4-byte floating"``, ``"8-byte signed integer"``, ..."""
    size, kind, pointee_size, pointee_kind = param
    if kind == ord("p"):
        if pointee_kind == ord("v"):
            return "void*"
        what = _KIND_NAMES.get(pointee_kind, "?")
        return f"pointer to {pointee_size}-byte {what}" if pointee_size else f"pointer to {what}"
    return f"{size}-byte {_KIND_NAMES.get(kind, '?')}"


def _scalar_kind(dtype: np.dtype) -> int:
    if dtype == np.float16:
        return ord("h")
    if dtype.name == "bfloat16":
        return ord("b")
    if dtype.kind == "b":
        return ord("B")
    return ord(dtype.kind) if dtype.kind in "iuf" else ord("o")


def scalar_fits(dtype: np.dtype, param) -> bool:
    """A NumPy scalar of ``dtype`` may be passed for this (non-pointer) parameter."""
    size, kind = param[0], param[1]
    if size and dtype.itemsize != size:
        return False
    scalar = _scalar_kind(dtype)
    if kind in (ord("i"), ord("u")):
        return scalar in (ord("i"), ord("u"))
    if kind == ord("o"):
        return True
    return scalar == kind


def array_fits(dtype: np.dtype, param) -> bool:
    """An array of ``dtype`` may be passed for this pointer parameter."""
    pointee_size, pointee_kind = param[2], param[3]
    if pointee_kind in (ord("v"), ord("o")) or pointee_size == 1:
        return True
    if dtype.itemsize != pointee_size:
        return False
    if pointee_size == 2 and pointee_kind in (ord("h"), ord("b"), ord("i"), ord("u")):
        return True  # 16-bit storage: float16, bfloat16 and (u)int16 are interchangeable
    if pointee_kind in (ord("i"), ord("u"), ord("p")):
        return dtype.kind in "iu"
    if pointee_kind == ord("f"):
        return dtype.kind == "f"
    if pointee_kind == ord("B"):
        return dtype.kind in "biu"
    return True


def _c_contiguous(shape, strides, itemsize) -> bool:
    if strides is None:
        return True
    expected = itemsize
    for extent, stride in zip(reversed(shape), reversed(strides)):
        if extent != 1 and stride != expected:
            return False
        expected *= extent
    return True


def array_layout(arg):
    """(dtype, c_contiguous, device id or None) of an array argument, or None
    when ``arg`` is not an array (NumPy, or anything with
    ``__cuda_array_interface__``)."""
    if isinstance(arg, np.ndarray):
        return arg.dtype, bool(arg.flags.c_contiguous), None
    if is_cupy(arg) and hasattr(arg, "flags"):
        return arg.dtype, bool(arg.flags.c_contiguous), arg.device.id   # fast path
    interface = getattr(arg, "__cuda_array_interface__", None)
    if interface is None:
        return None
    dtype = getattr(arg, "dtype", None)
    dtype = np.dtype(dtype) if dtype is not None else np.dtype(interface["typestr"])
    flags = getattr(arg, "flags", None)
    if flags is not None and hasattr(flags, "c_contiguous"):
        contiguous = bool(flags.c_contiguous)
    else:
        contiguous = _c_contiguous(tuple(interface["shape"]), interface.get("strides"),
                                   dtype.itemsize)
    device = getattr(arg, "device", None)
    device_id = getattr(device, "id", None)
    return dtype, contiguous, device_id


def check_launch_args(kernel: str, params, args, *, names=(), device_arrays=False,
                      current_device=None, device_of=None) -> None:
    """Raise :class:`KernelArgumentError` unless every argument fits its parameter.

    Parameters
    ----------
    kernel : str
        The name expression (named in every error).
    params : sequence of (size, kind, pointee_size, pointee_kind)
    args : tuple or list
        The launch arguments.
    names : sequence of str
        Parameter names, when known (added to the messages).
    device_arrays : bool
        True on a device: arrays must expose ``__cuda_array_interface__`` and
        live on ``current_device``; False under emulation: NumPy arrays.
    current_device : int, optional
    device_of : callable(arg) -> int, optional
        Device of an array that does not say it itself (``arg.device.id``).
    """
    if not isinstance(args, (tuple, list)):
        raise KernelArgumentError(f"{kernel}: args must be a tuple or list, "
                                  f"got {type(args).__name__}")
    if len(args) != len(params):
        raise KernelArgumentError(f"{kernel}: expects {len(params)} arguments, got {len(args)}")
    for i, (arg, param) in enumerate(zip(args, params)):
        label = f" (parameter `{names[i]}` of {kernel})" if i < len(names) else ""
        layout = array_layout(arg)
        if layout is not None:
            dtype, contiguous, device_id = layout
            if param[1] != ord("p"):
                raise KernelArgumentError(f"{kernel}: parameter {i} is a "
                                          f"{describe_param(param)}, got an array{label}")
            if isinstance(arg, np.ndarray) == device_arrays:
                where = "host (NumPy)" if isinstance(arg, np.ndarray) else "device"
                raise KernelArgumentError(
                    f"{kernel}: argument {i} is a {where} array, but this launcher runs "
                    f"{'on a device' if device_arrays else 'under host emulation'}{label}")
            if not contiguous:
                raise KernelArgumentError(
                    f"{kernel}: array argument {i} must be C-contiguous{label}; the kernel "
                    f"reads the raw pointer, and nothing is copied behind your back (pass "
                    f"xp.ascontiguousarray(...))")
            if not array_fits(dtype, param):
                raise KernelArgumentError(f"{kernel}: parameter {i} is a "
                                          f"{describe_param(param)}, got an array of "
                                          f"{dtype}{label}")
            if device_arrays:
                if device_id is None and device_of is not None:
                    device_id = device_of(arg)
                if current_device is not None and device_id is not None \
                        and int(device_id) != int(current_device):
                    raise KernelArgumentError(
                        f"{kernel}: array argument {i} lives on device {device_id}, but the "
                        f"current device is {current_device}{label}; move it (cupy.asarray "
                        f"under `with cupy.cuda.Device({current_device}):`) or switch devices")
        elif isinstance(arg, np.generic):
            if param[1] == ord("p"):
                raise KernelArgumentError(f"{kernel}: parameter {i} is a "
                                          f"{describe_param(param)}, got a scalar "
                                          f"{arg.dtype}{label}")
            if not scalar_fits(arg.dtype, param):
                raise KernelArgumentError(f"{kernel}: parameter {i} is a "
                                          f"{describe_param(param)}, got {arg.dtype}{label}")
        elif isinstance(arg, (bool, int, float)):
            raise KernelArgumentError(
                f"{kernel}: parameter {i} ({describe_param(param)}) got a Python "
                f"{type(arg).__name__}{label}; pass an explicit NumPy scalar of the parameter's "
                "type (np.int32, np.int64, np.uint32, np.uint64, np.float32, ...)")
        else:
            raise KernelArgumentError(f"{kernel}: parameter {i}: unsupported argument type "
                                      f"{type(arg).__name__}{label} (arrays and NumPy scalars "
                                      f"only)")
