"""The torch-side sparse tensor: coordinates, torch features, tensor stride, cache.

Coordinates live once, in the core's :class:`~cusparseconv.CoordinateCache`
(immutable NumPy or CuPy arrays); ``SparseTensor.coords`` hands out a private
torch copy, so no write through it can change the geometry the cache's keys
and kernel maps describe, and an in-place write to that copy is detected
(torch's version counter) and refused by the next operation.
"""

from __future__ import annotations

import torch

from ..dense import scatter_to_dense
from ..tensor import CoordinateCache
from ..tensor import SparseTensor as CoreTensor
from .autograd import DenseFunction
from .convert import coords_array, device_scope, empty_feats, from_array, to_array
from .migration import peer_attribute_error, reversed_arguments_error

__all__ = ["SparseTensor", "cat"]


class SparseTensor:
    """Coordinates, ``torch`` features, tensor stride and a coordinate cache.

    Parameters
    ----------
    coords : torch.Tensor or ndarray of int, shape (N, 1 + D)
        Batch index, then D voxel coordinates; unique rows. On the features'
        device (a NumPy array is accepted for CPU features). Copied: later
        writes to the argument do not change the tensor.
    feats : torch.Tensor, shape (N, C)
        float16, bfloat16, float32 or float64; may require grad.
    stride : int or tuple of D ints
        Tensor stride (1 for raw voxels).
    cache : cusparseconv.CoordinateCache, optional
        Share coordinate sets and kernel maps with other tensors.

    Operations return tensors sharing the input's cache, so kernel maps are
    built once per geometry and transposed layers find the finer coordinates
    their encoder came from. The argument order is (coords, feats): the
    reverse of spconv, MinkowskiEngine and TorchSparse (README, "Coming from
    spconv, MinkowskiEngine or TorchSparse").
    """

    def __init__(self, coords, feats, stride=1, *, cache: CoordinateCache | None = None):
        reversed_arguments_error(coords, feats)
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
        if feats.ndim != 2:
            raise ValueError(f"feats must have shape (N, C), got {tuple(feats.shape)}")
        if isinstance(coords, SparseTensor):
            raise TypeError("coords must be an integer array or tensor, got a SparseTensor; "
                            "use x.replace_feats(feats) to put new features on its "
                            "coordinates")
        with device_scope(feats.device):
            core = CoreTensor(coords_array(coords, feats.device),
                              empty_feats(feats.shape[0], feats.device), stride, cache=cache)
        self._cache = core.cache
        self._coord_id = core._coord_id
        self._stride = core.stride
        self.feats = feats
        self._coords_view = None

    @classmethod
    def _from_set(cls, cache: CoordinateCache, coord_id: int, feats: torch.Tensor,
                  stride, coords_view: "_CoordsView | None" = None) -> "SparseTensor":
        tensor = cls.__new__(cls)
        tensor._cache = cache
        tensor._coord_id = coord_id
        tensor._stride = tuple(stride)
        tensor.feats = feats
        tensor._coords_view = coords_view
        return tensor

    # ------------------------------------------------------------ geometry
    def _core(self, feats=None) -> CoreTensor:
        """The core tensor on the same coordinate set (features: ``feats`` or empty).

        Every operation goes through here, so this is where an in-place write
        to ``self.coords`` is caught.
        """
        if self._coords_view is not None:
            self._coords_view.check()
        if feats is None:
            feats = empty_feats(len(self), self.feats.device)
        return CoreTensor._from_set(self._cache, self._coord_id, feats, self._stride)

    @property
    def coords(self) -> torch.Tensor:
        """int32 tensor (N, 1 + D) on the features' device.

        A copy of the cache's coordinates, made once per tensor: writing into
        it never changes the geometry, and any operation on this tensor after
        an in-place write raises a ValueError (build a new SparseTensor from
        the edited coordinates instead).
        """
        if self._coords_view is None:
            self._coords_view = _CoordsView(self._cache.coords(self._coord_id),
                                            self.feats.device)
        return self._coords_view.tensor

    @property
    def stride(self) -> tuple[int, ...]:
        """Tensor stride, one int per spatial axis."""
        return self._stride

    @property
    def cache(self) -> CoordinateCache:
        """The core coordinate/kernel-map cache shared along the network."""
        return self._cache

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions D."""
        return self._cache.coords(self._coord_id).shape[1] - 1

    @property
    def batch_size(self) -> int:
        """1 + the largest batch index (0 for an empty tensor)."""
        return self._core().batch_size

    def __len__(self) -> int:
        return self._cache.coords(self._coord_id).shape[0]

    # ------------------------------------------------------------ features
    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def num_channels(self) -> int:
        return self.feats.shape[1]

    @property
    def requires_grad(self) -> bool:
        return self.feats.requires_grad

    def requires_grad_(self, requires_grad: bool = True) -> "SparseTensor":
        """Set ``feats.requires_grad`` in place; returns ``self`` (like torch)."""
        self.feats.requires_grad_(requires_grad)
        return self

    def detach(self) -> "SparseTensor":
        """Same coordinates and cache, features detached from the graph."""
        return self.replace_feats(self.feats.detach())

    def replace_feats(self, feats: torch.Tensor) -> "SparseTensor":
        """Same coordinates, stride and cache with new (N, C') features (e.g. after an
        activation or a normalisation applied to the rows); kernel maps stay cached."""
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != len(self):
            shape = tuple(feats.shape) if hasattr(feats, "shape") else type(feats).__name__
            raise ValueError(f"feats must be a torch.Tensor of shape ({len(self)}, C), "
                             f"got {shape}")
        if feats.device != self.feats.device:
            raise ValueError(f"feats must stay on {self.feats.device} (the coordinates' "
                             f"device), got {feats.device}; use .to(device) to move a "
                             f"SparseTensor")
        view = self._coords_view
        return SparseTensor._from_set(self._cache, self._coord_id, feats, self._stride, view)

    # ------------------------------------------------------------ devices
    def to(self, *args, **kwargs) -> "SparseTensor":
        """``feats.to(*args, **kwargs)`` (a dtype, a device or both), coordinates along.

        On the same device the result shares this tensor's coordinate cache
        (and is differentiable through ``Tensor.to``). On another device it
        gets a new cache there (kernel maps live on their device), with this
        tensor's stride; move the input before the network, not between
        layers, so that transposed layers find their encoder's coordinates.
        """
        feats = self.feats.to(*args, **kwargs)
        if feats.device == self.feats.device:
            return self if feats is self.feats else self.replace_feats(feats)
        coords = self.coords.to(feats.device)
        return SparseTensor(coords, feats, self._stride)

    def cpu(self) -> "SparseTensor":
        """The tensor on the CPU (``self`` if it is there already)."""
        return self.to("cpu")

    def cuda(self, device=None) -> "SparseTensor":
        """The tensor on a CUDA device (the current one by default)."""
        return self.to(torch.device("cuda") if device is None else
                       torch.device("cuda", device) if isinstance(device, int) else device)

    # ------------------------------------------------------------ dense
    def dense(self, spatial_shape=None, origin=None, channels_last: bool = False,
              batch_size=None, return_mask: bool = False):
        """Differentiable dense tensor, as :func:`cusparseconv.to_dense`.

        ``dense[b, :, x - origin] = feats[row]`` for every row ``(b, *x)``
        (channels first) or ``dense[b, x - origin, :]`` (``channels_last``);
        zeros elsewhere. Coordinates are taken as stored (in units of the
        tensor stride). The gradient gathers the rows back.

        Parameters
        ----------
        spatial_shape : sequence of D ints, optional
            Default: ``max - origin + 1`` of the coordinates.
        origin : sequence of D ints, optional
            Coordinate of dense index 0 per axis; default: the per-axis minimum.
        channels_last : bool
        batch_size : int, optional
            Default: ``self.batch_size``.
        return_mask : bool
            Also return the occupancy mask (B, *spatial) (bool tensor), which
            :func:`cusparseconv.from_dense` takes as ``mask=`` to get every
            row back, all-zero rows included.

        Returns
        -------
        dense : torch.Tensor, shape (B, C, *spatial) or (B, *spatial, C)
            The features' dtype and device.
        origin : torch.Tensor of int64, shape (D,)
        mask : torch.Tensor of bool, shape (B, *spatial) (with ``return_mask``)
        """
        with device_scope(self.device):
            coords = self._core().coords
        dense, used_origin = DenseFunction.apply(self.feats, coords, spatial_shape, origin,
                                                 batch_size, bool(channels_last))
        if not return_mask:
            return dense, used_origin
        spatial = tuple(dense.shape[1:-1] if channels_last else dense.shape[2:])
        with device_scope(self.device):
            _, _, mask = scatter_to_dense(coords, empty_feats(len(self), self.device),
                                          spatial_shape=spatial, origin=to_array(used_origin),
                                          batch_size=dense.shape[0], return_mask=True)
        return dense, used_origin, from_array(mask)

    def __cusparseconv_dense__(self, spatial_shape=None, origin=None, channels_last=False,
                               batch_size=None, return_mask=False):
        """What :func:`cusparseconv.to_dense` calls for this tensor: :meth:`dense`."""
        return self.dense(spatial_shape, origin, channels_last, batch_size, return_mask)

    # ------------------------------------------------------------ combining
    def same_coords(self, other: "SparseTensor") -> bool:
        """Whether ``other`` holds the same coordinate set of the same cache (row order
        included)."""
        return self._cache is other._cache and self._coord_id == other._coord_id

    def _check_same(self, other, what):
        if not isinstance(other, SparseTensor) or not self.same_coords(other):
            raise ValueError(f"{what} needs two SparseTensors on the same coordinate set of "
                             f"the same cache (e.g. a layer's input and output at stride 1)")

    def __add__(self, other: "SparseTensor") -> "SparseTensor":
        """Feature-wise sum of two tensors on the same coordinates (residual blocks)."""
        self._check_same(other, "adding")
        return self.replace_feats(self.feats + other.feats)

    def to_core(self) -> CoreTensor:
        """A :class:`cusparseconv.SparseTensor` viewing the (detached) features."""
        return self._core(to_array(self.feats))

    def __getattr__(self, name):
        # Only reached for names the class does not define: peers' spellings.
        raise peer_attribute_error(type(self).__name__, name)

    def __repr__(self) -> str:
        return (f"SparseTensor(n={len(self)}, ndim={self.ndim}, channels={self.num_channels}, "
                f"dtype={self.feats.dtype}, device={self.feats.device}, stride={self._stride})")


class _CoordsView:
    """A private torch copy of a coordinate set, and the version it was handed out at."""

    def __init__(self, coords, device: torch.device):
        tensor = from_array(coords).clone()
        if tensor.device != device:  # pragma: no cover - coordinates follow the features
            tensor = tensor.to(device)
        self.tensor = tensor
        self.version = tensor._version

    def check(self) -> None:
        if self.tensor._version != self.version:
            raise ValueError(
                "x.coords was modified in place after the SparseTensor was made; its "
                "coordinate cache (keys, kernel maps) still holds the original coordinates, "
                "so an operation would compute on geometry the tensor no longer reports. "
                "Build a new SparseTensor(edited_coords, x.feats) instead")


def cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate the features of tensors on the same coordinates (U-Net skips)."""
    first = tensors[0]
    for other in tensors[1:]:
        first._check_same(other, "cat")
    return first.replace_feats(torch.cat([t.feats for t in tensors], dim=1))

