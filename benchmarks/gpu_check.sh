#!/usr/bin/env bash
# The prepared GPU check: one command on a GPU machine, under 5 minutes, offline.
#
#   bash benchmarks/gpu_check.sh                        # on a GPU machine
#   GPU_CHECK_EMULATE=1 bash benchmarks/gpu_check.sh    # the same steps, small, emulated (CI)
#
# Steps, each under its own time cap (a step that overruns is cut, the rest still runs),
# each writing its log and results under $OUT as it goes:
#   1. check      python -m cusparseconv check (versions, headers, every kernel compiled,
#                 one small convolution per algorithm against the CPU)          -> check.json
#   2. tests      the gpu-marked tests, kernel maps and products first             -> tests-*.xml
#   3. sanitizer  compute-sanitizer memcheck, racecheck, synccheck on a small run of every
#                 kernel family (benchmarks/sanitizer_run.py)                   -> sanitizer-*.log
#   4. bench      benchmarks/bench_gpu.py with roofline figures                -> bench_gpu.json
#   5. spconv     when the spconv tarball is present (SPCONV_TARBALL, default
#                 benchmarks/peers/spconv-cu126-py312.tar.xz, made by
#                 ../shared/tools/pack_spconv_for_gpu.sh; git-ignored, carried with the tree):
#                 unpack it onto PYTHONPATH and time spconv against ours          -> spconv.json
# and last a short table (summary.json, and printed).
#
# It uses only what the GPU image holds (Python 3.12, CuPy 14, the CUDA 13 toolkit for NVRTC
# and headers, compute-sanitizer) and runs the package from this source tree (PYTHONPATH).
# OUT defaults to benchmarks/results/gpu-check-<time>; PYTHON to python3.
# Caps (seconds, 310 in all on a device, within a 10-minute call): check 45, tests 45 + 25,
# memcheck 30, racecheck 25, synccheck 20, bench 75 (the defaults, every algorithm and every
# tensor-core tile shape), spconv 45.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
PY="${PYTHON:-python3}"
EMULATE="${GPU_CHECK_EMULATE:-0}"
OUT="${OUT:-$repo/benchmarks/results/gpu-check-$(date -u +%Y%m%dT%H%M%S)}"
mkdir -p "$OUT"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export CUSPARSECONV_GPU_CHECK_OUT="$OUT"
STEPS="$OUT/steps.tsv"
printf 'step\tstatus\tseconds\tcap\tnote\n' > "$STEPS"
TARBALL="${SPCONV_TARBALL:-$repo/benchmarks/peers/spconv-cu126-py312.tar.xz}"
if [ "$EMULATE" = "1" ]; then
    export CUSPARSECONV_EMULATOR_MODE="${CUSPARSECONV_EMULATOR_MODE:-cooperative}"
    MODE="emulated"
else
    MODE="device"
fi
echo "gpu_check: $MODE run, results in $OUT"

# record NAME STATUS SECONDS CAP NOTE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$STEPS"; }

# step NAME CAP COMMAND...: run under `timeout`, log to $OUT/NAME.log, record the outcome
step() {
    local name=$1 cap=$2
    shift 2
    local start end rc status
    start=$(date +%s%N)
    echo "== $name (cap ${cap}s): $*" | tee -a "$OUT/$name.log"
    timeout --kill-after=5 "$cap" "$@" >> "$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status="failed(rc=$rc)" ;;
    esac
    record "$name" "$status" "$(( (end - start) / 1000000 ))e-3" "$cap" "$(tail -n 1 "$OUT/$name.log" | tr '\t' ' ' | cut -c1-160)"
    echo "   $name: $status"
}

skip() { record "$1" skipped 0 0 "$2"; echo "== $1: skipped ($2)"; }

# 1. check
if [ "$MODE" = device ]; then
    step check 45 "$PY" -m cusparseconv check --json "$OUT/check.json"
else
    step check 240 "$PY" -m cusparseconv check --arch sm_90 --emulate --json "$OUT/check.json"
fi

# 2. tests: kernel maps and products first
if [ "$MODE" = device ]; then
    step tests-kernels 45 "$PY" -m pytest -q -p no:cacheprovider -m gpu -x \
        tests/test_gpu_backend.py --junitxml="$OUT/tests-kernels.xml"
    step tests-rest 25 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
        --ignore=tests/test_gpu_backend.py tests --junitxml="$OUT/tests-rest.xml"
else
    step tests-kernels 240 "$PY" -m pytest -q -p no:cacheprovider -m "not gpu" \
        tests/test_gpu_backend.py \
        -k "kernel_maps_match or (forward_and_input_grad and float32 and standard)" \
        --junitxml="$OUT/tests-kernels.xml"
fi

# 3. compute-sanitizer on every kernel family
if [ "$MODE" = device ]; then
    if command -v compute-sanitizer > /dev/null 2>&1; then
        sanitizer=compute-sanitizer
    elif [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
        sanitizer=/usr/local/cuda/bin/compute-sanitizer
    else
        sanitizer=""
    fi
    if [ -n "$sanitizer" ]; then
        step sanitizer-memcheck 30 "$sanitizer" --tool memcheck --error-exitcode 3 \
            "$PY" benchmarks/sanitizer_run.py
        step sanitizer-racecheck 25 "$sanitizer" --tool racecheck --error-exitcode 3 \
            "$PY" benchmarks/sanitizer_run.py --dtypes float32 float16
        step sanitizer-synccheck 20 "$sanitizer" --tool synccheck --error-exitcode 3 \
            "$PY" benchmarks/sanitizer_run.py --dtypes float32 float16
    else
        skip sanitizer "compute-sanitizer not found on PATH or in /usr/local/cuda/bin"
    fi
else
    skip sanitizer "emulated run: no device for compute-sanitizer (the workload runs below)"
    step sanitizer-workload 240 "$PY" benchmarks/sanitizer_run.py --emulate
fi

# 4. benchmark with roofline figures
if [ "$MODE" = device ]; then
    step bench 75 "$PY" benchmarks/bench_gpu.py --voxels 200000 --channels 32 64 \
        --dtypes float32 float16 --repeats 10 --out "$OUT/bench_gpu.json"
else
    step bench 240 "$PY" benchmarks/bench_gpu.py --emulate --channels 8 --dtypes float32 \
        --no-chart --out "$OUT/bench_gpu.json"
fi

# 5. spconv side by side, when its tarball came with the tree
if [ -f "$TARBALL" ]; then
    # unpacked outside $OUT (about 350 MB), removed after the step even when it is cut
    site="$(mktemp -d "${TMPDIR:-/tmp}/csc-peers-site.XXXXXX")"
    if [ "$MODE" = device ]; then
        step spconv 45 bash -c "tar xJf '$TARBALL' -C '$site' && \
            '$PY' benchmarks/bench_spconv_gpu.py --spconv-site '$site' --voxels 200000 \
            --channels 32 64 --dtypes float16 float32 --repeats 10 --out '$OUT/spconv.json'"
    else
        step spconv 240 bash -c "tar xJf '$TARBALL' -C '$site' && \
            '$PY' benchmarks/bench_spconv_gpu.py --device emulated --spconv-site '$site' \
            --voxels 400 --channels 8 --dtypes float32 --repeats 1 --out '$OUT/spconv.json'"
    fi
    rm -rf "$site"
else
    skip spconv "no spconv tarball at $TARBALL (make it with ../shared/tools/pack_spconv_for_gpu.sh)"
fi

"$PY" benchmarks/gpu_check_report.py "$OUT"
