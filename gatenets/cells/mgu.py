"""The minimal gated unit (Zhou et al., 2016): a GRU whose one gate both resets and updates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import initializers

from gatenets._typing import Array, Dtype, Initializer, PrecisionLike
from gatenets.cells.base import GatedCell, fused_orthogonal, recurrent_input
from gatenets.gates import GateOverride, apply_override
from gatenets.kernels._common import mixed_matmul


class MGUCarry(NamedTuple):
    """State of an MGU between steps.

    Attributes:
      h: hidden state, ``[batch, hidden]``.
    """

    h: Array


class MGUGates(NamedTuple):
    """The MGU's post-sigmoid forget gate, ``[..., hidden]`` (``[batch, time, hidden]`` in a
    trace).

    ``retention``: one minus the gate multiplies the state (:math:`h_t = (1 - f_t) \\odot
    h_{t-1} + \\dots`): the gate is what a unit writes, not what it keeps.
    """

    retention = {"forget": "write"}

    forget: Array


class MGUCell(GatedCell):
    r"""Minimal gated unit (Zhou et al., 2016): one forget gate that gates the recurrent input
    of the candidate and mixes the candidate into the state.

    With ``reset_after=False`` (the paper's equations), the gate multiplies the state before
    the recurrent matmul:

    .. math::
        f_t = \sigma(W_f x_t + U_f h_{t-1} + b_f) \\
        n_t = \tanh(W_n x_t + U_n (f_t \odot h_{t-1}) + b_n) \\
        h_t = (1 - f_t) \odot h_{t-1} + f_t \odot n_t

    With ``reset_after=True`` (the layout of Flax's ``nn.MGUCell`` and of
    :class:`~gatenets.GRUCell`'s default), it multiplies the recurrent matmul's result, and the
    recurrent bias :math:`b_{hn}` sits inside the product:
    :math:`n_t = \tanh(W_n x_t + b_n + f_t \odot (U_n h_{t-1} + b_{hn}))`.

    Flax's ``nn.MGUCell`` mixes the other way round, :math:`h_t = f_t \odot h_{t-1} +
    (1 - f_t) \odot n_t`, so its gate is a keep gate that also opens the candidate to the
    past; this cell follows the paper, where one gate value opens both.

    Gate blocks are fused in the order ``f, n``: ``kernel`` is ``[in_features, 2 * hidden]``,
    ``recurrent_kernel`` ``[hidden, 2 * hidden]``, ``bias`` ``[2 * hidden]`` and, with
    ``reset_after=True``, ``recurrent_bias`` ``[hidden]`` (:math:`b_{hn}`). The gate override
    name is ``"forget"``. The cell runs ``loop="scan"``.

    Args:
      in_features: size of the last axis of each input step.
      hidden_features: size of the hidden state.
      reset_after: apply the forget gate after the recurrent matmul (Flax's layout) instead of
        before it (the paper's).
      use_bias: whether the cell has biases.
      kernel_init: initialiser of the input kernel.
      recurrent_kernel_init: initialiser of each ``[hidden, hidden]`` recurrent block.
      bias_init: initialiser of the biases.
      dtype: dtype of the computation (the matmuls' operands and the outputs); the state
        ``h`` stays in float32 for bf16 / f16, and the matmuls accumulate into it.
      param_dtype: dtype of the parameters.
      precision: precision of the cell's matmuls, as Flax's ``Linear`` takes it (None: JAX's
        default, which is TF32 for float32 on NVIDIA GPUs; ``"highest"`` for full float32).
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> rnn = gatenets.RNN(gatenets.MGUCell(3, 4, rngs=nnx.Rngs(0)))
      >>> y, trace = rnn(jnp.ones((2, 6, 3)), seq_lengths=jnp.array([6, 2]), return_gates=True)
      >>> y.shape, trace.gates["forward"].forget.shape
      ((2, 6, 4), (2, 6, 4))

    References:
      Zhou, Wu, Zhang, Zhou, "Minimal Gated Unit for Recurrent Neural Networks", 2016.
    """

    family = "mgu"
    layer_doc = """A (stacked, optionally bidirectional) layer of :class:`~gatenets.MGUCell` cells.

    Arguments are those of :class:`~gatenets.RecurrentStack`; the cell's own (``reset_after``,
    ``use_bias``, initialisers, ``dtype``, ``param_dtype``) go to every layer's cell. Gate
    traces hold :class:`~gatenets.MGUGates` under ``"layer{k}/forward"`` / ``"layer{k}/backward"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> model = gatenets.MGU(3, 8, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
      >>> y, trace = model(jnp.ones((4, 6, 3)), return_gates=True)
      >>> y.shape, sorted(trace.flat())[0]
      ((4, 6, 16), 'layer0/backward/forget')
    """
    gates_type = MGUGates
    carry_type = MGUCarry

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        reset_after: bool = False,
        use_bias: bool = True,
        kernel_init: Initializer = initializers.lecun_normal(),
        recurrent_kernel_init: Initializer = initializers.orthogonal(),
        bias_init: Initializer = initializers.zeros_init(),
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features, hidden_features, dtype=dtype, param_dtype=param_dtype, precision=precision
        )
        self.reset_after = reset_after
        self.use_bias = use_bias
        hidden = hidden_features
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, 2 * hidden), param_dtype))
        self.recurrent_kernel = nnx.Param(
            fused_orthogonal(recurrent_kernel_init, rngs, hidden, hidden, 2, param_dtype)
        )
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), (2 * hidden,), param_dtype))
            if reset_after:
                self.recurrent_bias = nnx.Param(bias_init(rngs.params(), (hidden,), param_dtype))

    def step(
        self,
        carry: MGUCarry,
        projected: Array,
        *,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
    ) -> tuple[MGUCarry, Array, MGUGates]:
        """One sequential step from the projected input ``[batch, 2 * hidden]``.

        Returns:
          ``(new_carry, h, gates)``; ``h`` is ``[batch, hidden]``.
        """
        dtype, state = projected.dtype, carry.h.dtype
        hidden = self.hidden_features
        # As the GRU: the state in its own dtype (float32 under bf16 compute), compute-dtype
        # matmul operands accumulated into it.
        h_prev = carry.h
        h_in = recurrent_input(h_prev, recurrent_mask)
        kernel = self.recurrent_kernel[...].astype(dtype)
        x_f, x_n = jnp.split(projected.astype(state), 2, axis=-1)
        if self.reset_after:
            h_f, h_n = jnp.split(mixed_matmul(h_in, kernel, state, self.precision), 2, axis=-1)
            if self.use_bias:
                h_n = h_n + jnp.broadcast_to(
                    self.recurrent_bias[...].astype(dtype).astype(state), h_n.shape
                )
        else:
            h_f = mixed_matmul(h_in, kernel[:, :hidden], state, self.precision)
        overrides = gate_overrides or {}
        forget = apply_override(jax.nn.sigmoid(x_f + h_f), overrides.get("forget"), "forget")
        if self.reset_after:
            n = jnp.tanh(x_n + forget * h_n)
        else:
            n = jnp.tanh(
                x_n + mixed_matmul(forget * h_in, kernel[:, hidden:], state, self.precision)
            )
        h = (1.0 - forget) * h_prev + forget * n
        return MGUCarry(h=h), h.astype(dtype), MGUGates(forget=forget)
