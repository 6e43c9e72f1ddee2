"""What a convolution would do, in words: :func:`explain`.

``explain(x, weight, ...)`` takes the arguments of :func:`cusparseconv.sparse_conv`
and returns an :class:`Explanation`: the regime, the kernel map's size, and
the algorithm each product (forward, input gradient, weight gradient) would
use on the backend the arrays pick, with the reason. The algorithms come from
the backend itself (``Backend.choose_algorithm``: the products' own choice,
stopped before anything runs), so they are the ones a product logs at DEBUG
on the ``cusparseconv.backends.*`` loggers when it runs.

Nothing is computed but the kernel map, which is built and cached exactly as
the convolution would build it (so a following ``sparse_conv`` reuses it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._checks import MAX_STRIDE, check_float_array, check_same_dtype, per_axis
from .backends import backend_for
from .conv import _as_depthwise, _check_weight_before_offsets, layer_kernel_map, weight_layout
from .tensor import SparseTensor

__all__ = ["explain", "Explanation", "ProductChoice"]

PRODUCTS = ("forward", "input_grad", "weight_grad")


@dataclass(frozen=True)
class ProductChoice:
    """The algorithm of one product and why.

    Attributes
    ----------
    product : str
        "forward", "input_grad" or "weight_grad".
    algorithm : str or None
        As the ``algorithm=`` argument names it ("blocked", "dense", "implicit",
        "mask", "splitk", ...; "depthwise" for the depthwise kernel, "none" when
        there is nothing to compute); None when the GPU tuner will time the
        candidates on the first call (``reason`` lists them).
    reason : str
    """

    product: str
    algorithm: str | None
    reason: str

    def __str__(self) -> str:
        name = "timed on first call" if self.algorithm is None else self.algorithm
        return f"{self.product:<12} {name:<16} {self.reason}"


@dataclass(frozen=True)
class Explanation:
    """What :func:`cusparseconv.sparse_conv` would do with these arguments.

    Attributes
    ----------
    backend : str
        "cpu", "cuda-emulated" or "cuda".
    regime : str
        Submanifold, strided, generative, transposed, ... with the stride.
    n_in, n_out : int
        Input and output rows.
    kernel_volume : int
        |K|, the number of offsets.
    n_pairs : int
        Pairs of the kernel map (the products' work is 2 * n_pairs * C_in *
        C_out / groups flops).
    occupancy : float
        n_pairs / (n_out * |K|): the share of (output row, offset) slots that
        hold a pair.
    c_in, c_out, groups : int
    layout : str
        "standard", "grouped" or "depthwise".
    dtype : str
    forward, input_grad, weight_grad : ProductChoice
    """

    backend: str
    regime: str
    n_in: int
    n_out: int
    kernel_volume: int
    n_pairs: int
    occupancy: float
    c_in: int
    c_out: int
    groups: int
    layout: str
    dtype: str
    forward: ProductChoice
    input_grad: ProductChoice
    weight_grad: ProductChoice

    def __str__(self) -> str:
        lines = [
            f"sparse convolution on the {self.backend} backend: {self.regime}",
            f"  rows        {self.n_in:,} in -> {self.n_out:,} out",
            f"  kernel map  {self.n_pairs:,} pairs over {self.kernel_volume} offsets "
            f"(occupancy {self.occupancy:.1%} of output row x offset slots)",
            f"  channels    {self.c_in} -> {self.c_out}, {self.layout} weight, "
            f"groups={self.groups}, {self.dtype}",
            "  products:",
        ]
        lines += [f"    {choice}" for choice in (self.forward, self.input_grad,
                                                 self.weight_grad)]
        return "\n".join(lines)


def _regime(stride, transposed, generative, explicit_out) -> str:
    unit = all(s == 1 for s in stride)
    stride_text = "stride " + "x".join(str(s) for s in stride)
    if explicit_out:
        kind = "explicit out_coords"
    elif transposed:
        kind = ("transposed + generative (outputs s*u + K[k])" if generative else
                "transposed (restores the finer coordinates)" if not unit else
                "transposed, stride 1 (same coordinates)")
    elif generative:
        kind = "generative (outputs grow by the kernel)"
    else:
        kind = "submanifold (outputs = inputs)" if unit else "strided (downsampling)"
    return f"{kind}, {stride_text}"


def explain(x: SparseTensor, weight, kernel_size=3, stride=1, dilation=1,
            transposed: bool = False, generative: bool = False, groups: int = 1,
            bias=None, offsets=None, out_coords=None, algorithm=None) -> Explanation:
    """Describe what ``sparse_conv(x, weight, ...)`` would do, without running it.

    Parameters
    ----------
    x : SparseTensor
        Input, (N, 1 + D) coordinates and (N, C_in) features.
    weight : ndarray
        (K, C_in, C_out); grouped (K, G, C_in/G, C_out/G); depthwise (K, C).
    kernel_size, stride, dilation, transposed, generative, groups, bias, offsets, out_coords
        As in :func:`cusparseconv.sparse_conv` (``bias`` changes no choice; it
        is accepted so that the same arguments can be passed).
    algorithm : str, optional
        An ``algorithm=`` the products would be given (forward and input
        gradient; checked as they check it).

    Returns
    -------
    Explanation
        A frozen dataclass; ``str()`` of it is a short readable report.

    Notes
    -----
    The kernel map (and the output coordinates) are built and cached in
    ``x.cache`` as the convolution would (the CPU also builds the map's
    reverse table, as its input gradient would); no product runs, no algorithm is
    timed and nothing that changes later results is recorded. On the GPU,
    when the tuner has not yet timed this shape class, the algorithm is
    None and the reason lists the candidates the first call will time.

    Examples
    --------
    >>> import numpy as np, cusparseconv as csc
    >>> coords = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 2, 2, 2]], dtype=np.int32)
    >>> x = csc.SparseTensor(coords, np.ones((3, 2), np.float32))
    >>> report = csc.explain(x, np.ones((27, 2, 4), np.float32))
    >>> report.n_pairs, report.forward.algorithm
    (5, 'blocked')
    """
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
    _check_weight_before_offsets(x, weight, kernel_size, groups, offsets)
    kmap, _, _ = layer_kernel_map(x, kernel_size, stride, dilation, transposed, generative,
                                  offsets, out_coords)
    feats = x.feats
    weight = check_float_array(weight, "weight")
    check_same_dtype(feats, "feats", weight=weight)
    layout, c_out = weight_layout(weight.shape, kmap.kernel_volume, feats.shape[1], groups)
    run_weight, run_layout = _as_depthwise(weight, layout)
    backend = backend_for(feats, weight, kmap.in_rows)
    choices = {}
    for product in PRODUCTS:
        chosen, reason = backend.choose_algorithm(
            product, feats, run_weight, kmap, run_layout, c_out,
            algorithm if product != "weight_grad" else None)
        choices[product] = ProductChoice(product, chosen, reason)
    slots = kmap.n_out * kmap.kernel_volume
    return Explanation(
        backend=backend.name,
        regime=_regime(per_axis(stride, x.ndim, "stride", maximum=MAX_STRIDE),
                       bool(transposed), bool(generative), out_coords is not None),
        n_in=kmap.n_in, n_out=kmap.n_out, kernel_volume=kmap.kernel_volume,
        n_pairs=kmap.n_pairs, occupancy=kmap.n_pairs / slots if slots else 0.0,
        c_in=int(feats.shape[1]), c_out=int(c_out), groups=int(groups), layout=run_layout,
        dtype=str(feats.dtype), **choices)
