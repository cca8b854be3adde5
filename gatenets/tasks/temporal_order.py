"""The temporal-order problem (Hochreiter & Schmidhuber 1997, experiment 6a), binary form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gatenets._layers import check_int
from gatenets._typing import Array
from gatenets.tasks.base import Batch, SequenceModel, Task

# Tokens: four distractors, start and end markers, and the two relevant symbols.
SYMBOLS = ("a", "b", "c", "d", "B", "E", "X", "Y")
START, END, X, Y = 4, 5, 6, 7


def temporal_order_data(
    rng: np.random.Generator, batch_size: int, min_length: int, max_length: int
) -> Batch:
    """A batch of the binary temporal-order problem.

    Each sequence has a length drawn uniformly from ``[min_length, max_length]``, starts with
    ``B`` and ends with ``E``; the rest are distractors ``a``–``d`` except at two positions,
    one in ``[0.1, 0.2]`` and one in ``[0.5, 0.6]`` of ``min_length``, which hold ``X`` and
    ``Y`` in either order. The target is 1 for the order ``X … Y`` and 0 for ``Y … X``.
    Sequences are right-padded to ``max_length``.

    Returns:
      ``Batch(inputs [batch, max_length] int32, targets [batch] float32 in {0, 1},
      mask [batch, max_length] bool)``.
    """
    lengths = rng.integers(min_length, max_length + 1, batch_size)
    tokens = rng.integers(0, 4, (batch_size, max_length)).astype(np.int32)
    rows = np.arange(batch_size)
    first = rng.integers(round(0.1 * min_length), round(0.2 * min_length) + 1, batch_size)
    second = rng.integers(round(0.5 * min_length), round(0.6 * min_length) + 1, batch_size)
    x_first = rng.integers(0, 2, batch_size)
    tokens[:, 0] = START
    tokens[rows, lengths - 1] = END
    tokens[rows, first] = np.where(x_first == 1, X, Y)
    tokens[rows, second] = np.where(x_first == 1, Y, X)
    mask = np.arange(max_length)[None, :] < lengths[:, None]
    tokens = np.where(mask, tokens, 0).astype(np.int32)
    return Batch(tokens, x_first.astype(np.float32), mask)


class TemporalOrderTask(Task):
    """Temporal order: tell whether ``X`` came before ``Y`` in a long noisy sequence.

    A binary classifier read through a sigmoid head, :math:`p = \\sigma(w^\\top h_{T'} + b)`,
    trained with binary cross-entropy. Metrics: accuracy, the Brier score
    :math:`\\frac{1}{N}\\sum (p - y)^2` (calibration; 0.25 for a constant 1/2) and the
    expected calibration error over 10 bins. Baseline: chance, accuracy 0.5.

    Options:
      min_length, max_length: range of sequence lengths (100–110 in the paper).

    Example:
      >>> from gatenets.tasks import get_task
      >>> task = get_task("temporal_order", min_length=20, max_length=24)
      >>> batch = next(task.batches("train", 3, seed=0))
      >>> batch.inputs.shape, batch.mask.shape, batch.targets.dtype.name
      ((3, 24), (3, 24), 'float32')
    """

    name = "temporal_order"
    description = "binary: did X come before Y? sigmoid head, BCE (Hochreiter & Schmidhuber 1997)"
    metric = "accuracy"
    baseline_source = "chance (two classes, balanced)"
    higher_is_better = True
    defaults = {
        "steps": 600,
        "batch_size": 64,
        "learning_rate": 1e-2,
        "hidden": 32,
        "eval_every": 200,
        "eval_batch_size": 256,
    }
    option_defaults = {"min_length": 100, "max_length": 110}

    def __init__(self, **options):
        super().__init__(**options)
        low = check_int(self.options["min_length"], "min_length", minimum=10)
        high = check_int(self.options["max_length"], "max_length", minimum=10)
        if high < low:
            raise ValueError(f"max_length must be >= min_length = {low}; got max_length={high}.")

    @property
    def baseline(self) -> float:
        return 0.5

    @property
    def target(self) -> float:
        return 0.99

    def make_model(self, model="lstm", hidden=None, *, rngs: nnx.Rngs, **kwargs):
        """The default model; an LSTM gets chrono initialisation (Tallec & Ollivier 2018) with
        ``T_max = max_length``, so its forget gates start out holding memory that long."""
        if model == "lstm":
            kwargs.setdefault("chrono_init", float(self.options["max_length"]))
        return SequenceModel(
            len(SYMBOLS),
            hidden or self.defaults["hidden"],
            1,
            model=model,
            embed_features=8,
            rngs=rngs,
            **kwargs,
        )

    def make_batch(self, rng, batch_size):
        return temporal_order_data(
            rng, batch_size, self.options["min_length"], self.options["max_length"]
        )

    def loss(self, outputs: Array, batch: Batch) -> Array:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(outputs[:, 0], batch.targets))

    def metrics(self, outputs: Array, batch: Batch) -> dict[str, Array]:
        probability = jax.nn.sigmoid(outputs[:, 0])
        correct = (probability > 0.5) == (batch.targets > 0.5)
        return {
            "accuracy": jnp.mean(correct.astype(jnp.float32)),
            "brier": jnp.mean((probability - batch.targets) ** 2),
            "ece": expected_calibration_error(probability, batch.targets),
            "bce": self.loss(outputs, batch),
        }


def expected_calibration_error(probability: Array, targets: Array, bins: int = 10) -> Array:
    """Expected calibration error of binary predictions over ``bins`` equal-width bins.

    .. math::
        \\mathrm{ECE} = \\sum_b \\frac{n_b}{N} \\left| \\bar{y}_b - \\bar{p}_b \\right|

    Example:
      >>> import jax.numpy as jnp
      >>> from gatenets.tasks.temporal_order import expected_calibration_error
      >>> p = jnp.array([0.9, 0.9, 0.1, 0.1]); y = jnp.array([1.0, 0.0, 0.0, 0.0])
      >>> round(float(expected_calibration_error(p, y)), 3)
      0.25
    """
    index = jnp.clip((probability * bins).astype(jnp.int32), 0, bins - 1)
    one_hot = jax.nn.one_hot(index, bins, dtype=jnp.float32)
    # n_b |mean(y_b) - mean(p_b)| is |sum(y_b) - sum(p_b)|, so no bin count is divided by.
    gap = jnp.abs(one_hot.T @ targets - one_hot.T @ probability)
    return jnp.sum(gap) / probability.shape[0]
