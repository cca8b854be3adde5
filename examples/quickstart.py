"""Quickstart: train a small LSTM on the adding problem and look at its gates.

Each sequence holds random values in [0, 1] and two markers; the target is the sum of the two
marked values. Predicting the mean (1.0) gives MSE 1/6 ≈ 0.167; a working LSTM goes far below.

    python examples/quickstart.py --steps 300 --length 30
"""

import argparse
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gatenets

# Settings (each can be overridden on the command line).
STEPS = 300
LENGTH = 30
BATCH = 64
HIDDEN = 32
LEARNING_RATE = 1e-2
SEED = 0


def adding_batch(rng: np.random.Generator, batch: int, length: int):
    """Inputs [batch, length, 2] (value, marker) and targets [batch]."""
    values = rng.uniform(0.0, 1.0, (batch, length))
    first = rng.integers(0, length // 2, batch)
    second = rng.integers(length // 2, length, batch)
    markers = np.zeros((batch, length))
    markers[np.arange(batch), first] = 1.0
    markers[np.arange(batch), second] = 1.0
    inputs = np.stack([values, markers], axis=-1).astype(np.float32)
    targets = (values * markers).sum(axis=1).astype(np.float32)
    return jnp.asarray(inputs), jnp.asarray(targets)


class Regressor(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.lstm = gatenets.LSTM(2, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x, *, return_gates: bool = False):
        out = self.lstm(x, return_gates=return_gates)
        y, trace = out if return_gates else (out, None)
        prediction = self.head(y[:, -1])[:, 0]
        return (prediction, trace) if return_gates else prediction


@nnx.jit
def train_step(model, optimizer, inputs, targets):
    def loss_fn(model):
        return jnp.mean((model(inputs) - targets) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def main(
    steps=STEPS, length=LENGTH, batch=BATCH, hidden=HIDDEN, learning_rate=LEARNING_RATE, seed=SEED
):
    """Trains, prints progress and a gate summary; returns (first_loss, last_loss, gate_means)."""
    rng = np.random.default_rng(seed)
    model = Regressor(hidden, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)
    print(f"adding problem, T={length}: baseline MSE (predict the mean) = {1 / 6:.3f}")
    losses, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        loss = float(train_step(model, optimizer, *adding_batch(rng, batch, length)))
        losses.append(loss)
        if step % max(1, steps // 10) == 0 or step == 1:
            ms = 1000 * (time.perf_counter() - start) / step
            print(f"step {step:4d}: loss {np.mean(losses[-20:]):.4f} ({ms:.1f} ms/step)")

    inputs, targets = adding_batch(rng, 256, length)
    prediction, trace = model(inputs, return_gates=True)
    print(f"test MSE: {float(jnp.mean((prediction - targets) ** 2)):.4f}")
    print("gate summary (mean, fraction < 0.1, fraction > 0.9):")
    gate_means = {}
    for name, gate in trace.items():
        gate = np.asarray(gate)[np.asarray(trace.mask)]
        gate_means[name] = float(gate.mean())
        print(
            f"  {name:22s} {gate.mean():.3f}  {np.mean(gate < 0.1):.3f}  {np.mean(gate > 0.9):.3f}"
        )
    return losses[0], float(np.mean(losses[-20:])), gate_means


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--length", type=int, default=LENGTH)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    main(args.steps, args.length, args.batch, args.hidden, args.learning_rate, args.seed)
