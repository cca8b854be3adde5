"""GPU check and benchmark: the cuDNN LSTM path, the fused kernels, Flax NNX and PyTorch (cuDNN).

Runs on one CUDA machine with jax[cuda], flax, optax and torch installed, in under 4 minutes
(``--quick``: one size, under 1 minute):

1. **Check on the device**: ``gatenets.LSTM(loop="cudnn")`` equals ``loop="fused"`` with the
   same weights — the loss and every parameter gradient — over 1 and 2 layers, uni- and
   bidirectional, with ``seq_lengths``. The script stops if it does not.
2. **Timing**, interleaved rounds (median of ``--repeats``): LSTM and GRU, forward and train, at
   (64, 128, 64, 256) and (32, 256, 128, 512), for gatenets ``loop="auto"`` (cuDNN for the
   LSTM), gatenets with the fused kernel and the input projection before the loop, gatenets
   with the fused kernel and the projection inside the loop, Flax NNX and PyTorch. For the GRU,
   which has no cuDNN path in JAX, the two fused variants say which default is right on a GPU.

The check's tolerance follows the matmul precision it runs at (``--precision``, else JAX's
setting, ``JAX_DEFAULT_MATMUL_PRECISION`` included). Each difference is relative to the largest
magnitude of the fused kernel's value (the loss, or one gradient array): ``max|cudnn - fused| /
max|fused|``. Let ``u`` be the unit roundoff of the format float32 matmul inputs are rounded to:
TF32 (``2**-11``) at JAX's default on NVIDIA GPUs, float32 (``2**-24``) under ``"highest"``,
bfloat16 (``2**-8``) under a bfloat16 dot algorithm. The bound is ``8 u``, and never below
``64 * 2**-24`` (3.8e-6): TF32 3.9e-3, bfloat16 3.1e-2, float32 3.8e-6. The factor 8 covers the
rounding compounded over twelve steps, two layers and the backward pass; the float32 floor, the
two implementations' different summation orders and activation functions. A wrong weight, gate
or padding step differs by order 1 at any precision.

    python benchmarks/gpu.py --json gpu.json
    python benchmarks/gpu.py --precision highest --check-only --json gpu-check-highest.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import gatenets  # noqa: E402
from gatenets import bench  # noqa: E402

SIZES = ((64, 128, 64, 256), (32, 256, 128, 512))
VARIANTS = {"lstm": ("plain", "fused_before", "fused"), "gru": ("plain", "fused_before", "fused")}


# The format float32 matmul inputs are rounded to on an NVIDIA GPU, for each value JAX's
# precision setting takes (None and "default"/"bfloat16"/"fastest" all mean Precision.DEFAULT,
# which XLA runs as TF32 on NVIDIA GPUs since Ampere), and the unit roundoff of each format.
MATMUL_FORMATS = {
    None: "tensorfloat32",
    "default": "tensorfloat32",
    "fastest": "tensorfloat32",
    "bfloat16": "tensorfloat32",
    "high": "tensorfloat32",
    "tensorfloat32": "tensorfloat32",
    "bfloat16_3x": "tensorfloat32",
    "tf32_tf32_f32": "tensorfloat32",
    "bf16_bf16_f32_x3": "tensorfloat32",
    "highest": "float32",
    "float32": "float32",
    "f32_f32_f32": "float32",
    "tf32_tf32_f32_x3": "float32",
    "bf16_bf16_f32_x6": "float32",
    "bf16_bf16_f32_x9": "float32",
    "bf16_bf16_f32": "bfloat16",
    "bf16_bf16_bf16": "bfloat16",
}
UNIT_ROUNDOFF = {"float32": 2.0**-24, "tensorfloat32": 2.0**-11, "bfloat16": 2.0**-8}
MATMUL_GROWTH = 8
FLOAT32_FLOOR = 64 * UNIT_ROUNDOFF["float32"]


def check_tolerance(precision: str | None) -> tuple[str, float]:
    """``(format, tolerance)`` of the cuDNN-vs-fused check at JAX matmul precision ``precision``
    (a name JAX accepts, or None for the backend's default): ``MATMUL_GROWTH`` times the unit
    roundoff of the format float32 matmul inputs are rounded to, at least ``FLOAT32_FLOOR``. An
    unknown name gets the bfloat16 bound, the loosest, and says so in the format's name."""
    key = None if precision is None else str(precision).lower()
    form = MATMUL_FORMATS.get(key, "bfloat16")
    tolerance = max(MATMUL_GROWTH * UNIT_ROUNDOFF[form], FLOAT32_FLOOR)
    if key not in MATMUL_FORMATS:
        form = f"bfloat16 (unknown precision {precision!r})"
    return form, tolerance


def relative_difference(got, want) -> float:
    """``max|got - want| / max|want|`` (an all-zero ``want`` divides by 1)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return float(np.max(np.abs(got - want))) / (scale or 1.0) if want.size else 0.0


def check_cudnn_equals_fused() -> float:
    """Largest relative difference (see :func:`relative_difference`) between the cuDNN path and
    the fused kernel, over the loss and every parameter gradient."""
    worst = 0.0
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 12, 8)), jnp.float32)
    lengths = jnp.asarray([12, 7, 1, 12], jnp.int32)
    for layers, bidirectional in ((1, False), (2, True)):
        models = [
            gatenets.LSTM(
                8, 16, num_layers=layers, bidirectional=bidirectional, loop=loop, rngs=nnx.Rngs(0)
            )
            for loop in ("cudnn", "fused")
        ]

        def loss(model):
            carries, y = model(x, seq_lengths=lengths, return_carry=True)
            return jnp.sum(y**2) + sum(jnp.sum(c**2) for c in jax.tree.leaves(carries))

        (value_c, grad_c), (value_f, grad_f) = (nnx.value_and_grad(loss)(m) for m in models)
        worst = max(worst, relative_difference(value_c, value_f))
        for a, b in zip(jax.tree.leaves(grad_c), jax.tree.leaves(grad_f), strict=True):
            worst = max(worst, relative_difference(a, b))
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default="gpu.json")
    parser.add_argument(
        "--precision",
        default=None,
        help="JAX matmul precision for the check and the timings (e.g. highest); default: "
        "JAX's setting (JAX_DEFAULT_MATMUL_PRECISION), TF32 on NVIDIA GPUs when unset",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the first size only, 3 repeats, 1 warm-up"
    )
    parser.add_argument("--check-only", action="store_true", help="the check, no timing")
    args = parser.parse_args(argv)
    args.torch_threads = [1]
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 3), min(args.warmup, 1)
    if args.precision is None:
        return run(args)
    with jax.default_matmul_precision(args.precision):
        return run(args)


def run(args) -> int:
    precision = jax.config.jax_default_matmul_precision
    matmul_format, tolerance = check_tolerance(precision)
    env = {
        **bench.environment(args),
        "matmul_precision": precision,
        "matmul_format": matmul_format,
        "check_tolerance": tolerance,
    }
    if jax.default_backend() != "gpu":
        message = f"JAX's backend is {jax.default_backend()!r}, not a GPU"
        print(f"gpu.py: {message}; nothing checked or timed.", file=sys.stderr)
        bench.write_json(args.json, {**env, "skipped": message}, [])
        return 2
    start = time.perf_counter()
    difference = check_cudnn_equals_fused()
    env.update(device=jax.devices()[0].device_kind, cudnn_vs_fused=difference)
    print(
        f"# {env['device']}: cuDNN vs fused, largest relative difference {difference:.2e} "
        f"(bound {tolerance:.1e} for {matmul_format} matmuls, JAX precision {precision!r})"
    )
    if not difference <= tolerance:
        print("gpu.py: the cuDNN path does not equal the fused kernel; stopping.", file=sys.stderr)
        bench.write_json(args.json, {**env, "stopped": "cuDNN != fused"}, [])
        return 1
    bench.write_json(args.json, env, [])
    rows = []
    for model, variants in [] if args.check_only else VARIANTS.items():
        for size in SIZES[:1] if args.quick else SIZES:
            for mode in ("train", "forward"):
                point = bench.Point(model, *size, mode)
                for row in bench.run_point(point, variants, args):
                    rows.append(row)
                    print(bench.format_row(row), flush=True)
                bench.write_json(args.json, env, rows)
    if rows:
        print(bench.markdown_table(rows))
    print(f"# {time.perf_counter() - start:.0f} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
