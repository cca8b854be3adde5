"""The adding problem at T=100: an LSTM regresses the sum of two marked values.

Predicting the mean gives MSE 1/6 ≈ 0.167 (the baseline); the target is MSE < 0.01.

    python examples/adding.py --steps 1000 --length 100
"""

import argparse

import optax
from flax import nnx

from gatenets.tasks import get_task
from gatenets.train import evaluate, fit, gate_means

# Settings (each can be overridden on the command line).
LENGTH = 100
MODEL = "lstm"
HIDDEN = 64
STEPS = 1000
BATCH = 64
LEARNING_RATE = 1e-2
SEED = 0


def main(
    length=LENGTH,
    model=MODEL,
    hidden=HIDDEN,
    steps=STEPS,
    batch=BATCH,
    learning_rate=LEARNING_RATE,
    seed=SEED,
    progress=True,
):
    """Trains and prints the test MSE and the mean gates; returns the test metrics."""
    task = get_task("adding", length=length)
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
    print(f"test MSE {test['mse']:.4f} (baseline {task.baseline:.3f}, target {task.target})")
    for name, mean in gate_means(net, next(task.batches("test", 64, seed=seed))).items():
        print(f"  mean {name:24s} {mean:.3f}")
    return test


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=LENGTH)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=SEED)
    main(**vars(parser.parse_args()))
