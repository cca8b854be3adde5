"""LSTM / GRU speed and memory: gatenets against Flax NNX and PyTorch, same process, same run.

For each model (LSTM, GRU), size (batch, time, in_features, hidden) and mode (``forward``:
inference; ``train``: forward + backward + Adam update), every library runs the same work and
the median time after warm-up is reported, with tokens/s, the speed ratio to each peer
(``peer_ms / gatenets_ms``: above 1 means gatenets is faster), achieved GFLOP/s and its share of
a float32 matmul peak measured in the same run, compile time and (for the JAX libraries) the
peak temporary memory XLA reports for the compiled program.

Variants of the gatenets layer (``--variants``): ``plain``; ``gates`` (gate trace returned; in
training a small penalty on the forget/update gates is added so that the gates are
differentiated, which the peers cannot do); ``mask`` (random right-padding, ``seq_lengths``;
the peers get it too: Flax ``seq_lengths``, PyTorch packed sequences); ``scan`` (the generic
``lax.scan`` path, ``loop="scan"``); ``before`` (input matmul for all steps before the
loop, ``precompute_inputs=True``; the default on CPU runs it inside each step); ``remat``;
``bf16`` (bfloat16 compute, float32 cell state).

Run ``python benchmarks/recurrent.py`` for the issue's sweep, ``--quick`` for one small point.
The table goes to stdout, everything to ``--json`` (with CPU model and library versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import gatenets  # noqa: E402

SIZES = "64,128,64,256;32,256,128,512;16,512,32,128;128,64,256,1024;1,1024,32,256"
QUICK_SIZES = "16,64,32,128"
VARIANTS = ("plain", "gates", "mask", "scan", "before", "remat", "bf16")
LEARNING_RATE = 1e-3


# ------------------------------------------------------------------------------------------
# Timing.


def median_ms(run: Callable[[], object], repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


def matmul_peak_gflops(repeats: int) -> float:
    """float32 GFLOP/s of a large square matmul on this machine, now."""
    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    ms, _ = median_ms(lambda: f(a).block_until_ready(), repeats, 2)
    return 2 * n**3 / ms / 1e6


def flops(model: str, batch: int, time_: int, features: int, hidden: int, mode: str) -> float:
    """Matmul FLOPs of one layer pass (train: forward plus twice that for the backward)."""
    blocks = 4 if model == "lstm" else 3
    forward = 2.0 * batch * time_ * (features + hidden) * blocks * hidden
    return forward * (3 if mode == "train" else 1)


# ------------------------------------------------------------------------------------------
# JAX libraries: one pure jitted function per (layer, mode), state split out of the module.


def jax_runner(model_module, make_call, mode, x, target, lengths, gate_penalty):
    """Compiles the forward or train step of an NNX module; returns (run, compile_s, mem)."""
    graphdef, params, rest = nnx.split(model_module, nnx.Param, ...)
    tx = optax.adam(LEARNING_RATE)
    opt_state = tx.init(params)

    def loss_fn(params, x, target, lengths):
        module = nnx.merge(graphdef, params, rest)
        y, extra = make_call(module, x, lengths)
        loss = jnp.mean((y - target) ** 2)
        if gate_penalty and extra is not None:
            loss = loss + 1e-3 * extra
        return loss

    if mode == "forward":

        def forward(params, x, lengths):
            module = nnx.merge(graphdef, params, rest)
            return make_call(module, x, lengths)

        compiled_start = time.perf_counter()
        compiled = jax.jit(forward).lower(params, x, lengths).compile()
        compile_s = time.perf_counter() - compiled_start

        def run():
            jax.block_until_ready(compiled(params, x, lengths))

    else:

        def train_step(params, opt_state, x, target, lengths):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, target, lengths)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        compiled_start = time.perf_counter()
        compiled = (
            jax.jit(train_step, donate_argnums=(0, 1))
            .lower(params, opt_state, x, target, lengths)
            .compile()
        )
        compile_s = time.perf_counter() - compiled_start
        state = {"params": params, "opt": opt_state}

        def run():
            state["params"], state["opt"], loss = compiled(
                state["params"], state["opt"], x, target, lengths
            )
            loss.block_until_ready()

    memory = compiled.memory_analysis()
    temp_bytes = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    return run, compile_s, temp_bytes


def gatenets_module(model, features, hidden, variant):
    cls = gatenets.LSTM if model == "lstm" else gatenets.GRU
    kwargs = {}
    if variant == "scan":
        kwargs["loop"] = "scan"
    if variant == "remat":
        kwargs["remat"] = True
    if variant == "before":
        kwargs["precompute_inputs"] = True
    if variant == "bf16":
        kwargs["dtype"] = jnp.bfloat16
    return cls(features, hidden, rngs=nnx.Rngs(0), **kwargs)


def gatenets_call(model, variant):
    gate = "forget" if model == "lstm" else "update"

    def call(module, x, lengths):
        seq_lengths = lengths if variant == "mask" else None
        if variant == "gates":
            y, trace = module(x, seq_lengths=seq_lengths, return_gates=True)
            return y.astype(jnp.float32), jnp.mean(getattr(trace.gates["layer0/forward"], gate))
        return module(x.astype(module.cell.kernel.dtype), seq_lengths=seq_lengths).astype(
            jnp.float32
        ), None

    return call


def flax_module(model, features, hidden):
    cell_type = nnx.OptimizedLSTMCell if model == "lstm" else nnx.GRUCell
    return nnx.RNN(cell_type(features, hidden, rngs=nnx.Rngs(0)))


def flax_call(model, variant):
    def call(module, x, lengths):
        # Zero carry passed in: Flax would otherwise draw it from an RNG stream inside the
        # traced function, which NNX refuses once the module is split and merged under jit.
        zeros = jnp.zeros((x.shape[0], module.cell.hidden_features), x.dtype)
        carry = (zeros, zeros) if model == "lstm" else zeros
        return module(
            x, initial_carry=carry, seq_lengths=lengths if variant == "mask" else None
        ), None

    return call


# ------------------------------------------------------------------------------------------
# PyTorch.


def torch_runner(model, mode, x_np, target_np, lengths_np, variant, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    features, hidden = x_np.shape[-1], target_np.shape[-1]
    cls = torch.nn.LSTM if model == "lstm" else torch.nn.GRU
    layer = cls(features, hidden, batch_first=True)
    x = torch.from_numpy(x_np)
    target = torch.from_numpy(target_np)
    lengths = torch.from_numpy(lengths_np.astype(np.int64))
    masked = variant == "mask"

    def forward():
        if masked:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x, lengths, batch_first=True, enforce_sorted=False
            )
            y, _ = layer(packed)
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(
                y, batch_first=True, total_length=x.shape[1]
            )
            return y
        return layer(x)[0]

    if mode == "forward":

        def run():
            # Thread count is process-wide and other runners interleave: set it every call.
            torch.set_num_threads(threads)
            with torch.inference_mode():
                forward()

    else:
        optimizer = torch.optim.Adam(layer.parameters(), lr=LEARNING_RATE)

        def run():
            torch.set_num_threads(threads)
            optimizer.zero_grad(set_to_none=True)
            loss = torch.mean((forward() - target) ** 2)
            loss.backward()
            optimizer.step()

    start = time.perf_counter()
    run()
    first_s = time.perf_counter() - start
    return run, first_s, None


# ------------------------------------------------------------------------------------------
# The sweep.


def environment(threads: int, peak: float) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        flags = open("/proc/cpuinfo").read()
        isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f" {f}" in flags]
    except OSError:
        isa = []
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("jax", "jaxlib", "flax", "optax", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    versions["gatenets"] = gatenets.__version__
    return {
        "cpu": cpu,
        "isa": isa,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "load_average": os.getloadavg(),
        "matmul_peak_gflops": peak,
        "versions": versions,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_point(model, size, mode, variants, args, peak):
    """Measures every gatenets variant and every peer at one point, interleaved: each round
    times each runner once, so the machine's load drifts over all of them alike."""
    batch, time_, features, hidden = size
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, time_, features), dtype=np.float32)
    target_np = rng.standard_normal((batch, time_, hidden), dtype=np.float32)
    lengths_np = rng.integers(time_ // 2, time_ + 1, size=batch).astype(np.int32)
    lengths_np[0] = time_
    x, target, lengths = jnp.asarray(x_np), jnp.asarray(target_np), jnp.asarray(lengths_np)
    runners = {}
    for variant in variants:
        runners[f"gatenets/{variant}"] = jax_runner(
            gatenets_module(model, features, hidden, variant),
            gatenets_call(model, variant),
            mode,
            x,
            target,
            lengths,
            gate_penalty=variant == "gates",
        )
    peer_variants = ["mask"] if variants == ["mask"] else ["plain"]
    peer_variants += ["mask"] if "mask" in variants and variants != ["mask"] else []
    for variant in peer_variants:
        if "flax" in args.peers:
            runners[f"flax/{variant}"] = jax_runner(
                flax_module(model, features, hidden),
                flax_call(model, variant),
                mode,
                x,
                target,
                lengths,
                gate_penalty=False,
            )
        if "torch" in args.peers:
            for threads in args.torch_threads:
                runners[f"torch{threads}/{variant}"] = torch_runner(
                    model, mode, x_np, target_np, lengths_np, variant, threads
                )
    for run, _, _ in runners.values():
        for _ in range(args.warmup):
            run()
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, (run, _, _) in runners.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    work = flops(model, batch, time_, features, hidden, mode)
    results = {}
    for name, (_, compile_s, temp) in runners.items():
        ms = statistics.median(times[name])
        results[name] = {
            "ms": ms,
            "times_ms": times[name],
            "compile_s": compile_s,
            "temp_bytes": temp,
            "tokens_per_s": batch * time_ / ms * 1e3,
            "gflops": work / ms / 1e6,
            "peak_fraction": work / ms / 1e6 / peak,
        }
    points = []
    for variant in variants:
        ours = results[f"gatenets/{variant}"]["ms"]
        peer_variant = "mask" if variant == "mask" else "plain"
        peers = {
            name.split("/")[0]: result
            for name, result in results.items()
            if not name.startswith("gatenets/") and name.endswith(f"/{peer_variant}")
        }
        points.append(
            {
                "model": model,
                "size": {"batch": batch, "time": time_, "features": features, "hidden": hidden},
                "mode": mode,
                "variant": variant,
                "gatenets": results[f"gatenets/{variant}"],
                "peers": peers,
                "speedup": {p: r["ms"] / ours for p, r in peers.items()},
                "speedup_vs_fastest_peer": min(r["ms"] for r in peers.values()) / ours
                if peers
                else None,
            }
        )
    return points


def format_row(point) -> str:
    size = point["size"]
    ours = point["gatenets"]
    mib = lambda r: "      -" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:7.1f}"  # noqa: E731
    flax_memory = mib(point["peers"]["flax"]) if "flax" in point["peers"] else "      -"
    speed = "  ".join(f"x{point['speedup'][p]:5.2f} {p:5s}" for p in point["speedup"])
    peers = "  ".join(f"{p} {r['ms']:8.1f}" for p, r in point["peers"].items())
    return (
        f"{point['model']:4s} {point['mode']:7s} {point['variant']:6s} "
        f"{size['batch']:4d} {size['time']:5d} {size['features']:4d} {size['hidden']:5d} | "
        f"{ours['ms']:8.1f} ms {ours['tokens_per_s'] / 1e3:8.1f} kt/s "
        f"{ours['gflops']:6.1f} GF/s {100 * ours['peak_fraction']:4.0f}% "
        f"{ours['compile_s']:5.1f} s {mib(ours)} MiB (flax {flax_memory}) | {peers} | {speed}"
    )


def markdown_table(points: list) -> str:
    """The README's table: one row per point, ratios ``peer_ms / gatenets_ms``."""
    peers = sorted({p for point in points for p in point["peers"]})
    head = ["model", "mode", "variant", "B, T, I, H", "gatenets ms", "% peak"]
    head += [f"x vs {p}" for p in peers] + ["XLA temp MiB (flax)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point in points:
        size = ", ".join(str(v) for v in point["size"].values())
        ours = point["gatenets"]
        row = [point["model"], point["mode"], point["variant"], size, f"{ours['ms']:.1f}"]
        row.append(f"{100 * ours['peak_fraction']:.0f}")
        row += [f"{point['speedup'][p]:.2f}" if p in point["speedup"] else "-" for p in peers]
        flax = point["peers"].get("flax", {}).get("temp_bytes")
        mine = ours["temp_bytes"]
        row.append(
            "-"
            if mine is None
            else f"{mine / 2**20:.0f}" + ("" if flax is None else f" ({flax / 2**20:.0f})")
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_sizes(text: str) -> list[tuple[int, int, int, int]]:
    sizes = []
    for part in text.split(";"):
        values = tuple(int(v) for v in part.split(","))
        if len(values) != 4 or min(values) <= 0:
            raise SystemExit(f"--sizes: each point is B,T,I,H of positive ints; got {part!r}.")
        sizes.append(values)
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=SIZES, help="B,T,I,H points joined by ';'")
    parser.add_argument("--models", default="lstm,gru")
    parser.add_argument("--modes", default="train,forward")
    parser.add_argument("--variants", default="plain,gates,mask")
    parser.add_argument("--peers", default="flax,torch")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--torch-threads",
        default=f"{os.cpu_count()}",
        help="PyTorch thread counts to measure, e.g. '1,2' (each is a peer: torch1, torch2)",
    )
    parser.add_argument("--quick", action="store_true", help="one small point, 3 repeats")
    parser.add_argument(
        "--markdown", metavar="JSON", help="print the markdown table of an earlier run and exit"
    )
    parser.add_argument("--json", default="benchmarks/results/recurrent.json")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown_table(json.load(f)["points"]))
        return 0
    args.torch_threads = [int(t) for t in args.torch_threads.split(",")]
    if args.quick:
        args.sizes, args.repeats, args.warmup = QUICK_SIZES, 3, 1
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: unknown {variant!r}; expected some of {VARIANTS}.")

    peak = matmul_peak_gflops(max(args.repeats, 5))
    env = environment(args.torch_threads, peak)
    print(
        f"# {env['cpu']} ({env['cores']} cores, {' '.join(env['isa'])}), load {env['load_average']}"
    )
    print(f"# float32 matmul peak now: {peak:.0f} GFLOP/s; versions {env['versions']}")
    print(
        "# model mode variant B T I H | gatenets: median, kilo-tokens/s, GFLOP/s, % of peak, "
        "compile, XLA temp memory | peers ms | speedup vs peer (peer_ms / gatenets_ms)"
    )
    points = []
    for model in args.models.split(","):
        for size in parse_sizes(args.sizes):
            for mode in args.modes.split(","):
                for point in run_point(model, size, mode, args.variants.split(","), args, peak):
                    points.append(point)
                    print(format_row(point), flush=True)
                # Written after every point: a long sweep cut short keeps what it measured.
                write_json(args.json, env, points)
    print(f"# wrote {args.json}")
    return 0


def write_json(path: str, env: dict, points: list) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"environment": env, "points": points}, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
