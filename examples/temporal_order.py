"""Temporal order (Hochreiter & Schmidhuber 1997): did X come before Y in a noisy sequence of
100-110 symbols? A sigmoid head and binary cross-entropy; reports accuracy and calibration.

    python examples/temporal_order.py --steps 600
"""

import argparse

import optax
from flax import nnx

from gatenets.tasks import get_task
from gatenets.train import evaluate, fit

# Settings (each can be overridden on the command line).
MIN_LENGTH = 100
MAX_LENGTH = 110
MODEL = "lstm"
HIDDEN = 32
STEPS = 600
BATCH = 64
LEARNING_RATE = 1e-2
SEED = 0


def main(
    min_length=MIN_LENGTH,
    max_length=MAX_LENGTH,
    model=MODEL,
    hidden=HIDDEN,
    steps=STEPS,
    batch=BATCH,
    learning_rate=LEARNING_RATE,
    seed=SEED,
    progress=True,
):
    """Trains and prints accuracy, Brier score and calibration error; returns test metrics."""
    task = get_task("temporal_order", min_length=min_length, max_length=max_length)
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
        progress=progress,
    )
    test = evaluate(net, task, "test", seed=seed)
    print(
        f"test accuracy {test['accuracy']:.3f} (chance 0.5), Brier {test['brier']:.4f} "
        f"(0.25 for p = 1/2), calibration error {test['ece']:.4f}"
    )
    return test


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-length", type=int, default=MIN_LENGTH)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=SEED)
    main(**vars(parser.parse_args()))
