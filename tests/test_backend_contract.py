"""The contract between the core and its backends (issue 12).

* the package's module graph has no import cycle, imports inside functions
  included, and every module imports on its own in a fresh interpreter;
* kernel maps and sorted keys are frozen values: nothing can be set on them,
  their NumPy arrays are read-only, and a backend's state for a map is
  released with the map;
* both backends implement the :class:`~cusparseconv.backends.protocol.Backend`
  protocol, and a map built by one backend runs on the other;
* the products write into ``out=`` (the very array passed) on every backend.
"""

import ast
import gc
import itertools
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import cusparseconv as csc
import oracle
from conftest import assert_close, random_coords, random_feats, random_weight
from cusparseconv.backends import cpu, cuda, get_backend, protocol
from cusparseconv.backends.cpu import CpuBackend
from cusparseconv.backends.cuda import CudaBackend
from cusparseconv.coords import SortedKeys

PACKAGE = Path(csc.__file__).resolve().parent


# ---------------------------------------------------------------------------
# the module graph
# ---------------------------------------------------------------------------


def package_modules():
    """{module name: path} of every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(modules):
    """module -> the package modules it imports, anywhere in its source (functions
    included). ``from pkg import name`` counts as importing ``pkg.name`` when that is
    a module, else ``pkg``; importing ``a.b.c`` also imports the packages ``a.b``
    above it, except for a module inside that package (which Python initialises
    first) and except the root package (the public facade, which imports
    everything)."""
    root = "cusparseconv"
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                submodules = [f"{source}.{alias.name}" for alias in node.names
                              if f"{source}.{alias.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else (
                    [source] + submodules)
            else:
                continue
            for target in targets:
                if target not in modules or target == name:
                    continue
                edges[name].add(target)
                parts = target.split(".")
                for i in range(2, len(parts)):
                    parent = ".".join(parts[:i])
                    if parent != root and not name.startswith(parent + "."):
                        edges[name].add(parent)
    return edges


def cycles(edges):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = itertools.count()

    def visit(node):
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for successor in edges[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_the_graph_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package():
    edges = import_graph(package_modules())
    # the layers the README draws: data modules import no backend, backends no public API
    assert "cusparseconv.backends" not in edges["cusparseconv.kmap"]
    assert not {m for m in edges["cusparseconv.coords"] if "backends" in m}
    assert not {m for m in edges["cusparseconv.backends.cpu"]
                if m in ("cusparseconv.conv", "cusparseconv.tensor", "cusparseconv.maps")}
    assert not {m for m in edges["cusparseconv._emulate.module"] if "backends" in m}
    assert cycles(edges) == []


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    names = sorted(n for n in package_modules() if not n.endswith("__main__"))
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'cusparseconv']:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=PACKAGE.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# ---------------------------------------------------------------------------
# frozen values and per-backend state
# ---------------------------------------------------------------------------


def small_map(rng, backend=None):
    coords = random_coords(rng, 60, 3, 2, -3, 3)
    if backend is not None:
        coords = backend.put(coords)
    return coords, csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))


def test_kernel_maps_and_sorted_keys_are_frozen(rng):
    coords, kmap = small_map(rng)
    for name, value in (("in_rows", kmap.out_rows), ("n_out", 3), ("neighbour", None),
                        ("_pair_mask", None)):
        with pytest.raises(AttributeError, match="frozen"):
            setattr(kmap, name, value)
    with pytest.raises(AttributeError, match="frozen"):
        del kmap.stride
    for array in (kmap.in_rows, kmap.out_rows, kmap.pair_offsets, kmap.offsets):
        with pytest.raises(ValueError, match="read-only"):
            array[...] = 0
    assert kmap.in_rows.dtype == kmap.out_rows.dtype == np.int32   # as documented
    keys = SortedKeys(coords)
    with pytest.raises(AttributeError, match="frozen"):
        keys._hash_tables = {}
    with pytest.raises(ValueError, match="read-only"):
        keys.keys[0] = 0
    assert not hasattr(kmap, "__dict__") and not hasattr(keys, "__dict__")
    for array in csc.pair_mask(kmap):           # derived arrays the backend shares
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0


@pytest.mark.backends("cpu", "cuda-emulated")
def test_a_freed_map_releases_its_backend_state(rng, backend):
    """The state a backend derives from a map (reverse table, pair mask, device
    tables, block cuts) lives in the backend's weak-keyed table and goes with the
    map, without the cycle collector."""
    table = backend.backend._maps if backend.emulated else cpu._MAPS
    gc.collect()
    gc.disable()
    try:
        before = len(table)
        coords, kmap = small_map(rng)
        reverse = csc.reverse_kernel_map(kmap)
        csc.pair_mask(kmap)
        csc.conv_forward(random_feats(rng, 60, 2), random_weight(rng, (27, 2, 3)), kmap)
        assert kmap in table and reverse in table
        assert csc.backends.state_nbytes(kmap) > 0
        state = weakref.ref(table.get(kmap))
        refs = weakref.ref(kmap), weakref.ref(reverse)
        del kmap, reverse
        assert refs[0]() is None and refs[1]() is None
        assert state() is None
        assert len(table) == before
    finally:
        gc.enable()


@pytest.mark.backends("cuda-emulated")
def test_a_freed_coordinate_set_releases_its_hash_tables(rng, backend):
    coords = random_coords(rng, 50, 3, 2, -3, 3)
    keys = SortedKeys(coords)
    backend.backend.hash_table(keys)
    assert backend.backend.state_nbytes(keys) > 0
    probe = weakref.ref(backend.backend._sets.get(keys))
    del keys
    assert probe() is None


def test_backends_implement_the_protocol():
    for name in ("cpu", "cuda-emulated"):
        backend = get_backend(name)
        assert isinstance(backend, protocol.Backend), name
        assert backend.name == name
    members = {name for name in vars(protocol.Backend)
               if not name.startswith("_") and callable(getattr(protocol.Backend, name))}
    for cls in (CpuBackend, CudaBackend):
        assert members <= set(dir(cls)), (cls, members - set(dir(cls)))


def test_a_map_of_one_backend_runs_on_the_other(rng):
    """The emulated GPU backend derives its tables from a CPU-built map's pairs, and
    the CPU runs an emulated-built map: both against the oracle."""
    coords = random_coords(rng, 70, 3, 2, -3, 3)
    offsets = csc.kernel_offsets(3)
    feats = random_feats(rng, 70, 3)
    weight = random_weight(rng, (27, 3, 2))
    grad = random_feats(rng, 70, 2)
    pairs = oracle.kernel_map_oracle(coords, coords, offsets)
    maps = {name: get_backend(name).build_kernel_map(coords, coords, offsets, (1, 1, 1),
                                                     False, same_set=True)
            for name in ("cpu", "cuda-emulated")}
    for built, runs in (("cpu", "cuda-emulated"), ("cuda-emulated", "cpu")):
        with csc.config.use_backend(runs):
            kmap = maps[built]
            assert_close(csc.conv_forward(feats, weight, kmap),
                         oracle.conv_from_pairs_oracle(feats, weight, pairs, 70), 1e-10)
            assert_close(csc.conv_input_grad(grad, weight, kmap),
                         oracle.conv_input_grad_oracle(grad, weight, pairs, 70), 1e-10)
            reverse = csc.reverse_kernel_map(kmap)
            assert csc.reverse_kernel_map(reverse) is kmap


def test_arrays_of_two_devices_are_refused():
    class FakeCupyArray:           # the dispatch looks at the array's module only
        __module__ = "cupy._core"

    with pytest.raises(TypeError, match="one device"):
        csc.backends.backend_for(np.zeros(1), FakeCupyArray())


# ---------------------------------------------------------------------------
# out=
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
@pytest.mark.parametrize("variant", ["standard", "depthwise"])
def test_products_write_into_out(backend, rng, dtype_name, variant):
    dtype = np.dtype(dtype_name)
    coords = random_coords(rng, 80, 3, 2, -3, 3)
    fine = backend.put(coords)
    offsets = csc.kernel_offsets(3)
    kmap = csc.build_kernel_map(fine, fine, offsets)
    groups = 4 if variant == "depthwise" else 1
    shape = (27, 4) if variant == "depthwise" else (27, 4, 5)
    c_out = 4 if variant == "depthwise" else 5
    feats = random_feats(rng, 80, 4, dtype)
    weight = random_weight(rng, shape, dtype)
    bias = random_feats(rng, 1, c_out, dtype)[0]
    grad = random_feats(rng, 80, c_out, dtype)
    put = backend.put
    pairs = oracle.kernel_map_oracle(coords, coords, offsets)
    tol = {"float64": 1e-10, "float32": 1e-4, "float16": 2e-2}[dtype_name]
    xp = backend.xp

    out = xp.full((80, c_out), np.nan, dtype=dtype)
    got = csc.conv_forward(put(feats), put(weight), kmap, groups=groups, bias=put(bias),
                           out=out)
    assert got is out
    assert_close(out, oracle.conv_from_pairs_oracle(feats, weight, pairs, 80, groups, bias), tol)

    out = xp.full((80, 4), np.nan, dtype=dtype)
    assert csc.conv_input_grad(put(grad), put(weight), kmap, groups=groups, out=out) is out
    assert_close(out, oracle.conv_input_grad_oracle(grad, weight, pairs, 80, groups), tol)

    out = xp.full(shape, np.nan, dtype=dtype)
    assert csc.conv_weight_grad(put(feats), put(grad), kmap, groups=groups, out=out) is out
    assert_close(out, oracle.conv_weight_grad_oracle(feats, grad, pairs, shape, groups), tol)


def test_out_is_checked(rng):
    coords, kmap = small_map(rng)
    feats = random_feats(rng, 60, 2, np.float32)
    weight = random_weight(rng, (27, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"out must have shape \(60, 3\) and dtype float32"):
        csc.conv_forward(feats, weight, kmap, out=np.empty((60, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        csc.conv_forward(feats, weight, kmap, out=np.empty((3, 60), np.float32).T)
    buffer = np.zeros(60 * 5, np.float32)
    with pytest.raises(ValueError, match="shares memory with grad_out"):
        csc.conv_input_grad(buffer[:180].reshape(60, 3), weight, kmap,
                            out=buffer[60:180].reshape(60, 2))
    with pytest.raises(TypeError, match="out must be a NumPy or CuPy array"):
        csc.conv_weight_grad(feats, np.zeros((60, 3), np.float32), kmap, out=[0.0])


# ---------------------------------------------------------------------------
# configuration and the kernels' constants: one place each
# ---------------------------------------------------------------------------

README = PACKAGE.parent / "README.md"


def test_every_environment_variable_is_in_the_one_configuration_table():
    import re

    used = set()
    for path in PACKAGE.rglob("*.py"):
        used |= set(re.findall(r"CUSPARSECONV_[A-Z_]+[A-Z]", path.read_text()))
    text = README.read_text()
    table = text[text.index("### Configuration"):]
    table = table[:table.index("\n\n", table.index("| --- |"))]
    rows = set(re.findall(r"^\| `(CUSPARSECONV_[A-Z_]+)` \|", table, re.M))
    assert used <= rows, f"variables missing from the README's table: {sorted(used - rows)}"


def test_the_settings_live_in_one_module():
    from cusparseconv import config, tuning

    assert csc.set_num_threads is config.set_num_threads
    assert csc.set_memory_limit is config.set_memory_limit
    before = config.is_deterministic()
    try:
        config.set_deterministic(True)
        assert tuning.is_deterministic()
    finally:
        config.set_deterministic(before)
    with config.use_backend("cuda-emulated") as backend:
        assert csc.backends.backend_for(np.zeros(1)) is backend
    assert csc.backends.backend_for(np.zeros(1)).name == "cpu"


def test_tile_constants_are_defined_once_and_passed_as_defines():
    import re

    from cusparseconv._kernels import KERNEL_CONSTANTS, NVRTC_OPTIONS, kernel_dir, kernel_source

    for name, value in KERNEL_CONSTANTS.items():
        assert f"-D{name}={value}" in NVRTC_OPTIONS
    sources = {path.name: kernel_source(path.name)
               for path in Path(kernel_dir()).iterdir() if path.suffix in (".cu", ".cuh")}
    for name in KERNEL_CONSTANTS:
        users = [file for file, text in sources.items() if re.search(rf"\b{name}\b", text)]
        assert users, f"{name} is used by no kernel source"
        for file in users:
            assert not re.search(rf"^\s*#\s*define\s+{name}\b", sources[file], re.M), (
                f"{file} defines {name} itself")
    assert (cuda._TILE, cuda._CHUNK, cuda._WMMA_TILE, cuda._MAX_MASK_WORDS) == (
        KERNEL_CONSTANTS["CSC_TILE"], KERNEL_CONSTANTS["CSC_CHUNK"],
        KERNEL_CONSTANTS["CSC_WMMA_TILE"], KERNEL_CONSTANTS["CSC_MAX_MASK_WORDS"])


def test_int32_rows_bound_the_sets_of_a_map():
    from cusparseconv._limits import MAX_ROWS, check_kernel_map_size

    check_kernel_map_size(10, 10, 27, get_backend("cpu"))
    with pytest.raises(ValueError, match="int32 row indices"):
        check_kernel_map_size(MAX_ROWS + 1, 10, 1, get_backend("cpu"))
