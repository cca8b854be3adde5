"""The adding problem (Hochreiter & Schmidhuber 1997; in the form of Arjovsky et al. 2016)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._layers import check_int
from gatenets._typing import Array
from gatenets.tasks.base import Batch, SequenceModel, Task


def adding_data(rng: np.random.Generator, batch_size: int, length: int) -> Batch:
    """A batch of the adding problem.

    Each step holds a value drawn from U[0, 1] and a marker; exactly one marker is set in the
    first half of the sequence and one in the second. The target is the sum of the two marked
    values, so predicting its mean, 1, gives MSE :math:`2 \\cdot \\mathrm{Var}(U) = 1/6`.

    Returns:
      ``Batch(inputs [batch, length, 2] float32 (value, marker), targets [batch] float32,
      mask None)``.
    """
    values = rng.uniform(0.0, 1.0, (batch_size, length))
    first = rng.integers(0, length // 2, batch_size)
    second = rng.integers(length // 2, length, batch_size)
    markers = np.zeros((batch_size, length))
    rows = np.arange(batch_size)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    inputs = np.stack([values, markers], axis=-1).astype(np.float32)
    targets = (values[rows, first] + values[rows, second]).astype(np.float32)
    return Batch(inputs, targets, None)


class AddingTask(Task):
    """Adding problem: regress the sum of the two marked values of a length-``length`` sequence.

    Loss and metric: mean squared error. Baseline: 1/6 ≈ 0.167, the MSE of always predicting
    the mean sum 1 (Arjovsky et al. 2016). Target: MSE < 0.01.

    Options:
      length: steps per sequence (T), at least 2.

    Example:
      >>> from gatenets.tasks import get_task
      >>> task = get_task("adding", length=10)
      >>> batch = next(task.batches("train", 4, seed=0))
      >>> batch.inputs.shape, batch.targets.shape, round(task.baseline, 3)
      ((4, 10, 2), (4,), 0.167)
    """

    name = "adding"
    description = "sum of the two marked values in a sequence of U[0,1] values (regression)"
    metric = "mse"
    baseline_source = "predict the mean: 1/6 (Arjovsky et al. 2016)"
    higher_is_better = False
    defaults = {
        "steps": 1000,
        "batch_size": 64,
        "learning_rate": 1e-2,
        "hidden": 64,
        "eval_every": 250,
        "eval_batch_size": 256,
    }
    option_defaults = {"length": 100}

    def __init__(self, **options):
        super().__init__(**options)
        check_int(self.options["length"], "length", minimum=2)

    @property
    def baseline(self) -> float:
        return 1.0 / 6.0

    @property
    def target(self) -> float:
        return 0.01

    def make_model(self, model="lstm", hidden=None, *, rngs: nnx.Rngs, **kwargs):
        return SequenceModel(
            2, hidden or self.defaults["hidden"], 1, model=model, rngs=rngs, **kwargs
        )

    def make_batch(self, rng, batch_size):
        return adding_data(rng, batch_size, self.options["length"])

    def loss(self, outputs: Array, batch: Batch) -> Array:
        return jnp.mean((outputs[:, 0] - batch.targets) ** 2)

    def metrics(self, outputs: Array, batch: Batch) -> dict[str, Array]:
        return {"mse": self.loss(outputs, batch)}
