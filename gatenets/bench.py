"""``gatenets bench``: LSTM / GRU speed against the peers installed, same process, same run.

For each model (LSTM, GRU), size (batch, time, in_features, hidden) and mode (``forward``:
inference; ``train``: forward + backward + Adam update) every library runs the same work. The
runners are timed in interleaved rounds (A B C A B C …), so a drift in the machine's load falls
on all of them alike, and the median of each is reported with:

* the ratio to each peer, ``peer_ms / gatenets_ms`` (above 1: gatenets is faster), and to the
  fastest peer — Flax NNX always, PyTorch at each ``--torch-threads`` count when importable;
* the **matmul-bound time**: the same matmuls the layer does, at the step's shape, alone in a
  ``lax.scan`` measured in this run (training: three times the forward's, for the two gradient
  matmuls of each forward one), and the layer's share of it (``bound_ms / gatenets_ms``; 1.0
  means nothing but the matmuls costs time);
* the load average before and after, with a loud warning when it exceeds half the cores:
  numbers taken on a busy machine are not numbers.

Variants of the gatenets layer (``--variants``): ``plain`` (``loop="auto"``); ``gates`` (gate
trace returned; in training a small penalty on the forget/update gate so the gates are
differentiated); ``mask`` (random right padding, ``seq_lengths``; the peers get it too);
``scan`` / ``fused`` / ``native`` / ``cudnn`` (that loop forced); ``before`` (input matmul
before the loop); ``fused_before`` (both); ``remat``; ``bf16`` (bfloat16 compute with float32
parameters, state and accumulation; ``bf16_scan`` / ``bf16_fused`` with that loop forced; their
peers run in mixed precision too: Flax NNX with ``dtype=bfloat16``, PyTorch under
``torch.autocast(dtype=torch.bfloat16)``); ``two_pass`` / ``one_loop`` (a bidirectional layer's
directions one after the other, or in one vmapped loop); ``loops`` (``plain`` and every loop
this machine runs, each forced). Every row names the loop the layer ran (for ``plain``, the one
``loop="auto"`` chose: measured, unless ``GATENETS_LOOP_TUNING=0``), and the header the CPU
model, the BLAS and the core kernel OpenBLAS picked, or the GPU. On a GPU, PyTorch runs on CUDA
(cuDNN) and its thread count does not matter.

Example:
  gatenets bench --quick
  gatenets bench --models lstm --sizes 64,128,64,256 --modes forward --repeats 9
  gatenets bench --layers 2 --bidirectional --modes train --json bench.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gatenets
from gatenets import loop as loop_table

SIZES = "64,128,64,256;32,256,128,512;16,512,32,128;128,64,256,1024;1,1024,32,256"
QUICK_SIZES = "16,64,32,128"
VARIANTS = (
    "plain",
    "gates",
    "mask",
    "scan",
    "fused",
    "native",
    "cudnn",
    "before",
    "fused_before",
    "remat",
    "bf16",
    "bf16_scan",
    "bf16_fused",
    "two_pass",
    "one_loop",
    "loops",
)
LEARNING_RATE = 1e-3


class BenchModel(NamedTuple):
    """What one benchmarked model is in each library."""

    layer: Callable[..., nnx.Module]  # the gatenets stack
    gate: str  # the gate the "gates" variant's penalty reads
    blocks: int  # gate blocks of the fused kernel (matmul FLOPs)
    flax_cell: Callable[..., nnx.Module]
    flax_carry: Callable[[Any], Any]  # Flax's zero carry from one zero array
    torch_layer: str  # the torch.nn class name


MODELS = {
    "lstm": BenchModel(gatenets.LSTM, "forget", 4, nnx.OptimizedLSTMCell, lambda z: (z, z), "LSTM"),
    "gru": BenchModel(gatenets.GRU, "update", 3, nnx.GRUCell, lambda z: z, "GRU"),
}


class Point(NamedTuple):
    """One benchmark point: what is run, at which size."""

    model: str
    batch: int
    time: int
    features: int
    hidden: int
    mode: str
    layers: int = 1
    bidirectional: bool = False
    unroll: int = 1  # gatenets' steps per loop iteration (the peers have no such setting)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def layer_inputs(self) -> list[int]:
        """Input size of each layer (later layers read both directions' outputs)."""
        return [self.features] + [self.hidden * self.directions] * (self.layers - 1)

    def flops(self) -> float:
        """Matmul FLOPs of the whole pass (train: forward plus twice that for the backward)."""
        blocks = MODELS[self.model].blocks
        forward = (
            sum(
                2.0 * self.batch * self.time * (n_in + self.hidden) * blocks * self.hidden
                for n_in in self.layer_inputs()
            )
            * self.directions
        )
        return forward * (3 if self.mode == "train" else 1)


# ------------------------------------------------------------------------------------------
# Runners: a callable that does one unit of work, plus what its compile reported.


class Runner(NamedTuple):
    """A timed function, its compile time, its temporary memory and the loops it runs."""

    run: Callable[[], None]
    compile_s: float
    temp_bytes: int | None
    chosen: list[str] = []


def _compiled(fn, *args) -> tuple[Any, float, int | None]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    return compiled, compile_s, temp


def jax_runner(module: nnx.Module, call: Callable, mode: str, data: dict) -> Runner:
    """Compiles the forward or train step of an NNX module as one pure jitted function."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    x, target, lengths = data["x"], data["target"], data["lengths"]
    if mode == "forward":

        def forward(params, x, lengths):
            return call(nnx.merge(graphdef, params, rest), x, lengths)[0]

        compiled, compile_s, temp = _compiled(forward, params, x, lengths)
        return Runner(lambda: jax.block_until_ready(compiled(params, x, lengths)), compile_s, temp)
    tx = optax.adam(LEARNING_RATE)

    def loss_fn(params, x, target, lengths):
        y, penalty = call(nnx.merge(graphdef, params, rest), x, lengths)
        return jnp.mean((y - target) ** 2) + (0.0 if penalty is None else 1e-3 * penalty)

    def train_step(params, opt_state, x, target, lengths):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, target, lengths)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, tx.init(params)]
    compiled, compile_s, temp = _compiled(train_step, *state, x, target, lengths)

    def run():
        state[0], state[1], loss = compiled(*state, x, target, lengths)
        loss.block_until_ready()

    return Runner(run, compile_s, temp)


def peer_variant(variant: str) -> str:
    """What the peers run beside a gatenets variant: ``mask`` (the same padding), ``bf16``
    (their own mixed precision) or ``plain``."""
    if variant == "mask":
        return "mask"
    return "bf16" if variant.startswith("bf16") else "plain"


def gatenets_module(point: Point, variant: str) -> nnx.Module:
    layer = MODELS[point.model].layer
    kwargs: dict[str, Any] = {
        "num_layers": point.layers,
        "bidirectional": point.bidirectional,
        "unroll": point.unroll,
    }
    loop = variant.removeprefix("bf16_").removesuffix("_before")
    if loop in ("scan", "fused", "native", "cudnn"):
        kwargs["loop"] = loop
    if variant == "remat":
        kwargs["remat"] = True
    if variant in ("before", "fused_before"):
        kwargs["precompute_inputs"] = True
    if variant.startswith("bf16"):
        kwargs["dtype"] = jnp.bfloat16
    module = layer(point.features, point.hidden, rngs=nnx.Rngs(0), **kwargs)
    if variant in ("two_pass", "one_loop"):
        for stacked in module.layers:
            stacked.one_loop = variant == "one_loop"
    return module


def gatenets_call(point: Point, variant: str) -> Callable:
    gate = MODELS[point.model].gate

    def call(module, x, lengths):
        seq_lengths = lengths if variant == "mask" else None
        if variant == "gates":
            y, trace = module(x, seq_lengths=seq_lengths, return_gates=True)
            penalty = sum(jnp.mean(getattr(g, gate)) for g in trace.gates.values())
            return y.astype(jnp.float32), penalty
        y = module(x.astype(module.cell.kernel.dtype), seq_lengths=seq_lengths)
        return y.astype(jnp.float32), None

    return call


def flax_module(point: Point, variant: str = "plain") -> nnx.Module:
    """Flax NNX's own layers: ``OptimizedLSTMCell`` / ``GRUCell`` in ``nnx.RNN``, stacked and
    wrapped in ``nnx.Bidirectional`` by hand (Flax has no stacked layer); for ``bf16``
    computing in bfloat16 with float32 parameters (Flax's ``dtype``)."""
    cell_type = MODELS[point.model].flax_cell
    if variant == "bf16":
        cell_type = functools.partial(cell_type, dtype=jnp.bfloat16)
    rngs = nnx.Rngs(0)
    layers = []
    for n_in in point.layer_inputs():
        if point.bidirectional:
            layers.append(
                nnx.Bidirectional(
                    nnx.RNN(cell_type(n_in, point.hidden, rngs=rngs)),
                    nnx.RNN(cell_type(n_in, point.hidden, rngs=rngs)),
                )
            )
        else:
            layers.append(nnx.RNN(cell_type(n_in, point.hidden, rngs=rngs)))
    return nnx.List(layers)


def flax_call(point: Point, variant: str) -> Callable:
    def call(layers, x, lengths):
        seq_lengths = lengths if variant == "mask" else None
        # Zero carries passed in: Flax would otherwise draw them from an RNG stream inside
        # the traced function, which NNX refuses once the module is split and merged.
        zeros = jnp.zeros((x.shape[0], point.hidden), x.dtype)
        carry = MODELS[point.model].flax_carry(zeros)
        for layer in layers:
            if point.bidirectional:
                x = layer(x, initial_carry=(carry, carry), seq_lengths=seq_lengths)
            else:
                x = layer(x, initial_carry=carry, seq_lengths=seq_lengths)
        return x.astype(jnp.float32), None

    return call


def torch_runner(point: Point, variant: str, data: dict, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # Beside a JAX GPU run, PyTorch runs on its GPU too (cuDNN), and waits for it.
    cuda = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cls = getattr(torch.nn, MODELS[point.model].torch_layer)
    layer = cls(
        point.features,
        point.hidden,
        num_layers=point.layers,
        bidirectional=point.bidirectional,
        batch_first=True,
    ).to(device)
    x = torch.from_numpy(data["x_np"]).to(device)
    target = torch.from_numpy(data["target_np"]).to(device)
    # pack_padded_sequence takes its lengths on the CPU.
    lengths = torch.from_numpy(data["lengths_np"].astype(np.int64))

    def forward():
        if variant == "bf16":
            # PyTorch's mixed precision: bf16 matmuls (cuDNN's bf16 RNN on a GPU), float32
            # parameters and loss.
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                return layer(x)[0].float()
        if variant != "mask":
            return layer(x)[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(
            layer(packed)[0], batch_first=True, total_length=x.shape[1]
        )
        return y

    if point.mode == "forward":

        def run():
            # The thread count is process-wide and runners interleave: set it every call.
            torch.set_num_threads(threads)
            with torch.inference_mode():
                forward()
            sync()

    else:
        optimizer = torch.optim.Adam(layer.parameters(), lr=LEARNING_RATE)

        def run():
            torch.set_num_threads(threads)
            optimizer.zero_grad(set_to_none=True)
            torch.mean((forward() - target) ** 2).backward()
            optimizer.step()
            sync()

    return Runner(run, 0.0, None)


def matmul_runner(point: Point, data: dict) -> Runner:
    """The layer's matmuls alone, at the step's shape, in a ``lax.scan``: the floor a
    recurrent loop on this backend can reach. Each step feeds part of its result back, as the
    recurrence does, so nothing can be hoisted out of the loop."""
    blocks, hidden = MODELS[point.model].blocks, point.hidden
    key = jax.random.key(0)
    weights = [
        (
            jax.random.normal(key, (n_in, blocks * hidden), jnp.float32) * 0.01,
            jax.random.normal(key, (hidden, blocks * hidden), jnp.float32) * 0.01,
        )
        for n_in in point.layer_inputs()
        for _ in range(point.directions)
    ]
    xs = jnp.swapaxes(data["x"], 0, 1)

    def matmuls(weights, xs):
        out = []
        for k, (w, u) in enumerate(weights):
            inputs = xs if k < point.directions else jnp.tile(out[-1], (1, 1, point.directions))

            def body(h, x_t, w=w, u=u):
                z = jnp.dot(x_t, w) + jnp.dot(h, u)
                return z[:, :hidden], z[:, :hidden]

            out.append(jax.lax.scan(body, jnp.zeros((point.batch, hidden)), inputs)[1])
        return out[-1]

    compiled, compile_s, temp = _compiled(matmuls, weights, xs)
    return Runner(lambda: compiled(weights, xs).block_until_ready(), compile_s, temp)


# ------------------------------------------------------------------------------------------
# One point: every runner, interleaved.


def make_data(point: Point) -> dict:
    rng = np.random.default_rng(0)
    out = point.hidden * point.directions
    x_np = rng.standard_normal((point.batch, point.time, point.features), dtype=np.float32)
    target_np = rng.standard_normal((point.batch, point.time, out), dtype=np.float32)
    lengths_np = rng.integers(point.time // 2, point.time + 1, size=point.batch).astype(np.int32)
    lengths_np[0] = point.time
    return {
        "x_np": x_np,
        "target_np": target_np,
        "lengths_np": lengths_np,
        "x": jnp.asarray(x_np),
        "target": jnp.asarray(target_np),
        "lengths": jnp.asarray(lengths_np),
    }


def make_runners(point: Point, variants: Sequence[str], args: argparse.Namespace) -> dict:
    data = make_data(point)
    runners = {"matmul": matmul_runner(point, data)}
    for variant in variants:
        with loop_table.recorded_loops() as chosen:
            runners[f"gatenets/{variant}"] = jax_runner(
                gatenets_module(point, variant), gatenets_call(point, variant), point.mode, data
            )
        runner = runners[f"gatenets/{variant}"]
        runners[f"gatenets/{variant}"] = runner._replace(
            chosen=sorted({str(loop) for _, loop in chosen})
        )
    for variant in sorted({peer_variant(v) for v in variants}):
        runners[f"flax/{variant}"] = jax_runner(
            flax_module(point, variant), flax_call(point, variant), point.mode, data
        )
        for threads in args.torch_threads if torch_available() else ():
            runners[f"torch{threads}/{variant}"] = torch_runner(point, variant, data, threads)
    return runners


def time_interleaved(runners: dict[str, Runner], repeats: int, warmup: int) -> dict:
    """``{name: [ms, …]}``: each round times every runner once, in the same order."""
    for runner in runners.values():
        for _ in range(warmup):
            runner.run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def summarise(point: Point, variants, runners: dict, times: dict) -> list[dict]:
    """One result row per gatenets variant, with its peers and ratios."""
    median = {name: statistics.median(t) for name, t in times.items()}
    bound_ms = median["matmul"] * (3 if point.mode == "train" else 1)
    rows = []
    for variant in variants:
        ours = median[f"gatenets/{variant}"]
        peers = {
            name.split("/")[0]: ms
            for name, ms in median.items()
            if name.endswith(f"/{peer_variant(variant)}") and not name.startswith("gatenets/")
        }
        fastest = min(peers, key=peers.get)
        runner = runners[f"gatenets/{variant}"]
        rows.append(
            {
                **point._asdict(),
                "variant": variant,
                "loop": "+".join(runner.chosen),
                "gatenets_ms": ours,
                "times_ms": times[f"gatenets/{variant}"],
                "peers_ms": peers,
                "peers_run": peer_variant(variant),
                "fastest_peer": fastest,
                "x_fastest_peer": peers[fastest] / ours,
                "x_flax": peers["flax"] / ours,
                "matmul_bound_ms": bound_ms,
                "bound_share": bound_ms / ours,
                "gflops": point.flops() / ours / 1e6,
                "compile_s": runner.compile_s,
                "temp_bytes": runner.temp_bytes,
            }
        )
    return rows


def run_point(point: Point, variants: Sequence[str], args: argparse.Namespace) -> list[dict]:
    runners = make_runners(point, variants, args)
    return summarise(point, variants, runners, time_interleaved(runners, args.repeats, args.warmup))


# ------------------------------------------------------------------------------------------
# Environment, output, command line.


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def load_warning(load: float, cores: int) -> str | None:
    """A loud warning when the 1-minute load average exceeds half the cores, else None."""
    if load <= cores / 2:
        return None
    return (
        f"WARNING: load average {load:.2f} exceeds half of the {cores} cores: other work is "
        "running and these timings are not to be trusted. Stop it and measure again."
    )


def blas_description() -> str:
    """The native kernels' BLAS and, for OpenBLAS, the core kernel it picked on this CPU."""
    from gatenets.kernels import native

    if jax.default_backend() != "cpu" or not native.available():
        return "native kernels unavailable"
    name = native.blas()
    if name != "openblas":
        return name
    try:
        import ctypes

        import scipy_openblas32

        library = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so"))
        library.scipy_openblas_get_corename.restype = ctypes.c_char_p
        return f"openblas ({library.scipy_openblas_get_corename().decode()} core)"
    except (ImportError, OSError, AttributeError):
        return "openblas"


def environment(args: argparse.Namespace) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("jax", "jaxlib", "flax", "optax", "torch"):
        spec = importlib.util.find_spec(name)
        versions[name] = __import__(name).__version__ if spec is not None else None
    versions["gatenets"] = gatenets.__version__
    return {
        "cpu": cpu,
        "device": loop_table.device_name(),
        "blas": blas_description(),
        "cores": os.cpu_count(),
        "torch_threads": args.torch_threads if torch_available() else [],
        "jax_backend": jax.default_backend(),
        "load_average_before": os.getloadavg(),
        "versions": versions,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def format_row(row: dict) -> str:
    size = f"{row['batch']},{row['time']},{row['features']},{row['hidden']}"
    stack = f"{row['layers']}{'bi' if row['bidirectional'] else ''}"
    peers = " ".join(f"{name} {ms:7.1f}" for name, ms in row["peers_ms"].items())
    return (
        f"{row['model']:4s} {row['mode']:7s} {row['variant']:10s} {row.get('loop', ''):>7s} "
        f"{stack:3s} {size:>16s} | "
        f"{row['gatenets_ms']:8.1f} ms | {peers} | x{row['x_fastest_peer']:.2f} "
        f"{row['fastest_peer']:6s} x{row['x_flax']:.2f} flax | bound {row['matmul_bound_ms']:.1f}"
        f" ms, share {row['bound_share']:.2f}"
    )


def markdown_table(rows: list[dict]) -> str:
    """The README's table: one row per point; ratios ``peer_ms / gatenets_ms``."""
    peers = sorted({p for row in rows for p in row["peers_ms"]})
    head = ["model", "mode", "layers", "B, T, I, H", "gatenets ms"] + [f"{p} ms" for p in peers]
    head += ["× fastest peer", "× Flax", "share of matmul bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["model"],
            row["mode"] + ("" if row["variant"] == "plain" else f" ({row['variant']})"),
        ]
        cells.append(f"{row['layers']}{' bi' if row['bidirectional'] else ''}")
        cells.append(f"{row['batch']}, {row['time']}, {row['features']}, {row['hidden']}")
        cells.append(f"{row['gatenets_ms']:.1f}")
        cells += [f"{row['peers_ms'][p]:.1f}" if p in row["peers_ms"] else "-" for p in peers]
        cells.append(f"{row['x_fastest_peer']:.2f} ({row['fastest_peer']})")
        cells += [f"{row['x_flax']:.2f}", f"{row['bound_share']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_sizes(text: str) -> list[tuple[int, int, int, int]]:
    sizes = []
    for part in text.split(";"):
        try:
            values = tuple(int(v) for v in part.split(","))
        except ValueError:
            values = ()
        if len(values) != 4 or min(values) <= 0:
            raise ValueError(f"--sizes: each point is B,T,I,H of positive ints; got {part!r}.")
        sizes.append(values)
    return sizes


def expand_loops(variants: list[str]) -> list[str]:
    """``loops`` as ``plain`` and every loop this machine runs for LSTM and GRU stacks."""
    if "loops" not in variants:
        return variants
    runnable = [
        str(loop)
        for loop in loop_table.static_order()
        if loop in (*loop_table.family_loops("lstm"), *loop_table.family_loops("gru"))
        and loop_table.loop_table()[loop].available() is None
    ]
    expanded = [v for v in variants if v != "loops"]
    for variant in ["plain", *sorted(runnable, key=VARIANTS.index)]:
        if variant not in expanded:
            expanded.append(variant)
    return expanded


def _choices(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    values = text.split(",")
    for value in values:
        if value not in allowed:
            raise ValueError(f"{flag}: unknown {value!r}; expected some of {tuple(allowed)}.")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="lstm,gru", help="comma-separated: lstm, gru")
    parser.add_argument("--sizes", default=SIZES, help="B,T,I,H points joined by ';'")
    parser.add_argument("--modes", default="train,forward", help="train, forward")
    parser.add_argument("--variants", default="plain", help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    parser.add_argument("--bidirectional", action="store_true", help="both directions")
    parser.add_argument("--unroll", type=int, default=1, help="gatenets' steps per iteration")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per runner")
    parser.add_argument("--torch-threads", default="1,2", help="PyTorch thread counts")
    parser.add_argument("--quick", action="store_true", help="one small point, 3 rounds")
    parser.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    parser.add_argument("--markdown", metavar="JSON", help="print the table of a JSON and exit")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time LSTM/GRU against Flax and PyTorch",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except ValueError as err:
        print(f"gatenets bench: {err}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown_table(json.load(f)["rows"]))
        return 0
    models = _choices(args.models, tuple(MODELS), "--models")
    modes = _choices(args.modes, ("train", "forward"), "--modes")
    variants = expand_loops(_choices(args.variants, VARIANTS, "--variants"))
    if args.layers < 1 or args.repeats < 1 or args.unroll < 1 or args.warmup < 0:
        raise ValueError("--layers, --repeats and --unroll must be >= 1 and --warmup >= 0.")
    args.torch_threads = [int(t) for t in args.torch_threads.split(",") if t]
    if args.quick:
        args.sizes, args.repeats, args.warmup = QUICK_SIZES, 3, 1
    sizes = parse_sizes(args.sizes)
    env = environment(args)
    tuning = "on" if loop_table.loop_tuning_enabled() else "off (static order)"
    warning = load_warning(env["load_average_before"][0], env["cores"])
    print(f"# {env['cpu']}, {env['cores']} cores, load average {env['load_average_before']}")
    print(f"# device {env['device']}; BLAS {env['blas']}; loop='auto' measures: {tuning}")
    print(f"# versions {env['versions']}; PyTorch threads {env['torch_threads']}")
    if warning:
        print(f"# {warning}", file=sys.stderr)
    rows = []
    for model in models:
        for batch, time_, features, hidden in sizes:
            for mode in modes:
                point = Point(
                    model,
                    batch,
                    time_,
                    features,
                    hidden,
                    mode,
                    args.layers,
                    args.bidirectional,
                    args.unroll,
                )
                for row in run_point(point, variants, args):
                    rows.append(row)
                    print(format_row(row), flush=True)
                if args.json:
                    write_json(args.json, env, rows)
    env["load_average_after"] = os.getloadavg()
    print(f"# load average after: {env['load_average_after']}")
    if args.json:
        write_json(args.json, env, rows)
        print(f"# wrote {args.json}")
    return 0


def write_json(path: str, env: dict, rows: list) -> None:
    """Written atomically after every point: a sweep cut short keeps what it measured."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatenets bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return main_args(parser.parse_args(argv))
