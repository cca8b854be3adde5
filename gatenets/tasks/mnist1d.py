"""MNIST-1D (Greydanus 2020), generated on the machine with the ``mnist1d`` package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._typing import Array
from gatenets.tasks.base import (
    Batch,
    SequenceModel,
    Task,
    check_int,
    check_split,
    cross_entropy,
    endless_batches,
    in_order,
)

# Generating the 5000 sequences takes a second or more; a process makes each dataset once.
_DATASETS: dict[tuple[int, int], dict[str, np.ndarray]] = {}
VALID_FRACTION = 0.1


def mnist1d_data(data_seed: int = 42, num_samples: int = 5000) -> dict[str, np.ndarray]:
    """The MNIST-1D dataset made offline by ``mnist1d.data.make_dataset``.

    With the defaults this is the standard dataset of the paper (4000 train and 1000 test
    sequences of length 40). The package's ``get_dataset`` would download a pickle; this never
    does.

    Returns:
      ``{"x": [0.8 n, 40], "y": [0.8 n], "x_test": [0.2 n, 40], "y_test": [0.2 n]}``.
    """
    if (data_seed, num_samples) not in _DATASETS:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as err:
            raise ImportError(
                "the mnist1d task needs the mnist1d package: pip install 'gatenets[tasks]'."
            ) from err
        args = get_dataset_args()
        args.seed = data_seed
        args.num_samples = num_samples
        data = make_dataset(args)
        _DATASETS[data_seed, num_samples] = {
            k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")
        }
    return _DATASETS[data_seed, num_samples]


class MNIST1DTask(Task):
    """MNIST-1D: classify 40-step one-dimensional digit signals into 10 classes.

    The 4000 training sequences of the standard dataset are split into 3600 for training and
    the last 400 (10%) for validation; ``"test"`` is the standard 1000-sequence test set. Inputs are
    ``[batch, 40, 1]``. Loss: cross-entropy; metric: accuracy. Baseline: the GRU of the
    MNIST-1D paper, 91% test accuracy (Greydanus & Kobak 2024).

    Options:
      data_seed: seed of ``make_dataset`` (42 gives the published dataset).
      num_samples: sequences in all (5000 in the published dataset; 80% train, 20% test).

    Example:
      >>> from gatenets.tasks import get_task
      >>> task = get_task("mnist1d")
      >>> batch = next(task.batches("test", 8, seed=0))
      >>> batch.inputs.shape, batch.targets.shape, task.baseline
      ((8, 40, 1), (8,), 0.91)
    """

    name = "mnist1d"
    description = "MNIST-1D digit signals, 10 classes (Greydanus 2020)"
    metric = "accuracy"
    baseline_source = "GRU, MNIST-1D paper (Greydanus & Kobak 2024)"
    higher_is_better = True
    defaults = {
        "model": "gru",
        "steps": 1000,
        "batch_size": 128,
        "learning_rate": 5e-3,
        "hidden": 128,
        "eval_every": 500,
        "eval_batch_size": 500,
    }
    option_defaults = {"data_seed": 42, "num_samples": 5000}

    def __init__(self, **options):
        super().__init__(**options)
        check_int(self.options["data_seed"], "data_seed", minimum=0)
        check_int(self.options["num_samples"], "num_samples", minimum=50)

    @property
    def baseline(self) -> float:
        return 0.91

    @property
    def target(self) -> float:
        return 0.91

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs [n, 40, 1] float32, labels [n] int32)`` of a split."""
        check_split(split)
        data = mnist1d_data(self.options["data_seed"], self.options["num_samples"])
        valid = int(VALID_FRACTION * len(data["x"]))
        if split == "test":
            x, y = data["x_test"], data["y_test"]
        elif split == "valid":
            x, y = data["x"][-valid:], data["y"][-valid:]
        else:
            x, y = data["x"][:-valid], data["y"][:-valid]
        return x[..., None].astype(np.float32), y.astype(np.int32)

    def make_model(self, model="lstm", hidden=None, *, rngs: nnx.Rngs, **kwargs):
        return SequenceModel(
            1, hidden or self.defaults["hidden"], 10, model=model, rngs=rngs, **kwargs
        )

    def batches(self, split: str, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Batch]:
        check_split(split)
        check_int(batch_size, "batch_size")
        x, y = self.split_arrays(split)
        if split == "train":
            if batch_size > len(x):
                raise ValueError(
                    f"batch_size must be at most the {len(x)} training sequences; got {batch_size}."
                )

            def draw(rng: np.random.Generator) -> Batch:
                rows = rng.choice(len(x), batch_size, replace=False)
                return Batch(x[rows], y[rows], None)

            yield from endless_batches(seed, start, draw)
            return
        for rows in in_order(len(x), batch_size):
            yield Batch(x[rows], y[rows], None)

    def loss(self, outputs: Array, batch: Batch) -> Array:
        return cross_entropy(outputs, batch.targets)

    def metrics(self, outputs: Array, batch: Batch) -> dict[str, Any]:
        correct = jnp.argmax(outputs, axis=-1) == batch.targets
        return {
            "accuracy": jnp.mean(correct.astype(jnp.float32)),
            "cross_entropy": self.loss(outputs, batch),
        }
