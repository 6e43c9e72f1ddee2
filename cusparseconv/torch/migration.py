"""Clear errors for the names, arguments and layouts of spconv, MinkowskiEngine and
TorchSparse, pointing to their cusparseconv equivalents.

Where the peers' semantics differ from ours (spconv's ``SparseConv3d(stride=1)``
grows the active set, MinkowskiEngine and TorchSparse keep strided
coordinates at the original scale, all three take features first), an alias
would be silently wrong; an error that names the equivalent is not. The
table of equivalents is the README section "Coming from spconv,
MinkowskiEngine or TorchSparse".
"""

from __future__ import annotations

import numpy as np

SECTION = "README, 'Coming from spconv, MinkowskiEngine or TorchSparse'"

#: Module-level names of the peers -> what to use here.
PEER_NAMES = {
    # spconv
    "SubMConv3d": "spconv's SubMConv3d (submanifold) is SparseConv3d(in, out, kernel_size) "
                  "with stride 1: every stride-1 convolution here keeps the input "
                  "coordinates",
    "SubMConv2d": "spconv's SubMConv2d is SparseConv2d(in, out, kernel_size) with stride 1",
    "SparseInverseConv3d": "spconv's SparseInverseConv3d(indice_key=...) is "
                           "SparseConvTranspose3d(in, out, kernel_size, stride): it restores "
                           "the finer coordinates from the tensor's coordinate cache, no "
                           "indice_key needed",
    "SparseInverseConv2d": "spconv's SparseInverseConv2d is SparseConvTranspose2d",
    "SparseConvTensor": "spconv's SparseConvTensor(features, indices, spatial_shape, "
                        "batch_size) is SparseTensor(indices, features): coordinates first, "
                        "no spatial_shape or batch_size",
    "SparseSequential": "use torch.nn.Sequential: every layer here takes and returns a "
                        "SparseTensor",
    # MinkowskiEngine
    "MinkowskiConvolution": "MinkowskiConvolution(in, out, kernel_size, stride, "
                            "dimension=D) is SparseConv(in, out, kernel_size, stride, ndim=D) "
                            "(SparseConv3d for D = 3); strided outputs hold coarse "
                            "coordinates here (ME keeps the original scale)",
    "MinkowskiConvolutionTranspose": "MinkowskiConvolutionTranspose is "
                                     "SparseConvTranspose3d (or SparseConv(..., "
                                     "transposed=True, ndim=D))",
    "MinkowskiGenerativeConvolutionTranspose": "MinkowskiGenerativeConvolutionTranspose is "
                                               "SparseConvTranspose3d(..., generative=True)",
    "MinkowskiBatchNorm": "MinkowskiBatchNorm is SparseBatchNorm",
    "MinkowskiReLU": "MinkowskiReLU is SparseReLU",
    "MinkowskiLinear": "MinkowskiLinear is SparseLinear",
    "MinkowskiDropout": "MinkowskiDropout is SparseDropout",
    "MinkowskiMaxPooling": "MinkowskiMaxPooling is SparseMaxPool3d (or SparsePool(mode='max', "
                           "ndim=D))",
    "MinkowskiAvgPooling": "MinkowskiAvgPooling is SparseAvgPool3d (the mean over the active "
                           "inputs of each output)",
    "MinkowskiSumPooling": "MinkowskiSumPooling is SparseSumPool3d",
    "MinkowskiGlobalPooling": "MinkowskiGlobalPooling is SparseGlobalAvgPool",
    "MinkowskiGlobalAvgPooling": "MinkowskiGlobalAvgPooling is SparseGlobalAvgPool",
    "MinkowskiGlobalMaxPooling": "MinkowskiGlobalMaxPooling is SparseGlobalMaxPool",
    "MinkowskiGlobalSumPooling": "MinkowskiGlobalSumPooling is SparseGlobalPool('sum')",
    "MinkowskiPoolingTranspose": "for unpooling use SparseUpsample (nearest neighbour: each "
                                 "finer row takes its parent's features)",
    "MinkowskiConvolutionFunction": "the autograd function is sparse_conv / conv here",
    # TorchSparse (torchsparse.nn)
    "Conv3d": "TorchSparse's spnn.Conv3d(in, out, kernel_size, stride, transposed=...) is "
              "SparseConv3d(in, out, kernel_size, stride, transposed=...)",
    "BatchNorm": "TorchSparse's spnn.BatchNorm is SparseBatchNorm",
    "ReLU": "TorchSparse's spnn.ReLU is SparseReLU",
    "LeakyReLU": "TorchSparse's spnn.LeakyReLU is SparseLeakyReLU",
    "GlobalAvgPool": "TorchSparse's spnn.GlobalAvgPool is SparseGlobalAvgPool",
    "GlobalMaxPool": "TorchSparse's spnn.GlobalMaxPool is SparseGlobalMaxPool",
}

#: Keyword arguments of the peers' convolution layers -> what to do here.
PEER_LAYER_ARGUMENTS = {
    "indice_key": "spconv's indice_key is not needed: kernel maps are cached by geometry in "
                  "the tensor's coordinate cache, and transposed layers find the "
                  "coordinates their encoder downsampled there",
    "padding": "there is no padding: output coordinates are chosen by the regime "
               "(stride 1 keeps the input rows; generative=True grows the set)",
    "output_padding": "there is no output padding: a transposed layer restores the finer "
                      "coordinates of the cache (or use generative=True / out_coords)",
    "algo": "the algorithm is chosen per product (see the README's GPU section), not per "
            "layer",
    "fp32_accum": "accumulation is always float32 (float64 for float64 features)",
    "subm": "stride 1 is submanifold here; for spconv's growing SparseConv3d use "
            "generative=True",
    "dimension": "use ndim= (SparseConv, SparsePool) or the 2d / 3d classes",
    "D": "use ndim= (SparseConv, SparsePool) or the 2d / 3d classes",
    "has_bias": "use bias=",
    "kernel_generator": "pass explicit kernel offsets with offsets= ((K, D) int array)",
    "expand_coordinates": "use generative=True",
    "convolution_mode": "the algorithm is chosen per product, not per layer",
}

#: Attribute names of the peers' sparse tensors -> ours.
PEER_TENSOR_ATTRIBUTES = {
    "F": ".feats (MinkowskiEngine's and TorchSparse's .F)",
    "features": ".feats (spconv's .features)",
    "C": (".coords; note that here a strided tensor's coordinates are in units of its "
          "stride (MinkowskiEngine's and TorchSparse's .C keep the original scale: "
          "x.coords[:, 1:] * torch.tensor(x.stride))"),
    "indices": ".coords (spconv's .indices)",
    "tensor_stride": ".stride",
    "s": ".stride",
    "replace_feature": ".replace_feats(feats)",
    "spatial_shape": (".dense() (no fixed spatial shape: the dense box is the bounding box "
                      "of the coordinates, or spatial_shape= / origin= of .dense())"),
    "coordinate_manager": ".cache (the coordinate cache shared along the network)",
    "coordinate_map_key": ".cache (the coordinate cache shared along the network)",
}


def peer_name_error(module: str, name: str) -> AttributeError:
    """The AttributeError for ``module.name``: a peer's equivalent when known."""
    hint = PEER_NAMES.get(name)
    if hint is None:
        return AttributeError(f"module {module!r} has no attribute {name!r}")
    return AttributeError(f"module {module!r} has no attribute {name!r}: {hint} (see "
                          f"{SECTION})")


def peer_attribute_error(cls: str, name: str) -> AttributeError:
    """The AttributeError for ``tensor.name``: ours when ``name`` is a peer's spelling."""
    hint = PEER_TENSOR_ATTRIBUTES.get(name)
    if hint is None:
        return AttributeError(f"{cls!r} object has no attribute {name!r}")
    return AttributeError(f"{cls!r} object has no attribute {name!r}; use {hint} (see "
                          f"{SECTION})")


def reject_peer_arguments(cls: str, arguments: dict) -> None:
    """Raise a TypeError for keyword arguments the layer ``cls`` does not take."""
    if not arguments:
        return
    name = sorted(arguments)[0]
    hint = PEER_LAYER_ARGUMENTS.get(name)
    if hint is None:
        raise TypeError(f"{cls}() got an unexpected keyword argument {name!r}")
    raise TypeError(f"{cls}() got an unexpected keyword argument {name!r}: {hint} (see "
                    f"{SECTION})")


def _is_float(value) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    return getattr(dtype, "is_floating_point", None) is True or (
        isinstance(dtype, np.dtype) and dtype.kind == "f")


def _is_integer(value) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    if isinstance(dtype, np.dtype):
        return dtype.kind in "iu"
    return getattr(dtype, "is_floating_point", True) is False and not getattr(
        dtype, "is_complex", False) and str(dtype) != "torch.bool"


def reversed_arguments_error(coords, feats) -> None:
    """Raise a TypeError when ``SparseTensor(coords, feats)`` got (feats, coords)."""
    if _is_float(coords) and _is_integer(feats):
        raise TypeError(
            f"SparseTensor(coords, feats) got floating coords {tuple(coords.shape)} and "
            f"integer feats {tuple(feats.shape)}: the arguments look reversed. cusparseconv "
            f"takes (coords, feats), the reverse of spconv's SparseConvTensor(features, "
            f"indices, ...), MinkowskiEngine's SparseTensor(features, coordinates) and "
            f"TorchSparse's SparseTensor(feats, coords) (see {SECTION})")


def peer_weight_layout_hint(shape, kernel_size, in_channels: int, out_channels: int,
                            ndim: int) -> str | None:
    """How to convert a peer's weight of ``shape`` to (K, C_in, C_out), if recognised.

    ``kernel_size``: the layer's per-axis kernel size (a tuple of ``ndim``
    ints) or None for explicit offsets.
    """
    shape = tuple(shape)
    if kernel_size is None or len(shape) != ndim + 2:
        return None
    kernel = tuple(kernel_size)
    axes = ", ".join(str(a) for a in range(1, ndim + 1))
    if shape == (out_channels,) + kernel + (in_channels,):
        return (f"this is spconv 2's layout (C_out, *kernel, C_in); convert with "
                f"w.permute({axes}, {ndim + 1}, 0).reshape(K, C_in, C_out) (same kernel "
                f"order and centre as spconv)")
    if shape == (out_channels, in_channels) + kernel:
        spatial = ", ".join(str(a) for a in range(2, ndim + 2))
        return (f"this is torch.nn.Conv{ndim}d's layout (C_out, C_in, *kernel); convert "
                f"with w.permute({spatial}, 1, 0).reshape(K, C_in, C_out) (odd kernels "
                f"with padding (k - 1) // 2, even kernels with padding 0)")
    if shape == kernel + (in_channels, out_channels):
        return ("this is spconv 1's layout (*kernel, C_in, C_out); convert with "
                "w.reshape(K, C_in, C_out)")
    return None
