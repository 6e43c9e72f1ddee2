"""Inspect the compiled kernels without a GPU: NVRTC -> PTX -> ptxas -> nvdisasm.

For every ``raw_kernels/*.cu`` file and architecture, the file is compiled by
NVRTC to PTX (with all its ``csc-instantiate`` name expressions), assembled by
``ptxas -v`` of the same CUDA release (PyPI wheel ``nvidia-cuda-nvcc``) and
disassembled by ``nvdisasm`` (wheel ``nvidia-cuda-nvdisasm``). Per kernel this
gives registers, static shared memory, stack frame and spills (ptxas), the
SASS opcodes (HMMA, LDSM, LDGSTS, ...) and the PTX's ``cp.async.wait_group``
counts, and from them the theoretical occupancy.

`check` states the CI rules: every kernel has no spills and no stack frame;
the tensor-core products (tc_gemm.cu, tc_wgrad.cu) run HMMA fed by LDSM, the
16-byte variants load with LDGSTS, and their main loops keep copy groups in
flight (a ``cp.async.wait_group`` with a non-zero count).

Run ``python -m cusparseconv._emulate.sass`` for the table (Markdown) and the
check; ``--arch`` and file names narrow it down.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import nvrtc_check

__all__ = ["ARCHS", "TENSOR_CORE_SOURCES", "KernelReport", "tool_path",
           "tools_unavailable_reason", "inspect_source", "inspect_all", "occupancy", "check",
           "markdown_table"]

ARCHS = ("sm_80", "sm_90")
TENSOR_CORE_SOURCES = ("tc_gemm.cu", "tc_wgrad.cu")
#: Threads per block assumed for kernels without __launch_bounds__ (Launcher.launch_1d).
DEFAULT_THREADS = 256

# Per-SM limits (CUDA programming guide, compute capabilities 8.0 and 9.0).
_LIMITS = {
    "sm_80": dict(threads=2048, blocks=32, registers=65536, shared=167936, reserved=1024),
    "sm_90": dict(threads=2048, blocks=32, registers=65536, shared=233472, reserved=1024),
}


@dataclass
class KernelReport:
    """What the compiler says about one kernel (one name expression) on one architecture."""

    source: str
    arch: str
    name: str
    mangled: str
    registers: int = 0
    shared_bytes: int = 0
    stack_frame: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    threads: int = DEFAULT_THREADS
    launch_bounds: bool = False
    opcodes: dict = field(default_factory=dict)     # SASS opcode (first word) -> count
    wait_groups: list = field(default_factory=list)  # N of each cp.async.wait_group N

    @property
    def occupancy(self) -> float:
        return occupancy(self.arch, self.registers, self.shared_bytes, self.threads)

    def count(self, prefix: str) -> int:
        return sum(n for op, n in self.opcodes.items() if op.split(".")[0] == prefix)


def tool_path(name: str) -> Path | None:
    """``ptxas`` / ``nvdisasm`` from the ``nvidia`` wheels (``nvidia/cu*/bin``), or None."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for candidate in sorted(Path(root).glob(f"cu*/bin/{name}")) + [
                Path(root) / "cuda_nvcc" / "bin" / name]:
            if candidate.is_file():
                return candidate
    return None


def _release(tool: Path) -> tuple[int, int] | None:
    out = subprocess.run([str(tool), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def tools_unavailable_reason() -> str | None:
    """None when NVRTC, ptxas and nvdisasm of one CUDA release are installed, else why not."""
    reason = nvrtc_check.nvrtc_unavailable_reason()
    if reason:
        return reason
    nvrtc_version = tuple(nvrtc_check._nvrtc().getVersion())
    for name, wheel in (("ptxas", "nvidia-cuda-nvcc"), ("nvdisasm", "nvidia-cuda-nvdisasm")):
        tool = tool_path(name)
        if tool is None:
            return f"{name} not found: install the {wheel} wheel (the test extra does)"
        release = _release(tool)
        if release != nvrtc_version:
            return (f"{name} is from CUDA {release}, NVRTC from {nvrtc_version}: install "
                    f"{wheel}=={nvrtc_version[0]}.{nvrtc_version[1]}.*")
    return None


def occupancy(arch: str, registers: int, shared_bytes: int, threads: int) -> float:
    """Theoretical occupancy: resident warps per SM over the maximum (64).

    Registers are allocated per warp in units of 256; shared memory per block in
    units of 128 bytes plus 1 KiB reserved by the system; the largest shared
    memory carve-out is assumed.
    """
    limit = _LIMITS[arch]
    warps = -(-threads // 32)
    per_warp_registers = -(-max(registers, 1) * 32 // 256) * 256
    by_registers = (limit["registers"] // per_warp_registers) // warps
    per_block_shared = -(-(shared_bytes + limit["reserved"]) // 128) * 128
    by_shared = limit["shared"] // per_block_shared
    by_threads = limit["threads"] // (warps * 32)
    blocks = min(by_registers, by_shared, by_threads, limit["blocks"])
    return blocks * warps / (limit["threads"] // 32)


_FUNCTION = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, "
                       r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Compiling entry function '(\S+)'.*?Used (\d+) registers"
                   r"(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?", re.S)


def _parse_ptxas(log: str) -> dict:
    info = {}
    for block in re.split(r"(?=ptxas info\s*: Compiling entry function)", log):
        used = _USED.search(block)
        if not used:
            continue
        mangled = used.group(1)
        entry = info.setdefault(mangled, {})
        entry["registers"] = int(used.group(2))
        entry["shared_bytes"] = int(used.group(3) or 0)
        props = _FUNCTION.search(block)
        if props:
            entry.update(stack_frame=int(props.group(2)), spill_stores=int(props.group(3)),
                         spill_loads=int(props.group(4)))
    return info


def _parse_sass(text: str) -> dict:
    """{mangled name: {opcode: count}} from nvdisasm output."""
    result, current = {}, None
    for line in text.splitlines():
        header = re.match(r"\s*\.text\.(\S+):\s*$", line)
        if header:
            current = result.setdefault(header.group(1), {})
            continue
        if line.lstrip().startswith(".section"):
            current = None
            continue
        instr = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if instr and current is not None:
            current[instr.group(1)] = current.get(instr.group(1), 0) + 1
    return result


def _parse_ptx(ptx: str) -> dict:
    """{mangled name: (maxntid or None, [wait_group counts])} of every .entry."""
    result = {}
    for match in re.finditer(r"\.entry\s+(\S+?)\s*\(", ptx):
        start = match.end()
        body_start = ptx.find("{", start)
        nxt = re.search(r"\.entry\s", ptx[body_start:])
        body = ptx[start:body_start + nxt.start()] if nxt else ptx[start:]
        maxntid = re.search(r"\.maxntid\s+(\d+),\s*(\d+),\s*(\d+)", body)
        threads = None
        if maxntid:
            threads = int(maxntid.group(1)) * int(maxntid.group(2)) * int(maxntid.group(3))
        waits = [int(n) for n in re.findall(r"cp\.async\.wait_group\s+(\d+)", body)]
        result[match.group(1)] = (threads, waits)
    return result


def inspect_source(path, arch: str, names=None) -> list[KernelReport]:
    """Compile one source for `arch` and report every kernel it declares (or only the
    name expressions `names`).

    Raises
    ------
    nvrtc_check.NvrtcCompileError
        When NVRTC rejects the source.
    RuntimeError
        When ptxas or nvdisasm fails.
    """
    path = Path(path)
    text = path.read_text()
    names = list(names) if names else nvrtc_check.parse_instantiations(text)
    include = [str(path.parent), *nvrtc_check.cuda_include_dirs()]
    compiled = nvrtc_check.run_nvrtc(text, path.name, f"-arch=compute_{arch.split('_')[1]}",
                                     names, [f"-I{d}" for d in include], output="ptx")
    ptx = compiled["ptx"]
    lowered = {mangled: expr for expr, mangled in compiled["lowered"].items()}
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path, cubin = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        ptx_path.write_text(ptx)
        assembled = subprocess.run([str(tool_path("ptxas")), f"-arch={arch}", "-v",
                                    str(ptx_path), "-o", str(cubin)],
                                   capture_output=True, text=True)
        if assembled.returncode != 0:
            raise RuntimeError(f"ptxas failed on {path.name} for {arch}:\n{assembled.stderr}")
        disassembled = subprocess.run([str(tool_path("nvdisasm")), "-c", str(cubin)],
                                      capture_output=True, text=True)
        if disassembled.returncode != 0:
            raise RuntimeError(f"nvdisasm failed on {path.name} for {arch}:\n"
                               f"{disassembled.stderr}")
    resources = _parse_ptxas(assembled.stdout + assembled.stderr)
    sass = _parse_sass(disassembled.stdout)
    entries = _parse_ptx(ptx)
    reports = []
    for mangled in sorted(set(resources) | set(entries)):
        threads, waits = entries.get(mangled, (None, []))
        report = KernelReport(path.name, arch, lowered.get(mangled, mangled), mangled,
                              threads=threads or DEFAULT_THREADS,
                              launch_bounds=threads is not None,
                              opcodes=sass.get(mangled, {}), wait_groups=waits)
        for key, value in resources.get(mangled, {}).items():
            setattr(report, key, value)
        reports.append(report)
    return reports


def inspect_all(paths=None, archs=ARCHS, workers: int = 2) -> list[KernelReport]:
    """`inspect_source` over files x architectures (default: every raw_kernels source),
    `workers` compilations at a time, in a stable order."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [Path(p) for p in paths] if paths else nvrtc_check.kernel_sources()
    jobs = [(path, arch) for arch in archs for path in paths]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda job: inspect_source(*job), jobs))
    return [report for reports in results for report in reports]


def _is_sixteen_bit(report: KernelReport) -> bool:
    return "__half" in report.name or "__nv_bfloat16" in report.name


def _is_vectorized(report: KernelReport) -> bool:
    return report.name.replace(" ", "").endswith(",1>")


def check(reports) -> list[str]:
    """The CI rules; returns one line per violation (empty: all good)."""
    problems = []
    for r in reports:
        where = f"{r.source} {r.name} ({r.arch})"
        if r.spill_stores or r.spill_loads:
            problems.append(f"{where}: {r.spill_stores} bytes spill stores, "
                            f"{r.spill_loads} bytes spill loads")
        if r.stack_frame:
            problems.append(f"{where}: {r.stack_frame} bytes stack frame")
        if r.source not in TENSOR_CORE_SOURCES or "reduce" in r.name:
            continue
        if not r.count("HMMA"):
            problems.append(f"{where}: no HMMA instruction (tensor cores unused)")
        if not r.count("LDSM") and (_is_sixteen_bit(r) or "tc_implicit_gemm" in r.name):
            problems.append(f"{where}: no LDSM (fragments not loaded by ldmatrix)")
        if _is_vectorized(r) and not r.count("LDGSTS"):
            problems.append(f"{where}: no LDGSTS (no cp.async in the 16-byte variant)")
        if not any(n > 0 for n in r.wait_groups):
            problems.append(f"{where}: no cp.async.wait_group with a non-zero count in the "
                            f"PTX (the main loop does not overlap copies with math)")
    return problems


def markdown_table(reports) -> str:
    """One row per kernel and architecture: registers, shared memory, spills, occupancy."""
    lines = ["| file | kernel | arch | threads | registers | static smem (B) | "
             "stack / spills (B) | occupancy | HMMA / LDSM / LDGSTS |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in reports:
        threads = f"{r.threads}" + ("" if r.launch_bounds else "*")
        tensor = (f"{r.count('HMMA')} / {r.count('LDSM')} / {r.count('LDGSTS')}"
                  if r.count("HMMA") or r.count("LDGSTS") else "")
        lines.append(f"| {r.source} | `{r.name}` | {r.arch} | {threads} | {r.registers} | "
                     f"{r.shared_bytes} | {r.stack_frame} / {r.spill_stores + r.spill_loads} | "
                     f"{r.occupancy:.0%} | {tensor} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cusparseconv._emulate.sass",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="kernel sources (default: raw_kernels/*.cu)")
    parser.add_argument("--arch", action="append", choices=ARCHS,
                        help="architecture (repeatable; default: sm_80 and sm_90)")
    args = parser.parse_args(argv)
    reason = tools_unavailable_reason()
    if reason:
        print(f"sass: {reason}", file=sys.stderr)
        return 2
    reports = inspect_all(args.files or None, args.arch or ARCHS)
    print(markdown_table(reports))
    print("\n(* no __launch_bounds__: launched with 256 threads by Launcher.launch_1d)")
    problems = check(reports)
    for line in problems:
        print(f"FAIL  {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
