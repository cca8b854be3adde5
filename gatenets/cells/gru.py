"""The GRU cell."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import initializers

from gatenets._typing import Array, Dtype, Initializer, PrecisionLike
from gatenets.cells.base import FusedKernelCell, fused_orthogonal, recurrent_input
from gatenets.gates import GateOverride, apply_override
from gatenets.kernels._common import mixed_matmul


class GRUCarry(NamedTuple):
    """State of a GRU between steps.

    Attributes:
      h: hidden state, ``[batch, hidden]``.
    """

    h: Array


class GRUGates(NamedTuple):
    """Post-sigmoid GRU gates, each ``[..., hidden]`` (``[batch, time, hidden]`` in a trace).

    ``retention``: the update gate multiplies the state (:math:`h_t = z_t \\odot h_{t-1} +
    \\dots`), so it is what a unit keeps of its past.
    """

    retention = {"update": "keep"}

    reset: Array
    update: Array


class GRUCell(FusedKernelCell):
    r"""Gated recurrent unit (Cho et al., 2014).

    With ``reset_after=True`` (PyTorch / cuDNN / Keras default), the reset gate multiplies the
    recurrent matmul's result:

    .. math::
        r_t = \sigma(W_{r} x_t + b_{ir} + U_{r} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{z} x_t + b_{iz} + U_{z} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{n} x_t + b_{in} + r_t \odot (U_{n} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    With ``reset_after=False`` (Cho et al.'s original), it multiplies the state before the matmul:
    :math:`n_t = \tanh(W_{n} x_t + U_{n} (r_t \odot h_{t-1}) + b_n)`.

    Loops (:class:`~gatenets.Loop`): ``"fused"``, the custom-VJP kernel of
    :func:`gatenets.kernels.gru_sequence` (hand-written backward pass, weight gradients as one
    matmul after the loop), wherever it applies: every case but ``reset_after=False`` and gate
    overrides that are functions or arrays, which run ``"scan"``.

    Gate blocks are fused in PyTorch's order ``r, z, n``: ``kernel`` is
    ``[in_features, 3 * hidden]`` and ``recurrent_kernel`` ``[hidden, 3 * hidden]``. With
    ``reset_after=True`` the cell has PyTorch's two biases, ``bias`` (``b_i*``) and
    ``recurrent_bias`` (``b_h*``), because :math:`b_{hn}` sits inside the reset product.

    Args:
      in_features: size of the last axis of each input step.
      hidden_features: size of the hidden state.
      reset_after: apply the reset gate after the recurrent matmul (PyTorch/cuDNN layout).
      use_bias: whether the cell has biases.
      kernel_init: initialiser of the input kernel.
      recurrent_kernel_init: initialiser of each ``[hidden, hidden]`` recurrent block.
      bias_init: initialiser of the biases.
      dtype: dtype of the computation (the matmuls' operands and the outputs); the state
        ``h`` stays in float32 for bf16 / f16, and the matmuls accumulate into it.
      param_dtype: dtype of the parameters.
      precision: precision of the cell's matmuls, as Flax's ``Linear`` takes it (None: JAX's
        default, which is TF32 for float32 on NVIDIA GPUs; ``"highest"`` for full float32).
      gate_fn: the reset and update gates' function (Flax's argument), :math:`\sigma` by
        default; another one runs on ``loop="scan"`` and the trace holds what it returned.
      activation_fn: the candidate's function, :math:`\tanh` by default.
      remat: in the fused kernel, save only the hidden states for the backward pass and
        recompute the gates there (one more matmul per step): for long sequences.
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> cell = gatenets.GRUCell(3, 4, rngs=nnx.Rngs(0))
      >>> carry, h = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> h.shape
      (2, 4)

    References:
      Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for Statistical
      Machine Translation", 2014.
    """

    family = "gru"
    layer_doc = """A (stacked, optionally bidirectional) GRU layer, as PyTorch's ``nn.GRU``.

    Each layer is a :class:`~gatenets.GRUCell` run by :class:`RNN`. Arguments are those of
    :class:`RecurrentStack`; the cell's own (``reset_after``, ``use_bias``, initialisers,
    ``dtype``, ``param_dtype``) go to every layer's cell. Gate traces hold
    :class:`~gatenets.GRUGates` under ``"layer{k}/forward"`` / ``"layer{k}/backward"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> gru = gatenets.GRU(3, 8, num_layers=2, rngs=nnx.Rngs(0))
      >>> gru(jnp.ones((4, 6, 3)), seq_lengths=jnp.array([6, 5, 1, 0])).shape
      (4, 6, 8)
    """
    gates_type = GRUGates
    carry_type = GRUCarry

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        reset_after: bool = True,
        use_bias: bool = True,
        kernel_init: Initializer = initializers.lecun_normal(),
        recurrent_kernel_init: Initializer = initializers.orthogonal(),
        bias_init: Initializer = initializers.zeros_init(),
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        gate_fn: Callable[[Array], Array] = jax.nn.sigmoid,
        activation_fn: Callable[[Array], Array] = jnp.tanh,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features,
            hidden_features,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            gate_fn=gate_fn,
            activation_fn=activation_fn,
        )
        self.remat = bool(remat)
        self.reset_after = reset_after
        self.use_bias = use_bias
        hidden = hidden_features
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, 3 * hidden), param_dtype))
        self.recurrent_kernel = nnx.Param(
            fused_orthogonal(recurrent_kernel_init, rngs, hidden, hidden, 3, param_dtype)
        )
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), (3 * hidden,), param_dtype))
            if reset_after:
                self.recurrent_bias = nnx.Param(
                    bias_init(rngs.params(), (3 * hidden,), param_dtype)
                )

    def _input_bias(self, dtype) -> Array | None:
        if not self.use_bias:
            return None
        bias = self.bias[...]
        if self.reset_after:
            # b_hr and b_hz add like input biases; b_hn stays inside r * (...).
            hidden = self.hidden_features
            bias = jnp.concatenate(
                [bias[: 2 * hidden] + self.recurrent_bias[: 2 * hidden], bias[2 * hidden :]]
            )
        return bias.astype(dtype)

    def kernel_unsupported(self) -> str | None:
        if not self.reset_after:
            return "the fused GRU kernel needs reset_after=True; got reset_after=False"
        return self.functions_unsupported()

    def kernel_operands(self, carry, dtype):
        hidden = self.hidden_features
        b_hn = self.recurrent_bias[2 * hidden :].astype(dtype) if self.use_bias else None
        return (self.recurrent_kernel[...].astype(dtype), carry.h), {"recurrent_bias": b_hn}

    def kernel_results(self, results, return_gates):
        h, hs, gates = results
        if return_gates:
            reset, update = jnp.split(gates, 2, axis=-1)
            gates = GRUGates(reset=reset, update=update)
        # The kernel carries the state in its own dtype; the outputs are in the compute dtype.
        return GRUCarry(h=h), hs.astype(self.compute_dtype), gates

    def step(
        self,
        carry: GRUCarry,
        projected: Array,
        *,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
    ) -> tuple[GRUCarry, Array, GRUGates]:
        """One sequential step from the projected input ``[batch, 3 * hidden]``.

        Returns:
          ``(new_carry, h, gates)``; ``h`` is ``[batch, hidden]``.
        """
        dtype, state = projected.dtype, carry.h.dtype
        hidden = self.hidden_features
        overrides = gate_overrides or {}
        # The state stays in its own dtype (float32 under bf16 compute); the matmuls take
        # compute-dtype operands and accumulate in the state dtype, where the gate math runs.
        h_prev = carry.h
        h_in = recurrent_input(h_prev, recurrent_mask)
        kernel = self.recurrent_kernel[...].astype(dtype)
        x_r, x_z, x_n = jnp.split(projected.astype(state), 3, axis=-1)
        if self.reset_after:
            h_r, h_z, h_n = jnp.split(mixed_matmul(h_in, kernel, state, self.precision), 3, axis=-1)
            if self.use_bias:
                h_n = h_n + jnp.broadcast_to(
                    self.recurrent_bias[2 * hidden :].astype(dtype).astype(state), h_n.shape
                )
        else:
            h_r, h_z = jnp.split(
                mixed_matmul(h_in, kernel[:, : 2 * hidden], state, self.precision), 2, axis=-1
            )
        r = apply_override(self.gate_fn(x_r + h_r), overrides.get("reset"), "reset")
        z = apply_override(self.gate_fn(x_z + h_z), overrides.get("update"), "update")
        if self.reset_after:
            n = self.activation_fn(x_n + r * h_n)
        else:
            n = self.activation_fn(
                x_n + mixed_matmul(r * h_in, kernel[:, 2 * hidden :], state, self.precision)
            )
        h = (1.0 - z) * n + z * h_prev
        return GRUCarry(h=h), h.astype(dtype), GRUGates(reset=r, update=z)
