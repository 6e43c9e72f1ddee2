"""A performance model of the GPU products: floors and the modelled time of our kernels.

Two things per product (forward, input gradient, weight gradient) of one layer:

* the **floor**: the FLOPs (``2 * pairs * C_in * C_out``) over the dense GEMM rate
  of the dtype, or the fewest bytes the product must move over the copy
  bandwidth, whichever is larger. The fewest bytes: the source features read
  once, the weights (or the weight gradient) once, the result written once, and
  4 bytes of map per pair (the partner row; the other row is implied by the
  position in an output-major table). ``bench_gpu.py`` computes the same floor
  from rates measured in the same run;
* the **modelled time** of our kernels, from their compiled code and the map:
  the tensor-core work they execute (tile shape times the offsets active in each
  tile, ``_tensor_core.tile_offset_steps``: the gather redundancy of the row
  order), the bytes each block moves from L2 (gathered rows, weight tiles, map
  entries) and from DRAM, and the blocks resident per SM (occupancy from ptxas's
  registers and shared memory). Time = the largest of tensor-core time, L2 time
  and DRAM time, for the grid's waves; launch gaps and the tail are ignored.

The ceilings come from NVIDIA's datasheets where they exist (dense tensor-core
rate, HBM bandwidth, SM count); two figures are **assumptions**, stated where
they are used: the share of the tensor-core peak that ``mma.sync`` reaches on
Hopper (the full rate needs ``wgmma``) and the L2 bandwidth (no datasheet
figure). Everything here is a prediction until ``bench_gpu.py`` measures it.

``python benchmarks/perf_model.py`` prints the README's prediction tables for
the issue's workload (the Motorcycle scan voxelised at 5 mm: about 200k voxels,
3x3x3 stride 1, float16, C = 64), with the map counted on the CPU and the
kernels' figures from ``python -m cusparseconv._emulate.sass``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

#: Bytes of map per pair in the floor (one int32 partner row).
MAP_BYTES_PER_PAIR = 4


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """Peak rates of one device.

    Attributes
    ----------
    name : str
    tensor_tflops : dict
        Dense (no structured sparsity) tensor-core rate per operand type:
        ``float16``, ``bfloat16``, ``tf32``; ``float32``: the SIMT FP32 rate.
    hbm_gbps : float
        DRAM bandwidth, GB/s.
    sms : int
    mma_sync_fraction : float
        Assumption: share of ``tensor_tflops`` that ``mma.sync`` kernels reach.
    l2_gbps : float
        Assumption: L2-to-SM bandwidth, GB/s.
    sources : str
    """

    name: str
    tensor_tflops: dict
    hbm_gbps: float
    sms: int
    mma_sync_fraction: float
    l2_gbps: float
    sources: str


_HOPPER_ASSUMPTIONS = (
    "assumed: mma.sync reaches half the dense tensor-core peak on Hopper (its full rate "
    "needs wgmma; FlashAttention-3, arXiv 2407.08608, reports 35 % utilisation for the "
    "mma.sync-based FlashAttention-2 on H100); L2 bandwidth 7 TB/s (no datasheet figure)")

#: NVIDIA H100 SXM5 (datasheet: 989.4 dense FP16/BF16 tensor TFLOP/s, 494.7 TF32,
#: 66.9 FP32; 3.35 TB/s HBM3; 132 SMs).
H100_SXM = Ceilings("H100 SXM5", {"float16": 989.4, "bfloat16": 989.4, "tf32": 494.7,
                                  "float32": 66.9}, 3350.0, 132, 0.5, 7000.0,
                    "NVIDIA H100 Tensor Core GPU datasheet (SXM5); " + _HOPPER_ASSUMPTIONS)
#: NVIDIA H200 SXM (datasheet: the H100 SXM5's compute, 4.8 TB/s HBM3e; 132 SMs).
H200_SXM = Ceilings("H200 SXM", dict(H100_SXM.tensor_tflops), 4800.0, 132, 0.5, 7000.0,
                    "NVIDIA H200 Tensor Core GPU datasheet (SXM); " + _HOPPER_ASSUMPTIONS)
DEVICES = {"h100": H100_SXM, "h200": H200_SXM}


# ---------------------------------------------------------------------------
# floors
# ---------------------------------------------------------------------------

def product_work(product: str, n_in: int, n_out: int, n_pairs: int, kernel_volume: int,
                 c_in: int, c_out: int, itemsize: int) -> dict:
    """FLOPs and the fewest bytes of one product.

    Parameters
    ----------
    product : {"forward", "input_grad", "weight_grad"}
    n_in, n_out, n_pairs, kernel_volume, c_in, c_out : int
    itemsize : int
        Bytes per feature / weight element.

    Returns
    -------
    dict with ``flops`` and ``min_bytes``
    """
    flops = 2.0 * n_pairs * c_in * c_out
    weights = kernel_volume * c_in * c_out * itemsize
    map_bytes = MAP_BYTES_PER_PAIR * n_pairs
    if product == "forward":
        moved = n_in * c_in * itemsize + weights + n_out * c_out * itemsize
    elif product == "input_grad":
        moved = n_out * c_out * itemsize + weights + n_in * c_in * itemsize
    elif product == "weight_grad":
        moved = n_in * c_in * itemsize + n_out * c_out * itemsize + weights
    else:
        raise ValueError(f"product must be forward, input_grad or weight_grad, got {product!r}")
    return {"flops": flops, "min_bytes": float(moved + map_bytes)}


def floor_ms(flops: float, min_bytes: float, gemm_tflops: float, copy_gbps: float) -> float:
    """``max(flops / GEMM rate, bytes / copy bandwidth)`` in milliseconds."""
    return max(flops / (gemm_tflops * 1e9), min_bytes / (copy_gbps * 1e6))


# ---------------------------------------------------------------------------
# modelled kernels
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KernelShape:
    """What the compiled code of one kernel says: its tile and residency."""

    name: str
    blocks_per_sm: int


_BOUND_NAMES = {"tensor_ms": "tensor cores", "l2_ms": "L2", "dram_ms": "DRAM"}


def _bound(terms: dict, blocks: int, sms: int) -> dict:
    """The largest term, stretched when the grid leaves SMs idle (fewer blocks than
    SMs; from one block per SM on, the pipelines keep enough bytes in flight)."""
    fill = min(1.0, blocks / sms) if sms else 1.0
    name = max(terms, key=terms.get)
    return {"time_ms": terms[name] / max(fill, 1e-9), "bound": _BOUND_NAMES[name], **terms}


def implicit_gemm_model(ceil: Ceilings, shape: KernelShape, *, n_rows: int, n_src: int,
                        n_pairs: int, tile_steps: int, kernel_volume: int, n_words: int,
                        c_src: int, c_dst: int, itemsize: int, tile_rows: int,
                        tile_cols: int, ordered: bool = True) -> dict:
    """``tc_implicit_gemm`` (forward, or input gradient on the reverse map).

    Per tile (``tile_rows`` x ``tile_cols``) and offset active in it, the block
    gathers the rows that have the pair (zero fill reads nothing) and loads the
    offset's weight slice; the tensor cores multiply the whole tile, padding
    included: executed / useful = ``tile_steps * tile_rows / n_pairs``.
    """
    col_tiles = -(-c_dst // tile_cols)
    executed = 2.0 * tile_steps * tile_rows * c_src * tile_cols * col_tiles
    gathered = n_pairs * c_src * itemsize * col_tiles          # valid rows, per column tile
    weight_tiles = tile_steps * c_src * tile_cols * itemsize * col_tiles
    map_reads = tile_steps * tile_rows * 4 * col_tiles + n_rows * (4 * n_words + 4 * ordered)
    out_bytes = n_rows * c_dst * itemsize
    l2 = gathered + weight_tiles + map_reads + out_bytes
    dram = n_src * c_src * itemsize + n_rows * kernel_volume * 4 + out_bytes + \
        n_rows * 4 * (n_words + ordered)
    tensor = ceil.tensor_tflops["float16" if itemsize == 2 else "tf32"] * ceil.mma_sync_fraction
    blocks = -(-n_rows // tile_rows) * col_tiles
    result = _bound({"tensor_ms": executed / (tensor * 1e9), "l2_ms": l2 / (ceil.l2_gbps * 1e6),
                     "dram_ms": dram / (ceil.hbm_gbps * 1e6)},
                    blocks, ceil.sms)
    result.update(executed_flops=executed, useful_flops=2.0 * n_pairs * c_src * c_dst,
                  l2_bytes=float(l2), dram_bytes=float(dram), blocks=blocks,
                  waves=blocks / (ceil.sms * shape.blocks_per_sm))
    return result


def weight_grad_model(ceil: Ceilings, shape: KernelShape, *, n_in: int, n_out: int,
                      n_pairs: int, n_chunks: int, kernel_volume: int, c_in: int, c_out: int,
                      itemsize: int, pairs_per_step: int) -> dict:
    """``tc_wgrad_partial`` + ``tc_wgrad_reduce``: per chunk of pairs and 64 x 64 tile of
    the gradient, both rows of every pair gathered; fp32 partial tiles written and
    summed in chunk order."""
    tiles = -(-c_in // 64) * -(-c_out // 64)
    executed = 2.0 * (n_pairs + n_chunks * pairs_per_step / 2) * 64 * 64 * tiles
    # each block gathers its 64 input channels of X and its 64 output channels of G
    gathered = n_pairs * (-(-c_out // 64) * c_in + -(-c_in // 64) * c_out) * itemsize
    partial = n_chunks * c_in * c_out * 4
    l2 = gathered + n_pairs * 8 * tiles + 2 * partial + kernel_volume * c_in * c_out * itemsize
    dram = (n_in * c_in + n_out * c_out) * itemsize + n_pairs * 8 + 2 * partial + \
        kernel_volume * c_in * c_out * itemsize
    tensor = ceil.tensor_tflops["float16" if itemsize == 2 else "tf32"] * ceil.mma_sync_fraction
    blocks = n_chunks * tiles
    result = _bound({"tensor_ms": executed / (tensor * 1e9), "l2_ms": l2 / (ceil.l2_gbps * 1e6),
                     "dram_ms": dram / (ceil.hbm_gbps * 1e6)},
                    blocks, ceil.sms)
    result.update(executed_flops=executed, useful_flops=2.0 * n_pairs * c_in * c_out,
                  l2_bytes=float(l2), dram_bytes=float(dram), blocks=blocks,
                  waves=blocks / (ceil.sms * shape.blocks_per_sm))
    return result


def kernel_map_model(ceil: Ceilings, *, n_rows: int, n_pairs: int, kernel_volume: int,
                     ndim: int, mirrored: bool) -> dict:
    """The tiled map build of ``raw_kernels/kernel_map.cu`` (both directions).

    Probes: one per (row, offset) of each searched direction, about 64 bytes of
    L2 sectors each (the key's and the value's, linear probing at a load of at
    most one half); DRAM: the tables written and read back (neighbour, position,
    pair table, masks, tile counts; mirrored: the reverse copied, not searched)."""
    searches = 1 if mirrored else 2
    probes = searches * n_rows * kernel_volume
    table = n_rows * kernel_volume * 4                     # a neighbour or position table
    mask = n_rows * 4 * -(-kernel_volume // 32)
    capacity = 1 << max(4, (2 * n_rows - 1).bit_length())
    # per search: coordinates read, neighbour written (search) and read (compaction),
    # position, pair table and mask written; the hash table filled and written once
    searched = n_rows * (ndim + 1) * 4 + 3 * table + n_pairs * 8 + mask
    # mirrored reverse: neighbour and position read and written, pair table copied, mask
    mirror = 4 * table + 2 * n_pairs * 8 + mask
    dram = searches * searched + (mirror if mirrored else 0) + \
        (1 if mirrored else 2) * 2 * capacity * 12
    terms = {"l2_ms": probes * 64 / (ceil.l2_gbps * 1e6), "dram_ms": dram / (ceil.hbm_gbps * 1e6)}
    result = _bound(terms, 1, 1)
    result.update(probes=probes, dram_bytes=float(dram))
    return result


# ---------------------------------------------------------------------------
# the README's table
# ---------------------------------------------------------------------------

def _kernel_shapes(arch: str = "sm_90") -> dict:
    """Blocks per SM of the kernels the model uses, from ptxas (via the sass module)."""
    from cusparseconv._emulate import nvrtc_check, sass

    wanted = {"tc_implicit_gemm<__half, 128, 64, 3, 1>", "tc_implicit_gemm<__half, 64, 64, 4, 1>",
              "tc_wgrad_partial<__half, 1>"}
    reports = []
    for name in ("tc_gemm.cu", "tc_wgrad.cu"):
        reports += sass.inspect_source(nvrtc_check.RAW_KERNELS / name, arch)
    shapes = {}
    for r in reports:
        if r.name in wanted:
            warps = r.threads // 32
            shapes[r.name] = KernelShape(r.name, int(round(r.occupancy * 64 / warps)))
    return shapes


def target_workload():
    """The issue's workload: the Motorcycle scan (scikit-image) voxelised at 5 mm."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(os.path.dirname(here), "examples"))
    import real_scans  # examples/real_scans.py

    import cusparseconv as csc

    points, _ = real_scans.load_motorcycle(with_colors=False)
    return "Motorcycle, 5 mm", csc.voxelize(points, 0.005)[0]


def predictions(coords, channels: int = 64, devices=(H100_SXM, H200_SXM), shapes=None):
    """Per device and product: floor and modelled time (ms), from the CPU map of `coords`."""
    import cusparseconv as csc
    from cusparseconv.backends import _tensor_core as tc
    from cusparseconv.backends._launch import emulated_launcher

    shapes = shapes if shapes is not None else _kernel_shapes()
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    n, pairs, k = len(coords), kmap.n_pairs, kmap.kernel_volume
    launcher = emulated_launcher()
    variant = tc.VARIANTS[tc.default_variant(n, channels, channels, np.float16)]
    kernel = shapes[variant.kernel("__half")]
    steps = {}
    for direction, m in (("forward", kmap), ("input_grad", csc.reverse_kernel_map(kmap))):
        mask, _ = csc.pair_mask(m)
        order = tc.row_order_by_mask(launcher, mask)
        steps[direction] = (tc.tile_offset_steps(mask, order, variant.rows),
                            tc.tile_offset_steps(mask, None, variant.rows))
    chunk_pairs, begin, _, _ = tc.wgrad_chunking(kmap.pair_offsets, channels, channels)
    rows = []
    for ceil in devices:
        for product in ("forward", "input_grad", "weight_grad"):
            work = product_work(product, n, n, pairs, k, channels, channels, 2)
            floor = floor_ms(work["flops"], work["min_bytes"], ceil.tensor_tflops["float16"],
                             ceil.hbm_gbps)
            if product == "weight_grad":
                model = weight_grad_model(ceil, shapes["tc_wgrad_partial<__half, 1>"], n_in=n,
                                          n_out=n, n_pairs=pairs, n_chunks=begin.shape[0],
                                          kernel_volume=k, c_in=channels, c_out=channels,
                                          itemsize=2, pairs_per_step=32)
                kernel_name, raster = "tc_wgrad_partial<__half, 1>", None
            else:
                ordered, unordered = steps[product]
                common = dict(n_rows=n, n_src=n, n_pairs=pairs, kernel_volume=k, n_words=1,
                              c_src=channels, c_dst=channels, itemsize=2,
                              tile_rows=variant.rows, tile_cols=variant.cols)
                model = implicit_gemm_model(ceil, kernel, tile_steps=ordered, **common)
                raster = implicit_gemm_model(ceil, kernel, tile_steps=unordered,
                                             ordered=False, **common)
                kernel_name = variant.kernel("__half")
            rows.append(dict(device=ceil.name, product=product, flops=work["flops"],
                             min_bytes=work["min_bytes"], floor_ms=floor, kernel=kernel_name,
                             blocks_per_sm=shapes[kernel_name].blocks_per_sm, model=model,
                             raster=raster))
        rows.append(dict(device=ceil.name, product="kernel map", model=kernel_map_model(
            ceil, n_rows=n, n_pairs=pairs, kernel_volume=k, ndim=3, mirrored=True)))
    return dict(voxels=n, pairs=pairs, chunks=int(begin.shape[0]), chunk_pairs=chunk_pairs,
                rows=rows)


def _us(ms: float) -> str:
    return f"{ms * 1e3:.1f}"


def markdown(name: str, result: dict) -> str:
    """The prediction table (Markdown) of :func:`predictions`."""
    lines = [f"{name}: {result['voxels']:,} voxels, {result['pairs']:,} pairs "
             f"({result['pairs'] / result['voxels']:.2f} per voxel), float16, C = 64 -> 64, "
             f"3x3x3, stride 1. Predictions, not measurements.", "",
             "| device | product | floor µs (FLOPs / bytes) | our kernel | modelled µs "
             "(tensor / L2 / DRAM) | x floor | executed / useful MMA | L2 / DRAM MB "
             "| rows in input order, µs | spconv 2.3 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        model = row["model"]
        if row["product"] == "kernel map":
            lines.append(
                f"| {row['device']} | kernel map (one search, reverse mirrored) | | "
                f"`kernel_map.cu` tiled build | **{_us(model['time_ms'])}** ({model['bound']}: "
                f"- / {_us(model['l2_ms'])} / {_us(model['dram_ms'])}) | | | "
                f"{model['probes'] * 64 / 1e6:.0f} / {model['dram_bytes'] / 1e6:.0f} | | "
                f"none sourced |")
            continue
        work = row["flops"], row["min_bytes"]
        raster = row["raster"]
        lines.append(
            f"| {row['device']} | {row['product']} | **{_us(row['floor_ms'])}** "
            f"({work[0] / 1e9:.1f} GFLOP / {work[1] / 1e6:.0f} MB) | `{row['kernel']}`: "
            f"{model['blocks']} blocks, {row['blocks_per_sm']} per SM, "
            f"{model['waves']:.1f} waves | "
            f"**{_us(model['time_ms'])}** ({model['bound']}: {_us(model['tensor_ms'])} / "
            f"{_us(model['l2_ms'])} / {_us(model['dram_ms'])}) | "
            f"{model['time_ms'] / row['floor_ms']:.1f} | "
            f"{model['executed_flops'] / model['useful_flops']:.2f} | "
            f"{model['l2_bytes'] / 1e6:.0f} / {model['dram_bytes'] / 1e6:.0f} | "
            f"{_us(raster['time_ms']) if raster else ''} | none sourced |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args(argv)
    name, coords = target_workload()
    print(markdown(name, predictions(coords, args.channels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
