"""What every task shares: the :class:`Batch`, the :class:`Task` interface, and
:class:`SequenceModel`, the model (embedding or not, a recurrent stack of any registered family or
a small gated transformer, a linear head) every task builds.

Data are made from a seed and a batch index, so batch ``k`` of a run is the same whether the
run was interrupted or not: resuming at step ``k`` needs no replay of the first ``k`` batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._layers import check_int, scoped
from gatenets._typing import Array
from gatenets.registry import FAMILIES
from gatenets.tasks.transformer import GatedTransformer

MODELS: dict[str, Callable[..., nnx.Module]] = {
    **{name: family.layer for name, family in FAMILIES.items()},
    "attention": GatedTransformer,
}
"""The sequence layers a task model can be built on, by name: every registered recurrent family
(:data:`gatenets.registry.FAMILIES`) and ``"attention"``, a :class:`GatedTransformer`. Each is
called as ``layer(in_features, hidden_features, num_layers=…, rngs=…, **kwargs)``."""

SPLITS = ("train", "valid", "test")


class Batch(NamedTuple):
    """One batch of a task.

    Attributes:
      inputs: ``[batch, time, features]`` floats, or ``[batch, time]`` integer tokens.
      targets: what the loss compares the outputs with (shape depends on the task).
      mask: ``[batch, time]`` booleans, True at valid steps, or None when every step is valid.
    """

    inputs: Any
    targets: Any
    mask: Any = None


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")


def batch_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of batch ``index`` of ``split``: independent of every other batch."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def endless_batches(
    seed: int, start: int, make: Callable[[np.random.Generator], Batch]
) -> Iterator[Batch]:
    """The training stream of a task that overrides :meth:`Task.batches`: batch ``k`` is
    ``make(batch_rng(seed, "train", k))``, for ``k = start, start + 1, …`` without end."""
    index = check_int(start, "start", minimum=0)
    while True:
        yield make(batch_rng(seed, "train", index))
        index += 1


def in_order(count: int, batch_size: int) -> Iterator[slice]:
    """Slices of ``batch_size`` consecutive rows of ``range(count)`` (the last may be shorter):
    how an evaluation split of fixed rows is read."""
    for begin in range(0, count, batch_size):
        yield slice(begin, begin + batch_size)


class SequenceModel(nnx.Module):
    """A recurrent stack or a causal transformer, with an optional token embedding and a linear
    head.

    .. math::
        h_{1:T} = \\mathrm{RNN}(e(x_{1:T})), \\qquad
        y = W h_{T'} + b \\ (\\text{readout "last"}), \\quad y_t = W h_t + b \\ (\\text{"all"})

    where :math:`T'` is each sequence's last valid step when a mask is given, and RNN is the
    stack of a registered cell family or, for ``model="attention"``, a
    :class:`GatedTransformer` (whose step :math:`t` sees steps :math:`\\le t` only).

    Args:
      in_features: size of each input step, or the vocabulary size when ``embed_features``
        is set (inputs are then ``[batch, time]`` integer tokens).
      hidden_features: size of each recurrent layer's state (the width of the transformer).
      out_features: size of the head's output.
      model: a name in :data:`MODELS`: a registered cell family (``"lstm"``, ``"gru"``, …)
        or ``"attention"``.
      num_layers: stacked recurrent layers (transformer blocks for ``"attention"``).
      embed_features: size of the token embedding, or None for float inputs.
      readout: ``"last"`` (one output per sequence, at its last valid step) or ``"all"`` (one
        output per step).
      rngs: random streams for parameter initialisation.
      **rnn_kwargs: passed to the stack (``forget_bias``, ``chrono_init``, … for a recurrent
        family; ``num_heads``, ``positions``, … for ``"attention"``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets.tasks import SequenceModel
      >>> model = SequenceModel(2, 8, 1, model="gru", rngs=nnx.Rngs(0))
      >>> y, trace = model(jnp.ones((3, 5, 2)), return_gates=True)
      >>> y.shape, sorted(trace.gates)
      ((3, 1), ['layer0/forward'])
      >>> model = SequenceModel(2, 8, 1, model="attention", rngs=nnx.Rngs(0))
      >>> y, trace = model(jnp.ones((3, 5, 2)), return_gates=True)
      >>> y.shape, sorted(trace.gates)
      ((3, 1), ['block0/attention', 'block0/feed_forward'])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        *,
        model: str = "lstm",
        num_layers: int = 1,
        embed_features: int | None = None,
        readout: str = "last",
        rngs: nnx.Rngs,
        **rnn_kwargs,
    ):
        if model not in MODELS:
            raise ValueError(f"model must be one of {list(MODELS)}; got {model!r}.")
        if readout not in ("last", "all"):
            raise ValueError(f"readout must be 'last' or 'all'; got {readout!r}.")
        check_int(hidden_features, "hidden")
        check_int(num_layers, "num_layers")
        self.kind = model
        self.readout = readout
        self.vocab_size = in_features if embed_features is not None else None
        if embed_features is not None:
            self.embed = nnx.Embed(in_features, embed_features, rngs=rngs)
            rnn_in = embed_features
        else:
            self.embed = None
            rnn_in = in_features
        stack = MODELS[model](
            rnn_in, hidden_features, num_layers=num_layers, rngs=rngs, **rnn_kwargs
        )
        # Recurrent stacks keep the attribute name ``rnn`` that saved runs' checkpoints use.
        self.rnn = stack if self.recurrent else None
        self.transformer = None if self.recurrent else stack
        self.head = nnx.Linear(stack.out_features, out_features, rngs=rngs)

    @property
    def recurrent(self) -> bool:
        """Whether the model carries a state from step to step (``initial_carry`` and
        ``return_carry`` then work); False for ``"attention"``."""
        return self.kind != "attention"

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        mask: Array | None = None,
        initial_carry: Any = None,
        return_carry: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, Any] | None = None,
    ):
        """Runs the model.

        Args:
          inputs: ``[batch, time, features]`` floats, or ``[batch, time]`` tokens.
          mask: ``[batch, time]`` booleans, True at valid steps.
          initial_carry: per-layer carries of the recurrent stack (for step-by-step sampling);
            None for ``"attention"``.
          return_carry: also return the final carries (first element of the result; None for
            ``"attention"``).
          return_gates: also return the :class:`~gatenets.GateTrace` of the stack.
          gate_overrides: as for :class:`~gatenets.LSTM`, or :class:`GatedTransformer`.

        Returns:
          ``outputs`` — ``[batch, out]`` (readout "last") or ``[batch, time, out]`` — preceded
          by the carries with ``return_carry`` and followed by the trace with ``return_gates``.
        """
        x = inputs
        if self.embed is not None:
            x = jnp.asarray(x)
            if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
                raise ValueError(
                    "inputs of a token model must be [batch, time] integers; got shape "
                    f"{x.shape} and dtype {x.dtype}."
                )
            x = self.embed(x)
        stack = self.rnn if self.recurrent else self.transformer
        out = stack(
            x,
            mask=mask,
            initial_carry=initial_carry,
            return_carry=True,
            return_gates=return_gates,
            gate_overrides=gate_overrides,
        )
        carry, y, trace = out if return_gates else (*out, None)
        if self.readout == "last":
            if mask is None:
                y = y[:, -1]
            else:
                # The last valid step of each sequence; masks may have holes, so take the
                # highest valid index rather than the count of valid steps.
                steps = jnp.arange(y.shape[1])[None, :]
                last = jnp.max(jnp.where(mask, steps, 0), axis=1)
                y = jnp.take_along_axis(y, last[:, None, None], axis=1)[:, 0]
        outputs = self.head(y)
        result: tuple = (outputs,)
        if return_carry:
            result = (carry, *result)
        if return_gates:
            result = (*result, trace)
        return result[0] if len(result) == 1 else result


class Task:
    """A sequence task: its data, loss, metrics, baseline, and a default model and config.

    Subclasses set the class attributes, implement :meth:`make_model`, :meth:`loss`,
    :meth:`metrics` and :meth:`make_batch` (or override :meth:`batches` for finite data).

    Attributes:
      name: registry name.
      description: one line.
      metric: name of the main metric (a key of :meth:`metrics`).
      baseline: published or trivial baseline value of ``metric``.
      baseline_source: where the baseline comes from.
      target: the value of ``metric`` the default config is meant to reach.
      higher_is_better: direction of ``metric``.
      defaults: default training config (``steps``, ``batch_size``, ``learning_rate``,
        ``hidden``, ``eval_every``, ``eval_batch_size``, and ``model`` when it is not
        ``"lstm"``).
      options: the task's own options (sequence length, …) after validation.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    metric: ClassVar[str]
    baseline_source: ClassVar[str]
    higher_is_better: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]]
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            raise ValueError(
                f"task {self.name!r}: unknown option(s) {unknown}; its options are "
                f"{sorted(self.option_defaults)}."
            )
        self.options = {**self.option_defaults, **options}

    @property
    def baseline(self) -> float:
        raise NotImplementedError

    @property
    def target(self) -> float:
        raise NotImplementedError

    def make_model(
        self, model: str = "lstm", hidden: int | None = None, *, rngs: nnx.Rngs, **kwargs
    ) -> SequenceModel:
        raise NotImplementedError

    def make_batch(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """A fresh random batch (synthetic tasks)."""
        raise NotImplementedError

    def eval_size(self, split: str) -> int:
        """Number of sequences in a finite split of a synthetic task."""
        return 1024

    def batches(self, split: str, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Batch]:
        """Batches of ``split``: endless for ``"train"``, finite for ``"valid"`` / ``"test"``.

        Args:
          split: ``"train"``, ``"valid"`` or ``"test"``.
          batch_size: sequences per batch.
          seed: data seed; ``"valid"`` and ``"test"`` draw from streams that the training
            stream never touches.
          start: index of the first training batch (to resume a run).
        """
        check_split(split)
        check_int(batch_size, "batch_size")
        check_int(start, "start", minimum=0)
        if split == "train":
            index = start
            while True:
                yield self.make_batch(batch_rng(seed, split, index), batch_size)
                index += 1
        remaining, index = self.eval_size(split), 0
        while remaining > 0:
            size = min(batch_size, remaining)
            yield self.make_batch(batch_rng(seed, split, index), size)
            remaining -= size
            index += 1

    def loss(self, outputs: Array, batch: Batch) -> Array:
        raise NotImplementedError

    def metrics(self, outputs: Array, batch: Batch) -> dict[str, Array]:
        """Named scalar metrics of one batch (JAX scalars, so that they compute under jit;
        ``float()`` them outside). :func:`gatenets.train.evaluate` averages them over a split
        weighted by sequences per batch."""
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({options})"


def cross_entropy(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Mean cross-entropy in nats over the positions where ``mask`` is True."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    if mask is None:
        return -jnp.mean(picked)
    weights = mask.astype(jnp.float32)
    return -jnp.sum(picked * weights) / jnp.maximum(jnp.sum(weights), 1.0)
