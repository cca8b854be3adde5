r"""Gradient through time: how much the loss still hears of the hidden state ``t`` steps back.

For a recurrent cell run over a sequence, the probe measures

.. math::
    n_t = \frac{1}{B}\sum_{b} \left\lVert \frac{\partial L}{\partial h_{b,t}} \right\rVert_2

for every step :math:`t`: the total derivative of the loss through every later step. It adds a
zero perturbation :math:`\epsilon_t` to the hidden state that each step hands on
(:math:`h_t \leftarrow h_t + \epsilon_t`) and differentiates with respect to it, so the
gradient includes every path from :math:`h_t` to the loss. In a plain sigmoid RNN each step
back multiplies the gradient by :math:`W^\top \operatorname{diag}(\sigma')` with
:math:`\sigma' \le 1/4`, so :math:`n_t` falls exponentially with the distance to the loss;
an LSTM's cell state passes it on multiplied by the forget gate only, which a forget bias
of 1 (or training) keeps near 1 (Hochreiter 1991; Bengio et al. 1994; Gers et al. 2000).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._typing import Array
from gatenets.cells.base import GatedCell
from gatenets.cells.plain import PlainRNNCell
from gatenets.recurrent import RNN, RecurrentStack


class GradientProfile(NamedTuple):
    """Result of :func:`gradient_through_time`.

    Attributes:
      norms: ``[time]`` mean over the batch of :math:`\\lVert \\partial L/\\partial h_t \\rVert_2`.
      label: a name for plots (the cell's class unless given).
    """

    norms: np.ndarray
    label: str

    @property
    def relative(self) -> np.ndarray:
        """``norms`` divided by the largest norm (1 where the loss hears most)."""
        return self.norms / np.max(self.norms)


def _cell_of(layer: Any) -> Any:
    if isinstance(layer, GatedCell | PlainRNNCell):
        return layer
    if isinstance(layer, RNN):
        if layer.reverse:
            raise ValueError("layer must run forward in time (reverse=False) for the probe.")
        return layer.cell
    if isinstance(layer, RecurrentStack):
        if layer.num_layers != 1 or layer.bidirectional:
            raise ValueError(
                "the probe follows the hidden state of one cell; give it a one-layer "
                f"unidirectional stack or its cell (got num_layers={layer.num_layers}, "
                f"bidirectional={layer.bidirectional}). For a deeper model pass "
                "model.layers[k].cell and a loss_fn that applies the layers above."
            )
        return layer.layers[0].cell
    raise TypeError(
        "layer must be a gatenets cell, RNN, one-layer LSTM/GRU, or PlainRNNCell; got "
        f"{type(layer).__name__}."
    )


def last_step_loss(outputs: Array) -> Array:
    """Default probe loss: the sum of the last step's outputs, averaged over the batch."""
    return jnp.mean(jnp.sum(outputs[:, -1], axis=-1))


@nnx.jit(static_argnames="loss_fn")
def _gradient_norms(cell, inputs, loss_fn):
    batch = inputs.shape[0]
    xs = cell.project(jnp.swapaxes(inputs, 0, 1))
    carry0 = cell.initialize_carry((batch, cell.in_features))
    eps0 = jnp.zeros((inputs.shape[1], batch, cell.output_features), xs.dtype)

    def loss_of(eps):
        def body(carry, step_inputs):
            x_t, eps_t = step_inputs
            carry, h, _ = cell.step(carry, x_t)
            h = h + eps_t
            return carry._replace(h=h), h

        _, hs = jax.lax.scan(body, carry0, (xs, eps0 + eps))
        return loss_fn(jnp.swapaxes(hs, 0, 1))

    grads = jax.grad(loss_of)(eps0)
    return jnp.mean(jnp.sqrt(jnp.sum(grads.astype(jnp.float32) ** 2, axis=-1)), axis=1)


def gradient_through_time(
    layer: Any,
    inputs: Any,
    *,
    loss_fn: Callable[[Array], Array] | None = None,
    label: str | None = None,
) -> GradientProfile:
    r"""Measures :math:`\lVert \partial L / \partial h_t \rVert` for every step ``t``.

    Args:
      layer: a gatenets cell, an ``RNN``, a one-layer unidirectional ``LSTM``/``GRU``, or a
        :class:`PlainRNNCell`.
      inputs: ``[batch, time, features]`` floats fed to the cell.
      loss_fn: maps the outputs ``[batch, time, hidden]`` to a scalar loss (for a model,
        apply its head and loss here). By default the sum of the last step's outputs, so the
        profile shows how a signal at the end reaches back. Must be hashable (a function).
      label: name for plots; the cell's class name by default.

    Returns:
      :class:`GradientProfile` with ``norms[time]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.inspect.probe import PlainRNNCell
      >>> x = jnp.ones((2, 20, 3))
      >>> lstm = gatenets.inspect.gradient_through_time(gatenets.LSTM(3, 8, rngs=nnx.Rngs(0)), x)
      >>> rnn = gatenets.inspect.gradient_through_time(PlainRNNCell(3, 8, rngs=nnx.Rngs(0)), x)
      >>> bool(lstm.relative[0] > 100 * rnn.relative[0])
      True
    """
    cell = _cell_of(layer)
    x = jnp.asarray(inputs)
    if x.ndim != 3 or x.shape[-1] != cell.in_features:
        raise ValueError(
            f"inputs must be [batch, time, features] with features = {cell.in_features}; got "
            f"shape {x.shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"inputs must be floating point; got dtype {x.dtype}.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"inputs must have at least one sequence and one step; got {x.shape}.")
    norms = np.asarray(_gradient_norms(cell, x, loss_fn or last_step_loss), np.float64)
    return GradientProfile(norms=norms, label=label or type(cell).__name__)


def gradient_contrast(model: Any, inputs: Any, *, seed: int = 0) -> list[GradientProfile]:
    """Profiles of a task model's recurrent part and of a plain sigmoid RNN beside it.

    The model's one-layer unidirectional ``model.rnn`` and an untrained
    :class:`PlainRNNCell` of the same size run on the same inputs (through ``model.embed``
    first when the model has one), with the default probe loss.

    Args:
      model: a model with ``rnn`` (a one-layer unidirectional ``LSTM`` or ``GRU``) and
        optionally ``embed``, such as :class:`~gatenets.tasks.SequenceModel`.
      inputs: the model's inputs, ``[batch, time, features]`` or ``[batch, time]`` tokens.
      seed: seed of the plain RNN's parameters.

    Returns:
      ``[profile of the trained cell, profile of the plain sigmoid RNN]``.

    Raises:
      ValueError: when ``model.rnn`` is missing, deeper than one layer or bidirectional.

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> from gatenets.inspect.probe import gradient_contrast
      >>> from gatenets.tasks import SequenceModel
      >>> model = SequenceModel(5, 8, 5, embed_features=4, readout="all", rngs=nnx.Rngs(0))
      >>> lstm, plain = gradient_contrast(model, np.zeros((2, 30), np.int32))
      >>> lstm.label, plain.label, bool(lstm.relative[0] > 100 * plain.relative[0])
      ('trained LSTMCell', 'plain sigmoid RNN (untrained)', True)
    """
    rnn = getattr(model, "rnn", None)
    if not isinstance(rnn, RecurrentStack) or rnn.num_layers != 1 or rnn.bidirectional:
        raise ValueError(
            "model must have a one-layer unidirectional LSTM or GRU as model.rnn; got "
            f"{type(rnn).__name__ if rnn is not None else 'no model.rnn'}"
            + (
                f" with num_layers={rnn.num_layers}, bidirectional={rnn.bidirectional}."
                if isinstance(rnn, RecurrentStack)
                else "."
            )
        )
    x = jnp.asarray(inputs)
    embed = getattr(model, "embed", None)
    if embed is not None:
        x = embed(x)
    cell = rnn.cell
    plain = PlainRNNCell(cell.in_features, cell.output_features, rngs=nnx.Rngs(seed))
    return [
        gradient_through_time(rnn, x, label=f"trained {type(cell).__name__}"),
        gradient_through_time(plain, x, label="plain sigmoid RNN (untrained)"),
    ]
