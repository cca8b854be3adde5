"""GPU check and benchmark: the cuDNN LSTM path, the fused kernels, Flax NNX and PyTorch (cuDNN).

Runs on one CUDA machine with jax[cuda], flax, optax and torch installed, in under 4 minutes:

1. **Check on the device**: ``gatenets.LSTM(loop="cudnn")`` equals ``loop="fused"`` with the
   same weights — outputs, final carries and every parameter gradient — over 1 and 2 layers,
   uni- and bidirectional, with ``seq_lengths``. The script stops if it does not.
2. **Timing**, interleaved rounds (median of ``--repeats``): LSTM and GRU, forward and train, at
   (64, 128, 64, 256) and (32, 256, 128, 512), for gatenets ``loop="auto"`` (cuDNN for the
   LSTM), gatenets with the fused kernel and the input projection before the loop, gatenets
   with the fused kernel and the projection inside the loop, Flax NNX and PyTorch. For the GRU,
   which has no cuDNN path in JAX, the two fused variants say which default is right on a GPU.

    python benchmarks/gpu.py --json gpu.json
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


def check_cudnn_equals_fused() -> float:
    """Largest difference between the cuDNN path and the fused kernel (values and gradients)."""
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
        worst = max(worst, abs(float(value_c) - float(value_f)) / max(1.0, abs(float(value_f))))
        for a, b in zip(jax.tree.leaves(grad_c), jax.tree.leaves(grad_f), strict=True):
            worst = max(worst, float(jnp.max(jnp.abs(a - b))))
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default="gpu.json")
    args = parser.parse_args(argv)
    args.torch_threads = [1]
    if jax.default_backend() != "gpu":
        print(f"gpu.py: JAX's backend is {jax.default_backend()!r}, not a GPU.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    difference = check_cudnn_equals_fused()
    print(f"# {jax.devices()[0].device_kind}: cuDNN vs fused, largest difference {difference:.2e}")
    if difference > 1e-4:
        print("gpu.py: the cuDNN path does not equal the fused kernel; stopping.", file=sys.stderr)
        return 1
    env = {"device": jax.devices()[0].device_kind, "cudnn_vs_fused": difference}
    rows = []
    for model, variants in VARIANTS.items():
        for size in SIZES:
            for mode in ("train", "forward"):
                point = bench.Point(model, *size, mode)
                for row in bench.run_point(point, variants, args):
                    rows.append(row)
                    print(bench.format_row(row), flush=True)
                bench.write_json(args.json, env, rows)
    print(bench.markdown_table(rows))
    print(f"# {time.perf_counter() - start:.0f} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
