"""Gated attention at the lengths people train: memory, speed and decoding, as ratios to targets.

One run prints every target of the memory-efficient attention work, each as a measured ratio
beside the target ratio, and writes them to JSON:

- **CPU memory**: peak temporary memory of a ``GatedAttention`` train step (forward and
  backward) at batch 1, T=8,192, width 256, 4 heads, float32, causal, from XLA's compiled
  memory analysis (deterministic, no run needed): the default path against the materialised
  ``[T, T]`` path the layer used before. Target: at most 1 GB.
- **CPU time**: the same train step at T=1,024, default path over materialised. Target: at
  most 1.2.
- **GPU** (when JAX sees one): batch 4, T=8,192, width 1,024, 16 heads, bfloat16, causal train
  step of ``GatedAttention`` over cuDNN's fused attention plus the layer's four projections
  timed alone in the same run. Target: at most 1.5. Then T=32,768 at batch 1 must run.
- **Decoding**: 1,000 characters from the char-LM attention model, reading the window again
  for every character (``use_cache=False``) over decoding with the key/value caches. Target:
  at least 10, and the same text.

Timings need a quiet machine (nothing else running); memory analysis does not.

    python benchmarks/attention.py --json attention.json
    python benchmarks/attention.py --quick            # tiny sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from gatenets import GatedAttention  # noqa: E402
from gatenets.tasks import get_task  # noqa: E402

FULL = {
    "cpu_memory": {"batch": 1, "time": 8192, "width": 256, "heads": 4},
    "cpu_time": {"batch": 1, "time": 1024, "width": 256, "heads": 4},
    "gpu": {"batch": 4, "time": 8192, "width": 1024, "heads": 16},
    "gpu_long": {"batch": 1, "time": 32768, "width": 1024, "heads": 16},
    "decode_chars": 1000,
}
QUICK = {
    "cpu_memory": {"batch": 1, "time": 512, "width": 32, "heads": 4},
    "cpu_time": {"batch": 1, "time": 128, "width": 32, "heads": 4},
    "gpu": {"batch": 2, "time": 512, "width": 128, "heads": 2},
    "gpu_long": {"batch": 1, "time": 1024, "width": 128, "heads": 2},
    "decode_chars": 40,
}
GIB = 2**30


def train_step(layer: nnx.Module, size: dict, dtype: Any) -> tuple[Any, tuple]:
    """A jitted forward + backward of ``layer`` (mean square of its causal output) and its
    arguments (parameters, inputs)."""
    graphdef, state = nnx.split(layer)

    def loss(state, x):
        out = nnx.merge(graphdef, state)(x, causal=True)
        return jnp.mean(jnp.square(out.astype(jnp.float32)))

    x = jnp.asarray(
        np.random.default_rng(0).standard_normal((size["batch"], size["time"], size["width"])),
        dtype,
    )
    return jax.jit(jax.value_and_grad(loss)), (state, x)


def gated_attention(size: dict, implementation: str | None, dtype: Any) -> GatedAttention:
    compute = None if dtype == jnp.float32 else dtype
    return GatedAttention(
        size["width"], size["heads"], implementation=implementation, dtype=compute,
        rngs=nnx.Rngs(0),
    )  # fmt: skip


def temp_bytes(fn: Any, args: tuple, device: Any) -> int:
    """Peak temporary memory of the compiled ``fn(*args)`` on ``device``, from XLA's memory
    analysis (nothing runs)."""
    sharding = jax.sharding.SingleDeviceSharding(device)
    shapes = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), args
    )
    return int(fn.lower(*shapes).compile().memory_analysis().temp_size_in_bytes)


def seconds(fn: Any, args: tuple, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn(*args)`` after ``warmup`` calls (compile included there)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def cudnn_core_step(size: dict, dtype: Any) -> tuple[Any, tuple]:
    """cuDNN's fused attention plus the four projections of the layer (query, key, value,
    output), forward + backward, nothing else: what the layer cannot beat."""
    width, heads = size["width"], size["heads"]
    head_dim = width // heads
    rng = np.random.default_rng(0)

    def weight(*shape):
        return jnp.asarray(rng.standard_normal(shape) / np.sqrt(shape[0]), dtype)

    params = {
        "q": weight(width, heads, head_dim),
        "k": weight(width, heads, head_dim),
        "v": weight(width, heads, head_dim),
        "o": weight(heads * head_dim, width).reshape(heads, head_dim, width),
    }

    def loss(params, x):
        q, k, v = (jnp.einsum("btf,fhd->bthd", x, params[n]) for n in "qkv")
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
        out = jnp.einsum("bthd,hdf->btf", y, params["o"])
        return jnp.mean(jnp.square(out.astype(jnp.float32)))

    x = jnp.asarray(rng.standard_normal((size["batch"], size["time"], size["width"])), dtype)
    return jax.jit(jax.value_and_grad(loss)), (params, x)


def line(name: str, measured: float, target: str = "") -> str:
    """One printed result: name, value, and the target it is held to (if any)."""
    return f"{name:<58} {measured:>10.3f}" + (f"   target {target}" if target else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--skip", default="", help="comma-separated sections to skip: memory,time,gpu,decode"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    skip = {s for s in args.skip.split(",") if s}
    results: dict[str, Any] = {
        "environment": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
        },
        "sizes": sizes,
    }
    print(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()[0]}")
    print("Timings mean something only on a quiet machine; memory analysis is exact.\n")

    if "memory" not in skip:
        size = sizes["cpu_memory"]
        cpu = jax.devices("cpu")[0]
        with jax.default_device(cpu):
            new = temp_bytes(
                *train_step(gated_attention(size, None, jnp.float32), size, jnp.float32), cpu
            )
            old = temp_bytes(
                *train_step(gated_attention(size, "materialised", jnp.float32), size, jnp.float32),
                cpu,
            )
        results["cpu_memory"] = {"default_bytes": new, "materialised_bytes": old}
        print(f"CPU train step memory, {size}, float32, causal (XLA memory analysis)")
        print(line("  default path, GiB", new / GIB, "<= 0.931 (1 GB)"))
        print(line("  materialised [T, T] path, GiB", old / GIB, ""))
        print(line("  default / materialised", new / old, "smaller is better"))

    if "time" not in skip:
        size = sizes["cpu_time"]
        with jax.default_device(jax.devices("cpu")[0]):
            new = seconds(
                *train_step(gated_attention(size, None, jnp.float32), size, jnp.float32),
                args.repeats,
                args.warmup,
            )
            old = seconds(
                *train_step(gated_attention(size, "materialised", jnp.float32), size, jnp.float32),
                args.repeats,
                args.warmup,
            )
        results["cpu_time"] = {"default_s": new, "materialised_s": old, "ratio": new / old}
        print(f"\nCPU train step time, {size}, float32, causal")
        print(line("  default path, ms", new * 1e3, ""))
        print(line("  materialised path (before), ms", old * 1e3, ""))
        print(line("  default / before", new / old, "<= 1.2"))

    if "gpu" not in skip and jax.default_backend() == "gpu":
        size = sizes["gpu"]
        dtype = jnp.bfloat16
        layer_step = train_step(gated_attention(size, None, dtype), size, dtype)
        core_step = cudnn_core_step(size, dtype)
        layer_s = seconds(*layer_step, args.repeats, args.warmup)
        core_s = seconds(*core_step, args.repeats, args.warmup)
        layer_mem = temp_bytes(*layer_step, jax.devices()[0])
        results["gpu"] = {
            "layer_s": layer_s,
            "cudnn_plus_projections_s": core_s,
            "ratio": layer_s / core_s,
            "layer_temp_bytes": layer_mem,
        }
        print(f"\nGPU train step, {size}, bfloat16, causal")
        print(line("  GatedAttention, ms", layer_s * 1e3, ""))
        print(line("  cuDNN SDPA + four projections alone, ms", core_s * 1e3, ""))
        print(line("  GatedAttention / (cuDNN + projections)", layer_s / core_s, "<= 1.5"))
        print(line("  GatedAttention temporary memory, GiB", layer_mem / GIB, ""))
        size = sizes["gpu_long"]
        long_step = train_step(gated_attention(size, None, dtype), size, dtype)
        long_s = seconds(*long_step, max(1, args.repeats // 2), 1)
        results["gpu_long"] = {"layer_s": long_s, "runs": True}
        print(
            line(
                f"  T={size['time']} batch {size['batch']} train step runs, ms",
                long_s * 1e3,
                "runs",
            )
        )
    elif "gpu" not in skip:
        results["gpu"] = {"skipped": f"no GPU (backend {jax.default_backend()!r})"}
        print(f"\nGPU: skipped, JAX's backend is {jax.default_backend()!r}")

    if "decode" not in skip:
        chars = sizes["decode_chars"]
        task = get_task("charlm")
        model = task.make_model("attention", rngs=nnx.Rngs(0))
        timed = {}
        texts = {}
        for use_cache in (True, False):
            task.sample(model, "def ", chars, seed=0, use_cache=use_cache)  # compile
            began = time.perf_counter()
            texts[use_cache] = task.sample(model, "def ", chars, seed=0, use_cache=use_cache)
            timed[use_cache] = time.perf_counter() - began
        speedup = timed[False] / timed[True]
        results["decode"] = {
            "chars": chars,
            "cache_s": timed[True],
            "recompute_s": timed[False],
            "speedup": speedup,
            "same_text": texts[True] == texts[False],
        }
        print(f"\nDecoding {chars} characters, char-LM attention model (untrained weights)")
        print(line("  with the key/value caches, s", timed[True], ""))
        print(line("  rereading the window for every character, s", timed[False], ""))
        print(line("  recompute / cache", speedup, ">= 10"))
        print(f"  same text: {texts[True] == texts[False]}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
