"""Does a sigmoid gate on the attention output remove the attention sink?

Qiu et al. (2025, "Gated Attention for Large Language Models") report that a query-dependent
sigmoid gate after scaled dot-product attention, Y' = Y * sigmoid(X W_g), makes the gate sparse
(mean about 0.1-0.2) and removes the "attention sink": the large share of attention that
softmax heads otherwise pour onto the first token when they have nothing useful to attend to.

This script trains two small causal character-level transformers on Python source code read
from this machine's standard library (nothing is downloaded), identical except for the gate:
``GatedAttention(gate=None)`` and ``GatedAttention(gate="elementwise")``. It then reports, on
held-out text, the loss, the share of attention each query puts on the first token of its
window, and the mean gate value.

    python examples/attention_sink.py                 # defaults below, a few minutes on 2 CPUs
    python examples/attention_sink.py --steps 300     # quicker, noisier
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gatenets import GatedAttention
from gatenets.gates import merge_traces

# ----------------------------------------------------------------------------- settings
steps = 1500  # optimiser steps per model
batch_size = 32
seq_len = 64  # characters per training window; the "first token" is the window's first
d_model = 64
num_heads = 4
num_layers = 2
learning_rate = 3e-3
warmup_steps = 100
eval_batches = 8  # held-out batches for the final measurements
log_every = 100
data_chars = 2_000_000  # characters of standard-library source to read
gates = "none,elementwise"  # which models to train, comma separated (none/elementwise/headwise)
seed = 0
# -----------------------------------------------------------------------------------------

VOCAB = 128  # ASCII; other characters map to 0


@dataclasses.dataclass(frozen=True)
class Config:
    steps: int = steps
    batch_size: int = batch_size
    seq_len: int = seq_len
    d_model: int = d_model
    num_heads: int = num_heads
    num_layers: int = num_layers
    learning_rate: float = learning_rate
    warmup_steps: int = warmup_steps
    eval_batches: int = eval_batches
    log_every: int = log_every
    data_chars: int = data_chars
    gates: str = gates
    seed: int = seed


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(Config):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=type(field.default),
            default=field.default,
            help=f"default {field.default}",
        )
    return Config(**vars(parser.parse_args(argv)))


def load_text(max_chars: int) -> np.ndarray:
    """Python source of the standard library as ASCII codes, in a fixed file order."""
    stdlib = pathlib.Path(os.__file__).parent
    chunks, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks.append(text)
        total += len(text)
        if total >= max_chars:
            break
    codes = np.frombuffer("".join(chunks)[:max_chars].encode("utf-32-le"), np.uint32)
    return np.where(codes < VOCAB, codes, 0).astype(np.int32)


def batches(data: np.ndarray, cfg: Config, rng: np.random.Generator):
    """Random windows: inputs and the next characters."""
    while True:
        start = rng.integers(0, len(data) - cfg.seq_len - 1, cfg.batch_size)
        index = start[:, None] + np.arange(cfg.seq_len + 1)[None, :]
        window = data[index]
        yield jnp.asarray(window[:, :-1]), jnp.asarray(window[:, 1:])


class Block(nnx.Module):
    """Pre-norm transformer block: attention then a GELU MLP, each with a residual."""

    def __init__(self, cfg: Config, gate: str | None, rngs: nnx.Rngs):
        self.attention_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attention = GatedAttention(cfg.d_model, cfg.num_heads, gate=gate, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.mlp_in = nnx.Linear(cfg.d_model, 4 * cfg.d_model, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * cfg.d_model, cfg.d_model, rngs=rngs)

    def __call__(self, x, inspect: bool = False):
        attended = self.attention(
            self.attention_norm(x),
            causal=True,
            return_gates=inspect,
            return_attention_weights=inspect,
        )
        if inspect:
            attended, trace, weights = attended
        x = x + attended
        x = x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))
        return (x, trace, weights) if inspect else x


class CharModel(nnx.Module):
    def __init__(self, cfg: Config, gate: str | None, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, cfg.d_model, rngs=rngs)
        self.position = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (cfg.seq_len, cfg.d_model))
        )
        self.blocks = nnx.List([Block(cfg, gate, rngs) for _ in range(cfg.num_layers)])
        self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.unembed = nnx.Linear(cfg.d_model, VOCAB, rngs=rngs)

    def __call__(self, tokens, inspect: bool = False):
        x = self.embed(tokens) + self.position[...][None, : tokens.shape[1]]
        traces, weights = [], []
        for i, block in enumerate(self.blocks):
            if inspect:
                x, trace, w = block(x, inspect=True)
                traces.append(trace.prefixed(f"layer{i}"))
                weights.append(w)
            else:
                x = block(x)
        logits = self.unembed(self.norm(x))
        return (logits, merge_traces(traces), jnp.stack(weights, 1)) if inspect else logits


def loss_fn(model, tokens, targets):
    logits = model(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@nnx.jit
def train_step(model, optimizer, tokens, targets):
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, targets)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def measure(model, tokens, targets):
    """Held-out loss, first-token attention share per layer, and every gate value."""
    logits, trace, weights = model(tokens, inspect=True)  # weights [batch, layer, head, q, k]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    # Query 0 can only attend to token 0, so it says nothing about a sink: skip it.
    first_share = jnp.mean(weights[:, :, :, 1:, 0], axis=(0, 3))  # [layer, head]
    gate_means = {path: jnp.mean(value) for path, value in trace.flat().items()}
    return loss, first_share, gate_means


def train(gate: str | None, cfg: Config, train_data, valid_batches) -> dict:
    label = gate or "none"
    print(f"\n=== GatedAttention(gate={gate!r}) ===", flush=True)
    model = CharModel(cfg, gate, nnx.Rngs(cfg.seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, min(cfg.warmup_steps, max(cfg.steps - 1, 1)), max(cfg.steps, 2)
    )
    optimizer = nnx.Optimizer(
        model, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule)), wrt=nnx.Param
    )
    n_params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"{n_params:,} parameters", flush=True)
    stream = batches(train_data, cfg, np.random.default_rng(cfg.seed))
    start = last = time.perf_counter()
    running = []
    for step in range(1, cfg.steps + 1):
        running.append(train_step(model, optimizer, *next(stream)))
        if step % cfg.log_every == 0 or step == cfg.steps:
            loss = float(np.mean(jax.device_get(running)))
            now = time.perf_counter()
            ms = 1000 * (now - last) / len(running)
            # One held-out batch, to watch the sink and the gate move while training.
            _, share, gate_means = measure(model, *valid_batches[0])
            watch = f"first-token share {float(np.mean(share)):.3f}"
            if gate_means:
                watch += f", mean gate {float(np.mean(list(gate_means.values()))):.3f}"
            print(f"step {step}: loss {loss:.4f} ({ms:.0f} ms/step) | {watch}", flush=True)
            running, last = [], time.perf_counter()
    results = [measure(model, *b) for b in valid_batches]
    loss = float(np.mean([r[0] for r in results]))
    share_per_head = np.mean([np.asarray(r[1]) for r in results], axis=0)
    first_share = share_per_head.mean(axis=1)
    gate_means = {path: float(np.mean([r[2][path] for r in results])) for path in results[0][2]}
    summary = {
        "gate": label,
        "valid_loss": loss,
        "first_token_share": float(np.mean(first_share)),
        "first_token_share_per_layer": [float(s) for s in first_share],
        "first_token_share_max_head": float(share_per_head.max()),
        "mean_gate": float(np.mean(list(gate_means.values()))) if gate_means else None,
        "mean_gate_per_layer": gate_means,
        "seconds": time.perf_counter() - start,
    }
    print(
        f"held-out loss {loss:.4f} | first-token share "
        + ", ".join(f"layer{i} {s:.3f}" for i, s in enumerate(first_share))
        + f" (most sink-like head {share_per_head.max():.3f})"
        + (f" | mean gate {summary['mean_gate']:.3f}" if gate_means else "")
        + f" | {summary['seconds']:.0f} s",
        flush=True,
    )
    return summary


def main(argv: list[str] | None = None) -> dict[str, dict]:
    cfg = parse_args(argv)
    print("settings: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    data = load_text(cfg.data_chars)
    split = int(0.9 * len(data))
    train_data, valid_data = data[:split], data[split:]
    print(f"{len(data):,} characters of standard-library source ({len(train_data):,} train)")
    valid_stream = batches(valid_data, cfg, np.random.default_rng(cfg.seed + 1))
    valid_batches = [next(valid_stream) for _ in range(cfg.eval_batches)]
    kinds = [g.strip() for g in cfg.gates.split(",") if g.strip()]
    for kind in kinds:
        if kind not in ("none", "elementwise", "headwise"):
            raise ValueError(
                f"--gates: unknown kind {kind!r}; expected none, elementwise, headwise."
            )
    summaries = {
        kind: train(None if kind == "none" else kind, cfg, train_data, valid_batches)
        for kind in kinds
    }
    # Uniform causal attention would put 1/(t+1) on the first token at query t.
    uniform = float(np.mean(1.0 / np.arange(2, cfg.seq_len + 1)))
    print(
        f"\n{'gate':<12} {'held-out loss':>13} {'first-token share':>18} {'max head':>9} "
        f"{'mean gate':>10}"
    )
    for kind, s in summaries.items():
        mean_gate = "-" if s["mean_gate"] is None else f"{s['mean_gate']:.3f}"
        print(
            f"{kind:<12} {s['valid_loss']:>13.4f} {s['first_token_share']:>18.3f} "
            f"{s['first_token_share_max_head']:>9.3f} {mean_gate:>10}"
        )
    print(f"(uniform causal attention would give a first-token share of {uniform:.3f})")
    return summaries


if __name__ == "__main__":
    main(sys.argv[1:])
