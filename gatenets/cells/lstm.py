"""The LSTM cell."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import initializers

from gatenets._typing import Array, Dtype, Initializer, PrecisionLike
from gatenets.cells.base import (
    FusedKernelCell,
    fused_orthogonal,
    recurrent_input,
    state_dtype,
)
from gatenets.gates import GateOverride, apply_override
from gatenets.kernels._common import mixed_matmul


class LSTMCarry(NamedTuple):
    """State of an LSTM between steps.

    Attributes:
      c: cell state, ``[batch, hidden]`` (kept in float32 when the cell computes in bf16/f16).
      h: hidden state, ``[batch, hidden]`` or ``[batch, proj]`` with a projection.
    """

    c: Array
    h: Array


class LSTMGates(NamedTuple):
    """Post-sigmoid LSTM gates, each ``[..., hidden]`` (``[batch, time, hidden]`` in a trace).

    ``retention``: the forget gate multiplies the cell state (:math:`c_t = f_t \\odot c_{t-1} +
    \\dots`), so it is what a unit keeps of its past (see :func:`gatenets.inspect.gate_statistics`).
    """

    retention = {"forget": "keep"}

    input: Array
    forget: Array
    output: Array


class LSTMCell(FusedKernelCell):
    r"""Long short-term memory cell (Hochreiter & Schmidhuber 1997; forget gate, Gers et al. 2000).

    .. math::
        i_t = \sigma(W_{i} x_t + U_{i} h_{t-1} + p_i \odot c_{t-1} + b_i) \\
        f_t = \sigma(W_{f} x_t + U_{f} h_{t-1} + p_f \odot c_{t-1} + b_f) \\
        g_t = \tanh(W_{g} x_t + U_{g} h_{t-1} + b_g) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        o_t = \sigma(W_{o} x_t + U_{o} h_{t-1} + p_o \odot c_t + b_o) \\
        h_t = (o_t \odot \tanh(c_t))\, W_{hr}

    The peephole terms :math:`p \odot c` exist only with ``peephole=True``; the projection
    :math:`W_{hr}` only with ``proj_size`` (PyTorch's LSTMP, Sak et al. 2014).

    Loops (:class:`~gatenets.Loop`): ``"fused"``, the custom-VJP kernel of
    :func:`gatenets.kernels.lstm_sequence` (hand-written backward pass, weight gradients as one
    matmul after the loop), wherever it applies: every case but ``peephole``, ``proj_size`` and
    gate overrides that are functions or arrays, which run ``"scan"``.

    The four gate blocks are fused in one kernel in PyTorch's order ``i, f, g, o``:
    ``kernel`` is ``[in_features, 4 * hidden]``, ``recurrent_kernel`` is
    ``[hidden or proj, 4 * hidden]``, so a PyTorch ``weight_ih_l0`` is ``kernel.T``.

    Args:
      in_features: size of the last axis of each input step.
      hidden_features: size of the cell state.
      proj_size: if given, ``h`` is projected to this size (and is the output and the
        recurrent input).
      peephole: add the peephole connections :math:`p_i, p_f, p_o` (initialised to zero).
      forget_bias: added to the forget-gate bias at initialisation (Jozefowicz et al. 2015).
      chrono_init: if given (``T_max``), initialise :math:`b_f \sim \log U[1, T_{max} - 1]` and
        :math:`b_i = -b_f` (Tallec & Ollivier 2018); replaces ``forget_bias``.
      use_bias: whether the cell has biases at all.
      use_recurrent_bias: keep a second bias on the recurrent side as PyTorch does
        (``bias_ih`` and ``bias_hh``), so that weights convert exactly; the two are summed.
      kernel_init: initialiser of the input kernel.
      recurrent_kernel_init: initialiser of each ``[hidden or proj, hidden]`` recurrent block.
      bias_init: initialiser of the biases (before ``forget_bias`` / ``chrono_init``).
      dtype: dtype of the computation (the cell state stays in float32 for bf16 / f16, and
        the recurrent matmul accumulates into it).
      param_dtype: dtype of the parameters.
      precision: precision of the cell's matmuls, as Flax's ``Linear`` takes it (None: JAX's
        default, which is TF32 for float32 on NVIDIA GPUs; ``"highest"`` for full float32).
      gate_fn: the gates' squashing function (Flax's argument), :math:`\sigma` by default;
        another one (e.g. ``nnx.hard_sigmoid``) runs on ``loop="scan"`` and the trace holds
        what it returned.
      activation_fn: the candidate's and the output's function, :math:`\tanh` by default.
      remat: in the fused kernel, save only the states for the backward pass and recompute the
        gates there (two hidden-sized arrays saved per step instead of six, for one more matmul
        per step): for long sequences. Pays fully with the input matmul inside the loop
        (``RNN(precompute_inputs=False)``, the default on CPU).
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> cell = gatenets.LSTMCell(3, 5, rngs=nnx.Rngs(0))
      >>> carry = cell.initialize_carry((2, 3))
      >>> carry, h = cell(carry, jnp.ones((2, 3)))
      >>> h.shape, carry.c.shape
      ((2, 5), (2, 5))

    References:
      Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997. Gers, Schmidhuber & Cummins,
      "Learning to Forget", 2000. Tallec & Ollivier, "Can recurrent neural networks warp
      time?", 2018.
    """

    family = "lstm"
    layer_doc = """A stacked, optionally bidirectional LSTM: the one-liner a PyTorch user expects.

    Each layer is an :class:`~gatenets.LSTMCell` run by :class:`RNN`; see those for the
    equations and the padding semantics. Arguments are those of :class:`RecurrentStack`; the
    cell's own (``proj_size``, ``peephole``, ``forget_bias``, ``chrono_init``, ``use_bias``,
    ``use_recurrent_bias``, initialisers, ``dtype``, ``param_dtype``) go to every layer's cell.
    Gate traces hold :class:`~gatenets.LSTMGates` under ``"layer{k}/forward"`` and
    ``"layer{k}/backward"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> lstm = gatenets.LSTM(3, 8, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
      >>> y, trace = lstm(jnp.ones((4, 6, 3)), return_gates=True)
      >>> y.shape, sorted(trace.gates)[:2]
      ((4, 6, 16), ['layer0/backward', 'layer0/forward'])
    """
    gates_type = LSTMGates
    carry_type = LSTMCarry

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        proj_size: int | None = None,
        peephole: bool = False,
        forget_bias: float = 1.0,
        chrono_init: float | None = None,
        use_bias: bool = True,
        use_recurrent_bias: bool = False,
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
        if proj_size is not None and (not isinstance(proj_size, int) or proj_size <= 0):
            raise ValueError(f"proj_size must be a positive int or None; got {proj_size!r}.")
        if chrono_init is not None and not chrono_init > 2:
            raise ValueError(f"chrono_init (T_max) must be a number > 2; got {chrono_init!r}.")
        if chrono_init is not None and not use_bias:
            raise ValueError("chrono_init sets biases, so it needs use_bias=True.")
        self.proj_size = proj_size
        self.peephole = peephole
        self.use_bias = use_bias
        self.use_recurrent_bias = use_bias and use_recurrent_bias
        hidden = hidden_features
        recurrent_in = proj_size or hidden
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, 4 * hidden), param_dtype))
        self.recurrent_kernel = nnx.Param(
            fused_orthogonal(recurrent_kernel_init, rngs, recurrent_in, hidden, 4, param_dtype)
        )
        if use_bias:
            bias = bias_init(rngs.params(), (4 * hidden,), param_dtype)
            if chrono_init is not None:
                # Chrono init: forget biases spread over log-timescales, input bias opposite.
                u = jax.random.uniform(
                    rngs.params(), (hidden,), param_dtype, 1.0, chrono_init - 1.0
                )
                b_forget = jnp.log(u)
                bias = bias.at[hidden : 2 * hidden].set(b_forget).at[:hidden].set(-b_forget)
            else:
                bias = bias.at[hidden : 2 * hidden].add(forget_bias)
            self.bias = nnx.Param(bias)
            if self.use_recurrent_bias:
                self.recurrent_bias = nnx.Param(jnp.zeros((4 * hidden,), param_dtype))
        if peephole:
            self.peephole_weights = nnx.Param(jnp.zeros((3, hidden), param_dtype))
        if proj_size is not None:
            self.proj_kernel = nnx.Param(
                kernel_init(rngs.params(), (hidden, proj_size), param_dtype)
            )

    @property
    def output_features(self) -> int:
        return self.proj_size or self.hidden_features

    def carry_spec(self) -> dict[str, tuple[int, Any]]:
        dtype = self.compute_dtype
        return {"c": (self.hidden_features, state_dtype(dtype)), "h": (self.output_features, dtype)}

    def _input_bias(self, dtype) -> Array | None:
        if not self.use_bias:
            return None
        bias = self.bias[...]
        if self.use_recurrent_bias:
            bias = bias + self.recurrent_bias[...]
        return bias.astype(dtype)

    def kernel_unsupported(self) -> str | None:
        if self.peephole or self.proj_size is not None:
            return (
                "the fused LSTM kernel supports neither peephole nor proj_size; got "
                f"peephole={self.peephole!r}, proj_size={self.proj_size!r}"
            )
        return self.functions_unsupported()

    def kernel_operands(self, carry, dtype):
        return (self.recurrent_kernel[...].astype(dtype), carry.c, carry.h), {}

    def kernel_results(self, results, return_gates):
        c, h, hs, acts = results
        gates = None
        if return_gates:
            i, f, _, o = jnp.split(acts, 4, axis=-1)
            gates = LSTMGates(input=i, forget=f, output=o)
        return LSTMCarry(c=c, h=h), hs, gates

    def step(
        self,
        carry: LSTMCarry,
        projected: Array,
        *,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
    ) -> tuple[LSTMCarry, Array, LSTMGates]:
        """One sequential step from the projected input ``[batch, 4 * hidden]``.

        Returns:
          ``(new_carry, h, gates)``; ``h`` is ``[batch, hidden or proj]``.
        """
        dtype, state = projected.dtype, carry.c.dtype
        h_prev = recurrent_input(carry.h, recurrent_mask)
        # Compute-dtype operands, accumulated in the cell-state dtype (float32 under bf16
        # compute), where the gate math runs too.
        kernel = self.recurrent_kernel[...].astype(dtype)
        z = projected.astype(state) + mixed_matmul(h_prev, kernel, state, self.precision)
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        if self.peephole:
            peep = self.peephole_weights[...].astype(carry.c.dtype)
            zi = zi + jnp.broadcast_to(peep[0], zi.shape) * carry.c
            zf = zf + jnp.broadcast_to(peep[1], zf.shape) * carry.c
        overrides = gate_overrides or {}
        i = apply_override(self.gate_fn(zi), overrides.get("input"), "input")
        f = apply_override(self.gate_fn(zf), overrides.get("forget"), "forget")
        c = f * carry.c + i * self.activation_fn(zg)
        if self.peephole:
            zo = zo + jnp.broadcast_to(self.peephole_weights[2].astype(c.dtype), c.shape) * c
        o = apply_override(self.gate_fn(zo), overrides.get("output"), "output")
        gates = LSTMGates(input=i, forget=f, output=o)
        h = (o * self.activation_fn(c)).astype(dtype)
        if self.proj_size is not None:
            h = jnp.dot(h, self.proj_kernel[...].astype(dtype), precision=self.precision)
        return LSTMCarry(c=c, h=h), h, gates
