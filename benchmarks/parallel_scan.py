"""Train-step time of the parallel-scan cells against ``gatenets.GRU``, same process, same run.

For each sequence length T, every model takes the same optax Adam train step (forward,
backward, update) on the same ``[batch, T, features]`` batch: ``gatenets.GRU`` (the peer), and
``MinGRU``, ``MinLSTM`` and ``RGLRU`` each with ``loop="associative"`` ("parallel": log-space
associative scan) and ``loop="linear_scan"`` ("sequential": one multiply-add per step in
``lax.scan``). The models are timed in interleaved rounds after warm-up and the median is
reported, with the ratio ``GRU_ms / model_ms`` (above 1: faster than the GRU) and
``sequential_ms / parallel_ms`` for each cell (above 1: the parallel scan wins).

    python benchmarks/parallel_scan.py                      # T = 256, 1024, 4096
    python benchmarks/parallel_scan.py --lengths 64 --repeats 3   # a quick look

The table goes to stdout, everything to ``--json`` (with the device and library versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import gatenets  # noqa: E402

# Settings (each can be overridden on the command line).
LENGTHS = "256,1024,4096"
BATCH = 16
FEATURES = 32
HIDDEN = 128
REPEATS = 5
WARMUP = 1
JSON_PATH = "parallel_scan.json"

MODELS = {
    "GRU": (gatenets.GRU, None),
    "MinGRU/parallel": (gatenets.MinGRU, "associative"),
    "MinGRU/sequential": (gatenets.MinGRU, "linear_scan"),
    "MinLSTM/parallel": (gatenets.MinLSTM, "associative"),
    "MinLSTM/sequential": (gatenets.MinLSTM, "linear_scan"),
    "RGLRU/parallel": (gatenets.RGLRU, "associative"),
    "RGLRU/sequential": (gatenets.RGLRU, "linear_scan"),
}


def build(name: str, features: int, hidden: int):
    layer_type, loop = MODELS[name]
    kwargs = {} if loop is None else {"loop": loop}
    return layer_type(features, hidden, rngs=nnx.Rngs(0), **kwargs)


def compile_train_step(name, x, target, hidden):
    """A zero-argument function running one Adam step, and its compile time in seconds."""
    model = build(name, x.shape[-1], hidden)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, target):
        def loss_fn(model):
            return jnp.mean((model(x) - target) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def run():
        step(model, optimizer, x, target).block_until_ready()

    start = time.perf_counter()
    run()
    return run, time.perf_counter() - start


def time_round_robin(runs, repeats, warmup):
    """Median ms of each run, timed in interleaved rounds so that load from other processes
    falls on every model alike and the ratios stay fair on a shared machine."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default=LENGTHS, help="comma-separated sequence lengths")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--features", type=int, default=FEATURES)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--json", default=JSON_PATH, help="where to write all measurements")
    args = parser.parse_args(argv)
    lengths = [int(t) for t in args.lengths.split(",")]
    names = args.models.split(",")
    for name in names:
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; choose from {tuple(MODELS)}.")
    if "GRU" not in names:
        names.insert(0, "GRU")

    device = jax.devices()[0]
    print(
        f"device: {device.platform} ({device.device_kind}), batch {args.batch}, features "
        f"{args.features}, hidden {args.hidden}, median of {args.repeats} after "
        f"{args.warmup} warm-up"
    )
    rows = []
    rng = np.random.default_rng(0)
    for length in lengths:
        x = jnp.asarray(rng.standard_normal((args.batch, length, args.features)), jnp.float32)
        target = jnp.asarray(rng.standard_normal((args.batch, length, args.hidden)), jnp.float32)
        runs, compile_s = {}, {}
        for name in names:
            runs[name], compile_s[name] = compile_train_step(name, x, target, args.hidden)
        timed = time_round_robin(runs, args.repeats, args.warmup)
        results = {name: ms for name, (ms, _) in timed.items()}
        for name, (ms, times) in timed.items():
            rows.append(
                {
                    "T": length,
                    "model": name,
                    "ms": ms,
                    "times_ms": times,
                    "compile_s": compile_s[name],
                }
            )
            print(f"T={length:5d} {name:20s} {ms:9.2f} ms/step (compile {compile_s[name]:.1f} s)")
        for row in rows:
            if row["T"] == length:
                row["gru_over_model"] = results["GRU"] / row["ms"]
                cell, _, mode = row["model"].partition("/")
                if mode == "parallel" and f"{cell}/sequential" in results:
                    row["sequential_over_parallel"] = results[f"{cell}/sequential"] / row["ms"]

    print()
    print("| T | model | train step (ms) | GRU ms / model ms | sequential ms / parallel ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        seq = row.get("sequential_over_parallel")
        print(
            f"| {row['T']} | {row['model']} | {row['ms']:.1f} | {row['gru_over_model']:.2f} | "
            f"{'' if seq is None else f'{seq:.2f}'} |"
        )
    record = {
        "benchmark": "parallel_scan",
        "device": f"{device.platform} {device.device_kind}",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "rows": rows,
    }
    with open(args.json, "w") as f:
        json.dump(record, f, indent=2)
    print(f"\nwrote {args.json}")
    return record


if __name__ == "__main__":
    main()
