"""The persistent cache directory: private (0700, ours), refused when others can write
it, a file or a foreign directory falls back cleanly, truncated emulator builds are
rebuilt (issue 14, item 13)."""

import os
import stat
import warnings

import numpy as np
import pytest

from cusparseconv import _cachedir, tuning
from cusparseconv._emulate import module as emulator

SOURCE = """#include "csc_common.cuh"
#include "csc_convert.cuh"
template <typename T>
__global__ void add_one(T* values, long long n) {
    CSC_GRID_LOOP(i, n) { values[i] += (T)1; }
}
// csc-instantiate: add_one<float>
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CUSPARSECONV_CACHE_DIR", str(root))
    monkeypatch.setattr(emulator, "_LIBS", {})
    monkeypatch.setattr(emulator, "_FALLBACK_DIR", [])
    tuning.clear_memory()
    yield root
    tuning.clear_memory()


def run_module():
    values = np.zeros(10, np.float32)
    mod = emulator.EmulatedModule(SOURCE, name_expressions=["add_one<float>"])
    mod.get_function("add_one<float>")((2,), (8,), (values, np.int64(10)))
    assert values.tolist() == [1.0] * 10
    return mod


def test_created_private(cache):
    path, reason = _cachedir.private_dir("emulator")
    assert reason is None and path == cache / "emulator"
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    run_module()
    assert list(path.glob("*.so")) and list(path.glob("*.sha256"))


def test_directory_others_can_write_is_refused(cache):
    cache.mkdir()
    os.chmod(cache, 0o777)
    path, reason = _cachedir.private_dir("emulator")
    assert path is None and "can be written by other users" in reason
    with pytest.warns(RuntimeWarning, match="not using the cache directory"):
        run_module()
    assert not (cache / "emulator").exists() or not list((cache / "emulator").glob("*.so"))
    with pytest.warns(RuntimeWarning, match="kept in memory only"):
        tuning.record("bucket", "mask")
    assert not (cache / "tuning.json").exists()


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                    reason="changing a directory's owner needs root")
def test_directory_of_another_user_is_refused(cache):
    cache.mkdir(mode=0o700)
    os.chown(cache, 4242, -1)
    path, reason = _cachedir.private_dir()
    assert path is None and "belongs to user id 4242" in reason


def test_cache_path_that_is_a_file_falls_back(cache):
    cache.write_text("not a directory")
    path, reason = _cachedir.private_dir("emulator")
    assert path is None and "not a directory" in reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_module()                                  # builds in a private temporary dir
        tuning.record("bucket", "mask")               # kept in memory
        assert tuning.choose("forward", ["implicit", "mask"], None, "bucket", "implicit",
                             run=None, autotune=True) == "mask"


_BUILD = f"""
import numpy as np
from cusparseconv._emulate import EmulatedModule
values = np.zeros(10, np.float32)
mod = EmulatedModule({SOURCE!r}, name_expressions=["add_one<float>"])
mod.get_function("add_one<float>")((2,), (8,), (values, np.int64(10)))
assert values.tolist() == [1.0] * 10
"""


def build_in_a_new_process(cache):
    """A process of its own: a loaded shared object must not be truncated under it."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CUSPARSECONV_CACHE_DIR=str(cache),
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", _BUILD], env=env, check=True, timeout=300)


def test_truncated_build_is_rebuilt(cache):
    build_in_a_new_process(cache)
    (so_path,) = (cache / "emulator").glob("*.so")
    size = so_path.stat().st_size
    with open(so_path, "r+b") as handle:
        handle.truncate(size // 3)
    build_in_a_new_process(cache)
    assert so_path.stat().st_size == size
    (cache / "emulator" / (so_path.stem + ".sha256")).unlink()     # no record: rebuilt too
    build_in_a_new_process(cache)
    assert (cache / "emulator" / (so_path.stem + ".sha256")).exists()
