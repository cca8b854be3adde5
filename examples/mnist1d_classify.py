"""MNIST-1D: a GRU classifies 40-step digit signals generated on this machine.

The data come from ``mnist1d.data.make_dataset`` (offline); the published GRU reaches 91% test
accuracy.

    python examples/mnist1d_classify.py --steps 1000
"""

import argparse

import optax
from flax import nnx

from gatenets.tasks import get_task
from gatenets.train import evaluate, fit

# Settings (each can be overridden on the command line).
MODEL = "gru"
HIDDEN = 128
STEPS = 1000
BATCH = 128
LEARNING_RATE = 5e-3
SEED = 0
NUM_SAMPLES = 5000  # the published dataset


def main(
    model=MODEL,
    hidden=HIDDEN,
    steps=STEPS,
    batch=BATCH,
    learning_rate=LEARNING_RATE,
    seed=SEED,
    num_samples=NUM_SAMPLES,
    progress=True,
):
    """Trains and prints the test accuracy against the published GRU; returns test metrics."""
    task = get_task("mnist1d", num_samples=num_samples)
    net = task.make_model(model, hidden, rngs=nnx.Rngs(seed))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))
    fit(
        net,
        tx,
        task,
        steps=steps,
        batch_size=batch,
        seed=seed,
        eval_every=max(1, steps // 4),
        eval_batch_size=500,
        progress=progress,
    )
    test = evaluate(net, task, "test", batch_size=500)
    print(f"test accuracy {test['accuracy']:.3f} (published GRU {task.baseline:.2f})")
    return test


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--num-samples", type=int, default=NUM_SAMPLES)
    main(**vars(parser.parse_args()))
