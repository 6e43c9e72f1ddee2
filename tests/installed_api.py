"""Every public function of an installed cusparseconv, run from outside the checkout.

``tests/test_pip_install.py`` runs this file with the fresh environment's Python:
the functions of ``cusparseconv.__all__``, the settings, ``read_points`` and the
GPU backend's code under the host emulator (kernel sources and emulator headers
found in site-packages)."""
import os
import tempfile

import numpy as np

import cusparseconv as csc
from cusparseconv import config, io

assert "site-packages" in csc.__file__, csc.__file__   # the installed copy
used = set()


def call(name, *args, **kwargs):
    used.add(name)
    return getattr(csc, name)(*args, **kwargs)


rng = np.random.default_rng(0)
coords = np.unique(rng.integers(-6, 6, (300, 4)), axis=0).astype(np.int32)
coords[:, 0] = rng.integers(0, 2, len(coords))
coords = np.unique(coords, axis=0)
feats = rng.standard_normal((len(coords), 4))
for name in ("SparseTensor", "CoordinateCache", "KernelMap", "MemoryLimitError", "config"):
    used.add(name)
cache = csc.CoordinateCache()
x = csc.SparseTensor(coords, feats, cache=cache)
offsets = call("kernel_offsets", 3)
print("range", call("coordinate_range", 3))
kmap = call("build_kernel_map", coords, coords, offsets)
assert isinstance(kmap, csc.KernelMap)
reverse = call("reverse_kernel_map", kmap)
mask, neighbour = call("pair_mask", kmap)
w = rng.standard_normal((27, 4, 5))
y = call("sparse_conv", x, w)
lk, out_id, out_stride = call("layer_kernel_map", x, 2, 2)
f = call("conv_forward", feats, w, kmap)
out = np.empty_like(f)
assert call("conv_forward", feats, w, kmap, out=out) is out
gi = call("conv_input_grad", f, w, kmap)
gw = call("conv_weight_grad", feats, f, kmap)
gi2, gw2 = call("conv_backward", feats, f, w, kmap)
assert np.array_equal(gi2, gi) and np.allclose(gw2, gw, rtol=1e-5, atol=1e-6)
gb = call("conv_bias_grad", f)
p = call("sparse_pool", x, 2, 2, "max")
pk = csc.layer_kernel_map(x, 2, 2)[0]
pf = call("pool_forward", feats, pk, "avg")
pb = call("pool_backward", pf, feats, pk, "avg")
g = call("global_pool", x, "mean")
gb2 = call("global_pool_backward", g.feats, x, "mean")
up = call("upsample_nearest", p, 2)
parents = call("upsample_parents", x.coords, p.coords, 2)
pts = rng.uniform(-3, 3, (500, 3))
vc, vf, p2v = call("voxelize", pts, 0.5, feats=pts)
back = call("devoxelize", vf, p2v)
dense, origin = call("to_dense", x)
dense2, origin2 = call("scatter_to_dense", x.coords, x.feats)
fd = call("from_dense", dense)
gathered = call("gather_from_dense", dense, x.coords, origin)
assert np.allclose(gathered, x.feats)
call("set_num_threads", 2)
assert call("get_num_threads") == 2
old = call("set_memory_limit", 1 << 30)
assert call("get_memory_limit") == 1 << 30
call("set_memory_limit", old)
report = call("explain", x, w)
assert isinstance(report, csc.Explanation) and isinstance(report.forward, csc.ProductChoice)
assert report.n_pairs > 0 and "forward" in str(report)
used.update({"Explanation", "ProductChoice"})
missing = set(csc.__all__) - used
assert not missing, missing
# the settings module
config.set_deterministic(False), config.set_autotune(True)
config.release_openmp_threads(True)
assert config.is_release_openmp_threads()
print("cache dir", config.cache_dir())
# point files
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "p.npy")
    np.save(path, pts)
    print("read_points", type(io.read_points(path)).__name__)
# the GPU backend's code under the host emulator, from site-packages
with config.use_backend("cuda-emulated"):
    ye = csc.sparse_conv(csc.SparseTensor(coords, feats), w)
assert np.allclose(ye.feats, y.feats, atol=1e-10), "emulated differs"
print("emulated ok; every public function ran:", len(used), "names")
