"""minGRU, minLSTM and RG-LRU learn the adding problem, trained with the parallel scan.

Each sequence holds random values in [0, 1] and two markers; the target is the sum of the two
marked values. Predicting the mean (1.0) gives MSE 1/6 ≈ 0.167. Every model is the adding
task's own model built on one cell family (``task.make_model(family, …)``: a stack run with
``loop="auto"``, which picks the parallel scan for these cells, and a linear head on the last
step), trained by ``gatenets.train.fit`` with Adam; the script prints the test MSE of each
against that baseline. Any name of ``gatenets.tasks.list_models()`` works in ``--models``
(``lstm``, ``gru``, ``attention``, …; case does not matter).

    python examples/min_rnn_adding.py --steps 600 --length 100
    python examples/min_rnn_adding.py --models gru,attention
"""

import argparse

import optax
from flax import nnx

from gatenets.tasks import get_task, list_models
from gatenets.train import evaluate, fit

# Settings (each can be overridden on the command line).
STEPS = 600
LENGTH = 100
BATCH = 64
HIDDEN = 32
LAYERS = 2
LEARNING_RATE = 3e-3
SEED = 0
MODELS = "mingru,minlstm,rglru"
BASELINE = 1.0 / 6.0


def model_name(name: str) -> str:
    """The registered model name of ``name``, whatever its case (``"MinGRU"`` -> ``"mingru"``)."""
    models = {model.lower(): model for model in list_models()}
    if name.lower() not in models:
        raise ValueError(f"--models: unknown model {name!r}; the models are {list(models)}.")
    return models[name.lower()]


def train(name, *, steps, length, batch, hidden, layers, learning_rate, seed, progress):
    """Trains one model; returns (test MSE before training, test MSE after, steps/s)."""
    task = get_task("adding", length=length)
    model = task.make_model(model_name(name), hidden, num_layers=layers, rngs=nnx.Rngs(seed))
    untrained = evaluate(model, task, "test", seed=seed)["mse"]
    result = fit(
        model,
        optax.adam(learning_rate),
        task,
        steps=steps,
        batch_size=batch,
        seed=seed,
        eval_every=0,
        progress=progress,
    )
    return untrained, evaluate(model, task, "test", seed=seed)["mse"], result.steps_per_second


def main(
    steps=STEPS,
    length=LENGTH,
    batch=BATCH,
    hidden=HIDDEN,
    layers=LAYERS,
    learning_rate=LEARNING_RATE,
    seed=SEED,
    models=MODELS,
    progress=True,
):
    """Trains every model in ``models``; returns ``{name: (untrained test MSE, test MSE)}``."""
    results = {}
    for name in models.split(","):
        untrained, test_mse, steps_per_second = train(
            name,
            steps=steps,
            length=length,
            batch=batch,
            hidden=hidden,
            layers=layers,
            learning_rate=learning_rate,
            seed=seed,
            progress=progress,
        )
        results[name] = (untrained, test_mse)
        print(
            f"{name}: test MSE {test_mse:.4f} after {steps} steps, T={length} (untrained "
            f"{untrained:.3f}, baseline {BASELINE:.3f}; {steps_per_second:.1f} steps/s)"
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
    parser.add_argument("--models", default=MODELS, help="comma-separated model names")
    main(**{k.replace("-", "_"): v for k, v in vars(parser.parse_args()).items()})
