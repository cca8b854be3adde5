"""The real-gated linear recurrent unit of Griffin (De et al., 2024)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import initializers

from gatenets._typing import Array, Dtype, Initializer, PrecisionLike
from gatenets.cells.diagonal import DiagonalCell
from gatenets.gates import GateOverride, apply_override


class RGLRUGates(NamedTuple):
    """RG-LRU's post-sigmoid gates, each ``[..., hidden]`` (``[batch, time, hidden]`` in a
    trace): the recurrence gate :math:`r_t` and the input gate :math:`i_t`.

    ``retention`` is empty: the decay :math:`a_t = a^{c r_t}` depends on the parameter
    :math:`a` as well as the gate, so no gate alone sets a time constant.
    """

    retention = {}

    recurrence: Array
    input: Array


@jax.custom_vjp
def sqrt_bounded_derivative(x: Array, max_gradient: float) -> Array:
    """``sqrt(x)`` whose derivative is capped at ``max_gradient`` (near ``x = 0`` it is not
    ``1 / (2 sqrt(x)) -> inf``), as Griffin needs for :math:`\\sqrt{1 - a_t^2}` when
    :math:`a_t \\to 1`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gatenets.cells.rglru import sqrt_bounded_derivative
      >>> round(float(jax.grad(sqrt_bounded_derivative)(jnp.float32(0.0), 1000.0)), 3)
      1000.0
    """
    return jnp.sqrt(x)


def _sqrt_fwd(x, max_gradient):
    return jnp.sqrt(x), (x, max_gradient)


def _sqrt_bwd(residuals, g):
    x, max_gradient = residuals
    # d sqrt(x)/dx = 1 / sqrt(4x); clipping 4x from below at 1/max^2 caps it at max_gradient.
    floor = jnp.asarray(1.0 / max_gradient**2, x.dtype)
    return g / jnp.sqrt(jnp.maximum(4.0 * x, floor)), None


sqrt_bounded_derivative.defvjp(_sqrt_fwd, _sqrt_bwd)


def decay_init(min_decay: float, max_decay: float, c: float) -> Initializer:
    """Initialiser of Λ such that :math:`a^c = e^{-c\\,\\mathrm{softplus}(Λ)}` is uniform in
    :math:`[\\text{min\\_decay}^c, \\text{max\\_decay}^c]` (Griffin's recipe), hence
    :math:`a \\in [\\text{min\\_decay}, \\text{max\\_decay}]`."""

    def init(key, shape, dtype=jnp.float32):
        a_c = jax.random.uniform(key, shape, jnp.float32, minval=min_decay**c, maxval=max_decay**c)
        softplus_lambda = -jnp.log(a_c) / c
        # Inverse of softplus: Λ = log(e^y - 1), written to stay exact for small y.
        return (softplus_lambda + jnp.log(-jnp.expm1(-softplus_lambda))).astype(dtype)

    return init


class RGLRUCell(DiagonalCell):
    r"""Real-gated linear recurrent unit (RG-LRU) of Griffin (De et al., 2024).

    .. math::
        r_t = \sigma(W_a x_t + b_a) \qquad \text{recurrence gate} \\
        i_t = \sigma(W_x x_t + b_x) \qquad \text{input gate} \\
        v_t = W_v x_t + b_v \\
        a_t = a^{c\, r_t} = \exp(-c \,\mathrm{softplus}(\Lambda) \odot r_t), \quad c = 8 \\
        h_t = a_t \odot h_{t-1} + \sqrt{1 - a_t^2} \odot (i_t \odot v_t)

    :math:`\Lambda` is initialised so that :math:`a = e^{-\mathrm{softplus}(\Lambda)}` lies in
    ``[min_decay, max_decay]`` = [0.9, 0.999], with :math:`a^c` uniform. The normaliser
    :math:`\sqrt{1 - a_t^2}` is computed as :math:`\sqrt{-\mathrm{expm1}(2 \log a_t)}` with its
    derivative capped at ``max_sqrt_gradient`` (1000, as Griffin), since it is infinite at
    :math:`a_t = 1`. The recurrence is diagonal and its gates read only the input, so
    ``loop="associative"`` runs it with a log-space associative scan.

    Griffin feeds the RG-LRU the output of a linear layer (and a short convolution) of width
    ``hidden``; here that linear layer is the cell's value block :math:`W_v`, so the cell takes
    any ``in_features`` and stacks like the other cells. Gates are dense rather than Griffin's
    block-diagonal per head. ``kernel`` is ``[in_features, 3 * hidden]`` with blocks
    ``a, x, v``; the override names are ``"recurrence"`` and ``"input"``.

    Args:
      in_features: size of the last axis of each input step.
      hidden_features: width of the recurrence.
      c: the fixed scalar exponent of the decay (8 in Griffin).
      min_decay: lower end of the initial decay :math:`a`.
      max_decay: upper end of the initial decay :math:`a`.
      max_sqrt_gradient: cap on the derivative of the square-root normaliser.
      use_bias: whether the projections have a bias.
      kernel_init: initialiser of the input kernel.
      bias_init: initialiser of the bias.
      dtype: dtype of the matmul (the recurrence runs in float32).
      param_dtype: dtype of the parameters.
      precision: precision of the cell's matmuls, as Flax's ``Linear`` takes it (None: JAX's
        default, which is TF32 for float32 on NVIDIA GPUs; ``"highest"`` for full float32).
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> cell = gatenets.RGLRUCell(3, 4, rngs=nnx.Rngs(0))
      >>> a = jnp.exp(-jax.nn.softplus(cell.decay[...]))
      >>> bool((a >= 0.9).all() & (a <= 0.999).all())
      True
      >>> y, trace = gatenets.RNN(cell)(jnp.ones((2, 6, 3)), return_gates=True)
      >>> y.shape, trace.gates["forward"].recurrence.shape
      ((2, 6, 4), (2, 6, 4))

    References:
      De et al., "Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient
      Language Models", 2024.
    """

    family = "rglru"
    layer_doc = """A stacked, optionally bidirectional layer of :class:`~gatenets.RGLRUCell` cells.

    Arguments are those of :class:`~gatenets.RecurrentStack`; the cell's own (``c``,
    ``min_decay``, ``max_decay``, ``max_sqrt_gradient``, initialisers, ``dtype``,
    ``param_dtype``) go to every layer's cell. Gate traces hold :class:`~gatenets.RGLRUGates`
    under ``"layer{k}/forward"`` / ``"layer{k}/backward"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> model = gatenets.RGLRU(3, 8, num_layers=2, rngs=nnx.Rngs(0))
      >>> model(jnp.ones((4, 6, 3)), gate_overrides={"recurrence": 0.0}).shape
      (4, 6, 8)
    """
    gates_type = RGLRUGates

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        c: float = 8.0,
        min_decay: float = 0.9,
        max_decay: float = 0.999,
        max_sqrt_gradient: float = 1000.0,
        use_bias: bool = True,
        kernel_init: Initializer = initializers.lecun_normal(),
        bias_init: Initializer = initializers.zeros_init(),
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features, hidden_features, dtype=dtype, param_dtype=param_dtype, precision=precision
        )
        if not (isinstance(c, int | float) and np.isfinite(c) and c > 0):
            raise ValueError(f"c must be a positive finite number; got {c!r}.")
        if not (0.0 < min_decay <= max_decay < 1.0):
            raise ValueError(
                "min_decay and max_decay must satisfy 0 < min_decay <= max_decay < 1; got "
                f"min_decay={min_decay!r}, max_decay={max_decay!r}."
            )
        if not max_sqrt_gradient > 0:
            raise ValueError(f"max_sqrt_gradient must be positive; got {max_sqrt_gradient!r}.")
        self.c = float(c)
        self.max_sqrt_gradient = float(max_sqrt_gradient)
        self.use_bias = use_bias
        shape = (in_features, 3 * hidden_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), shape[1:], param_dtype))
        self.decay = nnx.Param(
            decay_init(min_decay, max_decay, self.c)(rngs.params(), (hidden_features,), param_dtype)
        )

    def coefficients(
        self, projected: Array, gate_overrides: Mapping[str, GateOverride] | None
    ) -> tuple[Array, Array, RGLRUGates]:
        """``(log a_t, sqrt(1 - a_t²) i_t v_t, gates)`` from the projected ``[..., 3 * hidden]``."""
        k_a, k_x, value = jnp.split(projected.astype(jnp.float32), 3, axis=-1)
        overrides = gate_overrides or {}
        recurrence = apply_override(jax.nn.sigmoid(k_a), overrides.get("recurrence"), "recurrence")
        input_ = apply_override(jax.nn.sigmoid(k_x), overrides.get("input"), "input")
        rate = jnp.broadcast_to(
            self.c * jax.nn.softplus(self.decay[...].astype(jnp.float32)), recurrence.shape
        )
        log_a = -rate * recurrence
        normaliser = sqrt_bounded_derivative(-jnp.expm1(2.0 * log_a), self.max_sqrt_gradient)
        gates = RGLRUGates(
            recurrence=recurrence.astype(projected.dtype), input=input_.astype(projected.dtype)
        )
        return log_a, normaliser * (input_ * value), gates
