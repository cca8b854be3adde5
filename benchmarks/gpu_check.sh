#!/usr/bin/env bash
# The one GPU command: versions, the test suite on the GPU, the cuDNN check at two precisions,
# the LSTM/GRU train-step benchmark in float32 and in bf16 mixed precision against Flax and
# PyTorch (cuDNN; torch.autocast for bf16), the same bf16 steps with XLA's command buffers
# (CUDA graphs) over the time loop and with the loop unrolled, and (when present) the attention
# benchmark, in at most 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; nothing is installed
#
# Everything is written to $OUT when set, else to gpu_check_out/: versions.txt, pytest.log,
# junit.xml, tests_summary.txt, gpu-check-highest.json, gpu-check-default.json,
# bench-lstm.json, bench-gru.json, bench-command-buffers.json, bench-unroll.json,
# attention.json (and the logs of each step), summary.txt. With GPU_CHECK_PACK=1 (the default
# when $OUT is set) everything but summary.txt and tests_summary.txt is packed into
# gpu_check.tar.gz at the end: three files to bring back. Each step has its own time cap, all
# of them within GPU_CHECK_BUDGET seconds (470); a step that runs out is stopped (a benchmark
# keeps the points it finished) and the next one starts.
# Without a GPU it runs all the same and says so. GPU_CHECK_QUICK=1 runs a few test files and
# the benchmarks at their smallest (a check of this script, not of the GPU);
# GPU_CHECK_PYTEST_ARGS adds pytest arguments (e.g. a test path); PYTHON names the interpreter.
set -u

cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
OUTDIR=${OUT:-$ROOT/gpu_check_out}
QUICK=${GPU_CHECK_QUICK:-0}
BUDGET=${GPU_CHECK_BUDGET:-470}
PACK=${GPU_CHECK_PACK:-$([[ -n "${OUT:-}" ]] && echo 1 || echo 0)}
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
TEST_CAP=$(cap 180 300)
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

# The cuDNN-vs-fused check, relative to the matmul format's roundoff, at both precisions.
CHECK_RC=0
for PRECISION in highest default; do
    echo "== cuDNN check at precision $PRECISION"
    timeout -k 10 "$(cap 25 270)" "$PYTHON" benchmarks/gpu.py --check-only \
        --precision "$PRECISION" --json "$OUTDIR/gpu-check-$PRECISION.json" 2>&1 |
        tee "$OUTDIR/gpu-check-$PRECISION.log"
    RC=${PIPESTATUS[0]}
    ((RC != 0)) && CHECK_RC=$RC
    note "cuDNN check, $PRECISION: exit $RC $(grep -h -m1 -E '^# .*cuDNN vs fused|gpu.py:' "$OUTDIR/gpu-check-$PRECISION.log")"
done

# Train steps (forward, backward, Adam) of gatenets against Flax NNX and PyTorch, median of 7
# interleaved rounds. plain is loop="auto" (measured here, on this GPU: a fresh cache, and the
# rows say what it chose); bf16 is dtype=bfloat16 with float32 parameters, against Flax's
# dtype=bfloat16 and PyTorch's autocast(bfloat16).
export GATENETS_CACHE_DIR="$OUTDIR/loop-cache"
SIZES="8,512,128,512;64,512,256,1024;1,1024,32,256;64,128,64,256"
TARGETS="8,512,128,512;64,512,256,1024"
if [[ "$QUICK" == 1 ]]; then SIZES="2,16,4,8"; TARGETS="2,16,4,8"; fi
bench() { # NAME CAP RESERVE ARGS...
    local name=$1 seconds=$2 reserve=$3
    shift 3
    echo "== bench $name"
    timeout -k 10 "$(cap "$seconds" "$reserve")" "$PYTHON" -m gatenets bench --modes train \
        --repeats 7 --warmup 1 --torch-threads 1 --json "$OUTDIR/bench-$name.json" "$@" 2>&1 |
        tee "$OUTDIR/bench-$name.log"
    note "bench $name: exit ${PIPESTATUS[0]}"
}
LSTM_VARIANTS=plain,bf16
if [[ "$BACKEND" == gpu ]]; then LSTM_VARIANTS=plain,cudnn,bf16; fi
bench lstm 90 170 --models lstm --sizes "$SIZES" --variants "$LSTM_VARIANTS"
bench gru 60 125 --models gru --sizes "$SIZES" --variants plain,bf16
# The same bf16 steps with the time loop captured as CUDA graphs (XLA's command buffers for
# while loops, unrolled): launches, not matmuls, bound a step at these sizes. The flags must be
# set before JAX starts, hence a process of its own.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL \
--xla_gpu_command_buffer_unroll_loops=true --xla_gpu_graph_min_graph_size=1" \
    bench command-buffers 45 80 --models lstm,gru --sizes "$TARGETS" --variants bf16_fused,bf16_scan
# And with eight steps per loop iteration: XLA can then fuse one step's elementwise tail with
# the next step's head (a kernel fewer per step in the backward loop).
bench unroll 35 45 --models lstm,gru --sizes "$TARGETS" --variants bf16_fused,plain --unroll 8

echo "== attention benchmark"
if [[ -f benchmarks/attention.py ]]; then
    # The GPU targets and decoding; the CPU memory and time sections are the CPU's.
    ATTENTION_ARGS=(--skip memory,time --json "$OUTDIR/attention.json")
    if [[ "$QUICK" == 1 ]] && "$PYTHON" benchmarks/attention.py --help 2>/dev/null |
        grep -q -- --quick; then
        ATTENTION_ARGS+=(--quick)
    fi
    timeout -k 10 "$(cap 45 0)" "$PYTHON" benchmarks/attention.py "${ATTENTION_ARGS[@]}" 2>&1 |
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
if [[ "$PACK" == 1 ]]; then
    (cd "$OUTDIR" && find . -type f ! -name summary.txt ! -name tests_summary.txt \
        ! -name gpu_check.tar.gz -print0 | tar --null -czf gpu_check.tar.gz -T - &&
        find . -mindepth 1 ! -name summary.txt ! -name tests_summary.txt \
            ! -name gpu_check.tar.gz -delete)
    echo "(packed into $OUTDIR/gpu_check.tar.gz)"
fi
((TEST_RC == 0 && CHECK_RC == 0))
