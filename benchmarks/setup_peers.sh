#!/usr/bin/env bash
# Create benchmarks/.venv-peers: an isolated venv holding the peer library
# (spconv 2.3.8, CPU build from PyPI), a pinned CPU torch and cusparseconv
# itself (editable, from this checkout).  Safe to run again: an existing venv
# is reused and pip skips what is already satisfied.
#
# Usage:  bash benchmarks/setup_peers.sh            (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="$here/.venv-peers"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $("$python" --version 2>&1)"
    # --system-site-packages is deliberately off: only what is installed here is seen.
    "$python" -m venv "$venv"
else
    echo "reusing $venv"
fi
vpy="$venv/bin/python"

"$vpy" -m pip install --quiet --upgrade pip
# torch is pinned: an unpinned requirement pulls a multi-GB CUDA build.
# spconv on PyPI is the CPU package (GPU builds are spconv-cu1xx); it pulls
# cumm (CPU), pccm, ccimport, pybind11, fire.
"$vpy" -m pip install --quiet numpy scipy threadpoolctl "torch==2.13.0" "spconv==2.3.8"

# cusparseconv from this checkout, editable, no dependency changes.
if ! "$vpy" -m pip install --quiet --no-deps -e "$repo"; then
    # The package skeleton may not be installable yet (e.g. README.md missing);
    # a .pth file gives the same "import from the checkout" behaviour.
    site="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "pip install -e failed; adding $repo to $site/cusparseconv-checkout.pth instead"
    echo "$repo" > "$site/cusparseconv-checkout.pth"
fi

echo
echo "installed in $venv:"
"$vpy" -m pip list --format=freeze 2>/dev/null \
    | grep -i -E '^(numpy|scipy|threadpoolctl|torch|spconv|cumm|pccm|ccimport|pybind11|cusparseconv)[=@ ]' || true
"$vpy" - <<'PY'
import importlib
for name in ("numpy", "scipy", "threadpoolctl", "torch", "spconv", "cumm", "cusparseconv"):
    try:
        mod = importlib.import_module(name)
        print(f"  import {name:<14} ok  {getattr(mod, '__version__', '?')}  {getattr(mod, '__file__', '')}")
    except Exception as exc:  # report, do not fail: cusparseconv may not exist yet
        print(f"  import {name:<14} FAILED: {type(exc).__name__}: {exc}")
PY
