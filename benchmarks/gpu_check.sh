#!/usr/bin/env bash
# The one GPU command: versions, the test suite on the GPU, the cuDNN check at two precisions,
# the GPU benchmark and (when present) the attention benchmark, in about 7 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; nothing is installed
#
# Everything is written to $OUT when set, else to gpu_check_out/: versions.txt, pytest.log,
# junit.xml, tests_summary.txt, gpu-check-highest.json, gpu.json, attention.json (and the logs
# of each step), summary.txt. Each step has its own time cap, all of them within
# GPU_CHECK_BUDGET seconds (500); a step that runs out is stopped and the next one starts.
# Without a GPU it runs all the same and says so. GPU_CHECK_QUICK=1 runs a few test files and
# the benchmarks at their smallest (a check of this script, not of the GPU);
# GPU_CHECK_PYTEST_ARGS adds pytest arguments (e.g. a test path); PYTHON names the interpreter.
set -u

cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
OUTDIR=${OUT:-$ROOT/gpu_check_out}
QUICK=${GPU_CHECK_QUICK:-0}
BUDGET=${GPU_CHECK_BUDGET:-500}
mkdir -p "$OUTDIR"
STARTED=$(date +%s)

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# The suite's compile cache outside the repository and outside $OUT (it is large).
export GATENETS_JAX_CACHE=${GATENETS_JAX_CACHE:-${TMPDIR:-/tmp}/gatenets_gpu_check_jax_cache}
export PYTHONDONTWRITEBYTECODE=1

remaining() { echo $((BUDGET - ($(date +%s) - STARTED))); }

# cap SECONDS RESERVE: SECONDS, or less so that RESERVE seconds stay for the later steps.
cap() {
    local left=$(($(remaining) - $2))
    if ((left < $1)); then echo $((left > 10 ? left : 10)); else echo "$1"; fi
}

STATUS=()
note() { STATUS+=("$1"); }

echo "== versions"
{
    "$PYTHON" - <<'EOF'
import importlib.metadata as metadata
import platform

print("python", platform.python_version())
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "flax",
             "optax", "orbax-checkpoint", "numpy", "torch", "pytest", "pytest-xdist", "pytest-timeout",
             "hypothesis"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "-")
import jax

print("jax backend", jax.default_backend())
print("jax devices", [f"{d.platform}:{d.device_kind}" for d in jax.devices()])
print("jax default matmul precision", jax.config.jax_default_matmul_precision)
try:
    import torch

    print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available())
except ImportError:
    print("torch -")
EOF
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    else
        echo "nvidia-smi: not found (no NVIDIA GPU driver here)"
    fi
} 2>&1 | tee "$OUTDIR/versions.txt"
BACKEND=$(sed -n 's/^jax backend //p' "$OUTDIR/versions.txt")
if [[ "$BACKEND" != gpu ]]; then
    echo "!! JAX's backend is '${BACKEND:-unknown}', not a GPU: the steps below run without one."
    note "no GPU: JAX's backend is '${BACKEND:-unknown}'"
fi

echo "== tests"
PYTEST_ARGS=(-p no:benchmark -p no:cacheprovider -q -rfEs --durations=15
    --junitxml="$OUTDIR/junit.xml" --ignore=tests/inspect/test_explorer_browser.py)
if "$PYTHON" -c "import xdist" 2>/dev/null; then
    PYTEST_ARGS+=(-n "${GPU_CHECK_WORKERS:-8}")
else
    echo "(pytest-xdist is not installed: one process)"
fi
if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
    PYTEST_ARGS+=(--timeout=150)
else
    echo "(pytest-timeout is not installed: no per-test time limit)"
fi
if [[ "$QUICK" == 1 ]]; then
    TESTS=(tests/test_suite_precision.py tests/test_gpu_benchmark.py tests/test_cudnn.py
        -k "precision or tolerance or relative or refused or on_a_cuda_gpu or packed")
else
    TESTS=(tests gatenets)
    # The MNIST1DTask docstring example makes the dataset: it needs the optional mnist1d (the
    # tests that need it skip themselves; a doctest cannot).
    if ! "$PYTHON" -c "import mnist1d" 2>/dev/null; then
        echo "(mnist1d is not installed: its doctest is left out)"
        TESTS+=(--deselect "gatenets/tasks/mnist1d.py::gatenets.tasks.mnist1d.MNIST1DTask")
    fi
fi
# SIGINT, not SIGTERM: pytest then stops, reports what ran and writes the junit XML.
TEST_CAP=$(cap 210 290)
echo "(at most $TEST_CAP s)"
# shellcheck disable=SC2086
timeout -s INT -k 20 "$TEST_CAP" "$PYTHON" -m pytest "${PYTEST_ARGS[@]}" "${TESTS[@]}" \
    ${GPU_CHECK_PYTEST_ARGS:-} 2>&1 | tee "$OUTDIR/pytest.log"
TEST_RC=${PIPESTATUS[0]}
{
    echo "pytest exit status $TEST_RC$( ((TEST_RC == 124 || TEST_RC == 130)) && echo ' (stopped at the time cap)')"
    grep -E "^(FAILED|ERROR) " "$OUTDIR/pytest.log" | cut -c1-200 | head -60
    tail -n 1 "$OUTDIR/pytest.log"
} >"$OUTDIR/tests_summary.txt"
note "tests: $(tail -n 1 "$OUTDIR/pytest.log") (exit $TEST_RC)"

echo "== cuDNN check at full float32 (precision highest)"
timeout -k 10 "$(cap 35 255)" "$PYTHON" benchmarks/gpu.py --check-only --precision highest \
    --json "$OUTDIR/gpu-check-highest.json" 2>&1 | tee "$OUTDIR/gpu-check-highest.log"
CHECK_RC=${PIPESTATUS[0]}
note "cuDNN check, highest: exit $CHECK_RC $(grep -h -m1 -E '^# .*cuDNN vs fused|gpu.py:' "$OUTDIR/gpu-check-highest.log")"

echo "== GPU benchmark at JAX's default precision (check, then timing)"
# The full sweep (about 4 minutes) does not fit the budget: the first size, three repeats.
timeout -k 10 "$(cap 75 180)" "$PYTHON" benchmarks/gpu.py --quick --json "$OUTDIR/gpu.json" 2>&1 |
    tee "$OUTDIR/gpu.log"
GPU_RC=${PIPESTATUS[0]}
note "GPU benchmark: exit $GPU_RC $(grep -h -m1 -E '^# .*cuDNN vs fused|gpu.py:' "$OUTDIR/gpu.log")"

echo "== loop=\"auto\" against every loop (gatenets bench, LSTM and GRU train steps)"
# A fresh cache: auto measures here, on this GPU, and the rows say what it chose.
export GATENETS_CACHE_DIR="$OUTDIR/loop-cache"
SIZES="1,1024,32,256;8,512,128,512;64,512,256,1024"
if [[ "$QUICK" == 1 ]]; then SIZES="2,16,4,8"; fi
timeout -k 10 "$(cap 70 110)" "$PYTHON" -m gatenets bench --models lstm --modes train \
    --sizes "$SIZES" --variants plain,fused,cudnn --repeats 5 --warmup 1 \
    --torch-threads 1 --json "$OUTDIR/bench-lstm.json" 2>&1 | tee "$OUTDIR/bench-lstm.log"
note "bench LSTM: exit ${PIPESTATUS[0]}"
timeout -k 10 "$(cap 50 60)" "$PYTHON" -m gatenets bench --models gru --modes train \
    --sizes "$SIZES" --variants plain,fused,bf16 --repeats 5 --warmup 1 \
    --torch-threads 1 --json "$OUTDIR/bench-gru.json" 2>&1 | tee "$OUTDIR/bench-gru.log"
note "bench GRU: exit ${PIPESTATUS[0]}"

echo "== attention benchmark"
if [[ -f benchmarks/attention.py ]]; then
    # The GPU targets and decoding; the CPU memory and time sections are the CPU's.
    ATTENTION_ARGS=(--skip memory,time --json "$OUTDIR/attention.json")
    if [[ "$QUICK" == 1 ]] && "$PYTHON" benchmarks/attention.py --help 2>/dev/null |
        grep -q -- --quick; then
        ATTENTION_ARGS+=(--quick)
    fi
    timeout -k 10 "$(cap 60 0)" "$PYTHON" benchmarks/attention.py "${ATTENTION_ARGS[@]}" 2>&1 |
        tee "$OUTDIR/attention.log"
    note "attention benchmark: exit ${PIPESTATUS[0]}"
else
    echo "benchmarks/attention.py is not in this copy: skipped"
    note "attention benchmark: not in this copy"
fi

{
    echo "== gpu_check summary ($(($(date +%s) - STARTED)) s, output in $OUTDIR)"
    grep -v -E " -$" "$OUTDIR/versions.txt"
    for line in "${STATUS[@]}"; do echo "- $line"; done
    grep -E "^(FAILED|ERROR) " "$OUTDIR/pytest.log" | cut -c1-160 | head -25
} | tee "$OUTDIR/summary.txt"
((TEST_RC == 0 && CHECK_RC == 0 && GPU_RC == 0))
