"""minGRU, minLSTM and RG-LRU learn the adding problem, trained with the parallel scan.

Each sequence holds random values in [0, 1] and two markers; the target is the sum of the two
marked values. Predicting the mean (1.0) gives MSE 1/6 ≈ 0.167. Every model is a two-layer
stack of one cell kind (``loop="auto"``) with a linear head on the last step, trained with
Adam; the script prints the test MSE of each against that baseline.

    python examples/min_rnn_adding.py --steps 600 --length 100
"""

import argparse
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gatenets

# Settings (each can be overridden on the command line).
STEPS = 600
LENGTH = 100
BATCH = 64
HIDDEN = 32
LAYERS = 2
LEARNING_RATE = 3e-3
SEED = 0
MODELS = "MinGRU,MinLSTM,RGLRU"
BASELINE = 1.0 / 6.0


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
    def __init__(self, layer_type, hidden: int, layers: int, *, rngs: nnx.Rngs):
        self.rnn = layer_type(2, hidden, num_layers=layers, rngs=rngs)
        self.head = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(self.rnn(x)[:, -1])[:, 0]


@nnx.jit
def train_step(model, optimizer, inputs, targets):
    def loss_fn(model):
        return jnp.mean((model(inputs) - targets) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def evaluate(model, inputs, targets):
    return jnp.mean((model(inputs) - targets) ** 2)


def train(layer_name, *, steps, length, batch, hidden, layers, learning_rate, seed):
    """Trains one model; returns (first loss, test MSE, ms per step)."""
    rng = np.random.default_rng(seed)
    model = Regressor(getattr(gatenets, layer_name), hidden, layers, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)
    first = None
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss = float(train_step(model, optimizer, *adding_batch(rng, batch, length)))
        first = loss if first is None else first
        if step == 1:
            start = time.perf_counter()  # leave the compile out of ms/step
        if step % max(1, steps // 6) == 0 or step == steps:
            ms = (time.perf_counter() - start) * 1e3 / max(1, step - 1)
            print(f"{layer_name} step {step}: loss {loss:.4f} ({ms:.1f} ms/step)")
    ms = (time.perf_counter() - start) * 1e3 / max(1, steps - 1)
    test_mse = float(evaluate(model, *adding_batch(np.random.default_rng(seed + 1), 1000, length)))
    return first, test_mse, ms


def main(
    steps=STEPS,
    length=LENGTH,
    batch=BATCH,
    hidden=HIDDEN,
    layers=LAYERS,
    learning_rate=LEARNING_RATE,
    seed=SEED,
    models=MODELS,
):
    """Trains every model in ``models``; returns ``{name: (first loss, test MSE)}``."""
    results = {}
    for name in models.split(","):
        first, test_mse, ms = train(
            name,
            steps=steps,
            length=length,
            batch=batch,
            hidden=hidden,
            layers=layers,
            learning_rate=learning_rate,
            seed=seed,
        )
        results[name] = (first, test_mse)
        print(
            f"{name}: test MSE {test_mse:.4f} after {steps} steps, T={length} "
            f"(baseline {BASELINE:.3f}; {ms:.1f} ms/step)"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--length", type=int, default=LENGTH)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--models", default=MODELS, help="comma-separated gatenets layer names")
    main(**{k.replace("-", "_"): v for k, v in vars(parser.parse_args()).items()})
