"""The copying memory problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._layers import check_int
from gatenets._typing import Array
from gatenets.tasks.base import Batch, SequenceModel, Task, cross_entropy

BLANK = 0
DELIMITER = 9
NUM_SYMBOLS = 8
VOCAB_SIZE = 10  # blank, symbols 1..8, delimiter
NUM_CLASSES = 9  # outputs: blank or one of the 8 symbols


def copying_data(
    rng: np.random.Generator, batch_size: int, delay: int, copy_length: int = 10
) -> Batch:
    """A batch of the copying memory problem.

    The input is ``copy_length`` symbols drawn from 1..8, then ``delay - 1`` blanks, a
    delimiter, and ``copy_length`` blanks: ``delay + 2 * copy_length`` steps. The target is
    blank everywhere except the last ``copy_length`` steps, which must repeat the symbols.

    Returns:
      ``Batch(inputs [batch, time] int32 tokens, targets [batch, time] int32, mask None)``.
    """
    time = delay + 2 * copy_length
    symbols = rng.integers(1, NUM_SYMBOLS + 1, (batch_size, copy_length))
    inputs = np.full((batch_size, time), BLANK, np.int32)
    inputs[:, :copy_length] = symbols
    inputs[:, delay + copy_length - 1] = DELIMITER
    targets = np.full((batch_size, time), BLANK, np.int32)
    targets[:, -copy_length:] = symbols
    return Batch(inputs, targets, None)


class CopyingTask(Task):
    """Copying memory: read 10 symbols from an alphabet of 8, wait ``delay`` steps, recall them.

    Loss and metric: cross-entropy in nats per step over all ``delay + 20`` steps. Baseline:
    a memoryless model that outputs blanks and then guesses uniformly over the 8 symbols gets
    :math:`10 \\ln 8 / (T + 20)` (Arjovsky et al. 2016). Also reported: the accuracy of the
    recalled symbols (1/8 for the baseline).

    Options:
      delay: T, the number of steps between the end of the symbols and the end of the delimiter.

    Example:
      >>> from gatenets.tasks import get_task
      >>> task = get_task("copying", delay=5)
      >>> batch = next(task.batches("train", 2, seed=0))
      >>> batch.inputs.shape, round(task.baseline, 4)
      ((2, 25), 0.8318)
    """

    name = "copying"
    description = "recall 10 symbols (of 8) after T blank steps (per-step classification)"
    metric = "cross_entropy"
    baseline_source = "memoryless: 10 ln 8 / (T + 20) (Arjovsky et al. 2016)"
    higher_is_better = False
    defaults = {
        "model": "gru",
        "steps": 2000,
        "batch_size": 64,
        "learning_rate": 5e-3,
        "hidden": 128,
        "eval_every": 250,
        "eval_batch_size": 256,
    }
    option_defaults = {"delay": 50}
    copy_length = 10

    def __init__(self, **options):
        super().__init__(**options)
        check_int(self.options["delay"], "delay")

    @property
    def baseline(self) -> float:
        return self.copy_length * math.log(NUM_SYMBOLS) / (self.options["delay"] + 20)

    @property
    def target(self) -> float:
        # "Decisively": a tenth of the memoryless baseline.
        return 0.1 * self.baseline

    def make_model(self, model="lstm", hidden=None, *, rngs: nnx.Rngs, **kwargs):
        """The default model; an LSTM gets chrono initialisation (Tallec & Ollivier 2018) with
        ``T_max`` the sequence length, which lets it hold the symbols over the whole delay."""
        if model == "lstm":
            kwargs.setdefault("chrono_init", float(self.options["delay"] + 2 * self.copy_length))
        return SequenceModel(
            VOCAB_SIZE,
            hidden or self.defaults["hidden"],
            NUM_CLASSES,
            model=model,
            embed_features=16,
            readout="all",
            rngs=rngs,
            **kwargs,
        )

    def make_batch(self, rng, batch_size):
        return copying_data(rng, batch_size, self.options["delay"], self.copy_length)

    def loss(self, outputs: Array, batch: Batch) -> Array:
        return cross_entropy(outputs, batch.targets)

    def metrics(self, outputs: Array, batch: Batch) -> dict[str, Array]:
        recalled = jnp.argmax(outputs[:, -self.copy_length :], axis=-1)
        correct = recalled == batch.targets[:, -self.copy_length :]
        return {
            "cross_entropy": self.loss(outputs, batch),
            "recall_accuracy": jnp.mean(correct.astype(jnp.float32)),
        }
