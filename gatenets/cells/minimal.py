"""minGRU and minLSTM (Feng et al., 2024): gates that read only the input, trained in parallel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import initializers

from gatenets._typing import Array, Dtype, Initializer, PrecisionLike
from gatenets.cells.diagonal import DiagonalCell
from gatenets.gates import GateOverride, apply_override


class MinGRUGates(NamedTuple):
    """minGRU's post-sigmoid gate, ``[..., hidden]`` (``[batch, time, hidden]`` in a trace).

    ``retention``: one minus the update gate multiplies the state (:math:`h_t = (1 - z_t)
    \\odot h_{t-1} + \\dots`): the gate is what a unit writes, not what it keeps.
    """

    retention = {"update": "write"}

    update: Array


class MinLSTMGates(NamedTuple):
    """minLSTM's normalised gates :math:`f'_t, i'_t` (they sum to one), each ``[..., hidden]``.

    ``retention``: :math:`f'_t` multiplies the state (:math:`h_t = f'_t \\odot h_{t-1} + \\dots`).
    """

    retention = {"forget": "keep"}

    forget: Array
    input: Array


class _MinimalCell(DiagonalCell):
    """What minGRU and minLSTM share: one input kernel of ``num_blocks`` gate/candidate blocks."""

    num_blocks: ClassVar[int]

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
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
        self.use_bias = use_bias
        shape = (in_features, self.num_blocks * hidden_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), shape[1:], param_dtype))


class MinGRUCell(_MinimalCell):
    r"""minGRU (Feng et al., 2024): a GRU whose update gate and candidate read only the input.

    .. math::
        z_t = \sigma(W_z x_t + b_z) \\
        \tilde h_t = W_h x_t + b_h \\
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    Because nothing inside the gates depends on :math:`h_{t-1}`, a whole sequence is one linear
    recurrence; ``loop="associative"`` solves it with a log-space associative scan
    (:math:`\log(1 - z_t) = -\mathrm{softplus}(W_z x_t + b_z)` exactly), ``loop="scan"``
    with ``lax.scan``, one multiply-add per step. The parallel scan trades more work for
    :math:`O(\log T)` depth, which pays only where enough cores run it at once: on a CPU the
    ``"scan"`` loop is the faster (``benchmarks/parallel_scan.py``). The candidate is the
    paper's plain linear map: the scan handles signed values, so
    the positivity activation of the paper's log-space variant is not needed.

    ``kernel`` is ``[in_features, 2 * hidden]`` with blocks in the order ``z, h̃``; the gate
    override name is ``"update"``.

    Args:
      in_features: size of the last axis of each input step.
      hidden_features: size of the hidden state.
      use_bias: whether the projections have a bias.
      kernel_init: initialiser of the input kernel.
      bias_init: initialiser of the bias.
      dtype: dtype of the matmul (the recurrence runs in float32).
      param_dtype: dtype of the parameters.
      precision: precision of the cell's matmuls, as Flax's ``Linear`` takes it (None: JAX's
        default, which is TF32 for float32 on NVIDIA GPUs; ``"highest"`` for full float32).
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> rnn = gatenets.RNN(gatenets.MinGRUCell(3, 4, rngs=nnx.Rngs(0)))
      >>> y, trace = rnn(jnp.ones((2, 6, 3)), return_gates=True)
      >>> y.shape, trace.gates["forward"].update.shape
      ((2, 6, 4), (2, 6, 4))

    References:
      Feng, Tung, Ahmed, Bengio, Hajimirsadeghi, "Were RNNs All We Needed?", 2024.
    """

    family = "mingru"
    layer_doc = """A (stacked, optionally bidirectional) minGRU layer.

    Each layer is a :class:`~gatenets.MinGRUCell` run by :class:`~gatenets.RNN`; arguments are
    those of :class:`~gatenets.RecurrentStack`, and the cell's own (``use_bias``,
    initialisers, ``dtype``, ``param_dtype``) go to every layer's cell. Gate traces hold
    :class:`~gatenets.MinGRUGates` under ``"layer{k}/forward"`` / ``"layer{k}/backward"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> model = gatenets.MinGRU(3, 8, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
      >>> y, trace = model(jnp.ones((4, 6, 3)), seq_lengths=jnp.array([6, 5, 1, 0]),
      ...                  return_gates=True)
      >>> y.shape, sorted(trace.flat())[0]
      ((4, 6, 16), 'layer0/backward/update')
    """
    gates_type = MinGRUGates

    num_blocks = 2

    def coefficients(
        self, projected: Array, gate_overrides: Mapping[str, GateOverride] | None
    ) -> tuple[Array, Array, MinGRUGates]:
        """``(log(1 - z), z * h̃, gates)`` from the projected input ``[..., 2 * hidden]``."""
        k_z, candidate = jnp.split(projected.astype(jnp.float32), 2, axis=-1)
        update = jax.nn.sigmoid(k_z)
        override = (gate_overrides or {}).get("update")
        if override is None:
            log_keep = -jax.nn.softplus(k_z)
        else:
            update = apply_override(update, override, "update")
            log_keep = jnp.log1p(-update)
        gates = MinGRUGates(update=update.astype(projected.dtype))
        return log_keep, update * candidate, gates


class MinLSTMCell(_MinimalCell):
    r"""minLSTM (Feng et al., 2024): an LSTM whose gates read only the input, normalised to sum
    to one so the state stays on the scale of its inputs at any sequence length.

    .. math::
        f_t = \sigma(W_f x_t + b_f), \quad i_t = \sigma(W_i x_t + b_i) \\
        f'_t = \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t} \\
        \tilde h_t = W_h x_t + b_h \\
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

    The normalised gates :math:`f'_t, i'_t` are what the cell returns as its gates and what
    overrides replace (names ``"forget"``, ``"input"``). The decay is computed in log space,
    :math:`\log f'_t = \log\sigma(\cdot) - \operatorname{logaddexp}(\log f_t, \log i_t)`.
    ``kernel`` is ``[in_features, 3 * hidden]`` with blocks ``f, i, h̃``.

    Args:
      in_features: size of the last axis of each input step.
      hidden_features: size of the hidden state.
      use_bias: whether the projections have a bias.
      kernel_init: initialiser of the input kernel.
      bias_init: initialiser of the bias.
      dtype: dtype of the matmul (the recurrence runs in float32).
      param_dtype: dtype of the parameters.
      precision: precision of the cell's matmuls, as Flax's ``Linear`` takes it (None: JAX's
        default, which is TF32 for float32 on NVIDIA GPUs; ``"highest"`` for full float32).
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> rnn = gatenets.RNN(gatenets.MinLSTMCell(3, 4, rngs=nnx.Rngs(0)))
      >>> y, trace = rnn(jnp.ones((2, 6, 3)), return_gates=True)
      >>> g = trace.gates["forward"]
      >>> bool(jnp.allclose(g.forget + g.input, 1.0))
      True

    References:
      Feng, Tung, Ahmed, Bengio, Hajimirsadeghi, "Were RNNs All We Needed?", 2024.
    """

    family = "minlstm"
    layer_doc = """A (stacked, optionally bidirectional) minLSTM layer.

    Each layer is a :class:`~gatenets.MinLSTMCell` run by :class:`~gatenets.RNN`; arguments are
    those of :class:`~gatenets.RecurrentStack`, and the cell's own (``use_bias``,
    initialisers, ``dtype``, ``param_dtype``) go to every layer's cell. Gate traces hold
    :class:`~gatenets.MinLSTMGates` under ``"layer{k}/forward"`` / ``"layer{k}/backward"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> model = gatenets.MinLSTM(3, 8, num_layers=2, rngs=nnx.Rngs(0))
      >>> model(jnp.ones((4, 6, 3)), gate_overrides={"layer1": {"forget": 1.0}}).shape
      (4, 6, 8)
    """
    gates_type = MinLSTMGates

    num_blocks = 3

    def coefficients(
        self, projected: Array, gate_overrides: Mapping[str, GateOverride] | None
    ) -> tuple[Array, Array, MinLSTMGates]:
        """``(log f', i' * h̃, gates)`` from the projected input ``[..., 3 * hidden]``."""
        k_f, k_i, candidate = jnp.split(projected.astype(jnp.float32), 3, axis=-1)
        log_f = jax.nn.log_sigmoid(k_f)
        log_i = jax.nn.log_sigmoid(k_i)
        log_total = jnp.logaddexp(log_f, log_i)
        log_forget = log_f - log_total
        forget, input_ = jnp.exp(log_forget), jnp.exp(log_i - log_total)
        overrides = gate_overrides or {}
        if overrides.get("forget") is not None:
            forget = apply_override(forget, overrides["forget"], "forget")
            log_forget = jnp.log(forget)
        input_ = apply_override(input_, overrides.get("input"), "input")
        gates = MinLSTMGates(
            forget=forget.astype(projected.dtype), input=input_.astype(projected.dtype)
        )
        return log_forget, input_ * candidate, gates
