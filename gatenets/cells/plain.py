"""A plain (gateless) recurrent cell, :math:`h_t = \\phi(W x_t + U h_{t-1} + b)`: the contrast
that shows what gates buy (see :func:`gatenets.inspect.gradient_through_time`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import initializers

from gatenets._typing import Array, Initializer
from gatenets.gates import GateOverride

ACTIVATIONS: Mapping[str, Callable[[Array], Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
}


class PlainRNNCarry(NamedTuple):
    """State of a :class:`PlainRNNCell`: the hidden state ``h`` ``[batch, hidden]``."""

    h: Array


class PlainRNNCell(nnx.Module):
    r"""A plain (Elman) recurrent cell without gates: the contrast for the probe.

    .. math::
        h_t = \phi(W x_t + U h_{t-1} + b), \qquad \phi \in \{\sigma, \tanh\}

    It has the time-parallel / sequential split of gatenets cells (``project`` and ``step``),
    so :func:`gradient_through_time` and the training helpers run it like an LSTM, but it has
    no gates to trace (``step`` returns ``None`` for them).

    Args:
      in_features: size of each input step.
      hidden_features: size of the hidden state.
      activation: ``"sigmoid"`` (the textbook vanishing-gradient case) or ``"tanh"``.
      kernel_init: initialiser of ``W`` ``[in_features, hidden]``.
      recurrent_kernel_init: initialiser of ``U`` ``[hidden, hidden]``.
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets.inspect.probe import PlainRNNCell
      >>> cell = PlainRNNCell(2, 3, rngs=nnx.Rngs(0))
      >>> carry, h, gates = cell.step(cell.initialize_carry((4, 2)), cell.project(jnp.ones((4, 2))))
      >>> h.shape, gates is None, bool(((h > 0) & (h < 1)).all())
      ((4, 3), True, True)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        activation: str = "sigmoid",
        kernel_init: Initializer = initializers.lecun_normal(),
        recurrent_kernel_init: Initializer = initializers.orthogonal(),
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}; got {activation!r}.")
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.activation = activation
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, hidden_features)))
        self.recurrent_kernel = nnx.Param(
            recurrent_kernel_init(rngs.params(), (hidden_features, hidden_features))
        )
        self.bias = nnx.Param(jnp.zeros((hidden_features,)))

    @property
    def output_features(self) -> int:
        return self.hidden_features

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None) -> PlainRNNCarry:
        return PlainRNNCarry(jnp.zeros((*input_shape[:-1], self.hidden_features)))

    def project(self, x: Array) -> Array:
        """``W x + b`` for any leading axes."""
        z = x @ self.kernel[...]
        return z + jnp.broadcast_to(self.bias[...], z.shape)

    def step(
        self,
        carry: PlainRNNCarry,
        projected: Array,
        *,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
    ) -> tuple[PlainRNNCarry, Array, None]:
        if gate_overrides:
            raise ValueError("PlainRNNCell has no gates to override.")
        h_in = carry.h if recurrent_mask is None else carry.h * recurrent_mask
        h = ACTIVATIONS[self.activation](projected + h_in @ self.recurrent_kernel[...])
        return PlainRNNCarry(h), h, None

    def __call__(self, carry: PlainRNNCarry, inputs: Array) -> tuple[PlainRNNCarry, Array]:
        carry, h, _ = self.step(carry, self.project(inputs))
        return carry, h
