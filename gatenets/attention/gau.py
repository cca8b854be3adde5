"""The gated attention unit (GAU) of Hua et al. (2022): single-head squared-ReLU attention whose
output is gated by a SiLU (or sigmoid) branch of the same input."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gatenets import _layers
from gatenets._layers import scoped
from gatenets._typing import Array, Dtype, Initializer
from gatenets.attention import _common, _core
from gatenets.gates import GateOverride, apply_overrides, zero_invalid

U_GATE_KINDS = ("silu", "sigmoid")


class GAUGates(NamedTuple):
    """Post-sigmoid gate of :class:`GatedAttentionUnit`.

    Attributes:
      output: ``[batch, time, expansion_features]``, the sigmoid factor
        :math:`\\sigma(X W_u + b_u)` of the U branch that multiplies the attention output.
    """

    output: Array


class GatedAttentionUnit(nnx.Module):
    r"""Gated attention unit: one head of squared-ReLU attention, gated by a SiLU branch.

    One dense layer makes three branches from the input; Q and K are cheap per-dimension
    scale-and-offset views of the shared branch Z:

    .. math::
        [A_u, A_v, A_z] = X W + b \qquad (\text{widths } e, e, s) \\
        G = \sigma(A_u), \qquad U = A_u \odot G \ (\texttt{u\_gate="silu"})
            \quad\text{or}\quad U = G \ (\texttt{u\_gate="sigmoid"}) \\
        V = \operatorname{SiLU}(A_v), \qquad Z = \operatorname{SiLU}(A_z) \\
        Q = Z \odot \gamma_q + \beta_q, \qquad K = Z \odot \gamma_k + \beta_k \\
        A_{ij} = \frac{1}{n_i}\,\operatorname{relu}\!\Big(\frac{Q_i \cdot K_j}{\sqrt{s}}
            + r_{i-j}\Big)^2 \quad (j \text{ attended by } i,\ 0 \text{ otherwise}) \\
        O = (U \odot A V)\, W_o + b_o

    SiLU is :math:`a\,\sigma(a)`, so the U branch is a sigmoid gate times its own pre-activation;
    the gate returned and overridden is that sigmoid factor :math:`G`. With
    ``u_gate="sigmoid"`` the branch is the pure sigmoid gate (:math:`U = G`), the form of
    :class:`GatedAttention`'s output gate.

    Scaling of the attention kernel: the paper's pseudocode computes
    :math:`\operatorname{relu}(QK^\top/n + r)^2` with :math:`n` the padded sequence length. This
    layer divides the logits by :math:`\sqrt{s}` as standard attention does and divides the
    squared kernel by :math:`n_i`, the number of keys query :math:`i` actually attends to
    (valid keys, and only those up to :math:`i` when ``causal=True``). Why: with :math:`1/n`
    inside the square the kernel shrinks as :math:`1/n^2` and the logit scale depends on the
    sequence length; :math:`1/\sqrt{s}` keeps the logits :math:`O(1)` for any length, and
    dividing by :math:`n_i` makes each row an average over the keys the query sees, so the
    output scale neither grows with length nor changes with the amount of padding or with the
    query's position in a causal prefix. :math:`r_{i-j}` is a learned relative-position bias
    (distances clipped to ``max_relative_distance``; absent when that is None). The unit's
    pre-norm and residual connection are left to the enclosing block.

    Args:
      in_features: size of the last axis of the inputs (:math:`d`).
      expansion_features: width :math:`e` of U and V; defaults to ``2 * in_features``.
      qk_features: width :math:`s` of Z, Q and K (the paper uses 128).
      out_features: size of the output; defaults to ``in_features``.
      u_gate: ``"silu"`` (the paper) or ``"sigmoid"`` for the U branch.
      max_relative_distance: clip distance of the learned relative-position bias, or None for
        no position bias.
      use_bias: whether the two dense layers have biases.
      kernel_init: initialiser of the dense kernels.
      bias_init: initialiser of the dense biases.
      dtype: compute dtype; None promotes inputs and parameters. The attention kernel is
        computed in float32.
      param_dtype: dtype of the parameters.
      precision: matrix-product precision (:class:`jax.lax.Precision`) of the dense layers
        and of the attention's products, as in :class:`flax.nnx.Linear`; None is JAX's
        default.
      rope: rotary positions (:class:`~gatenets.RoPE`) on Q and K (the paper uses RoPE), or
        None.
      implementation: None to choose per call, ``"materialised"`` or ``"blockwise"``. The
        unit returns no weights, so by default it always runs blockwise: a ``lax.scan`` over
        key blocks whose memory grows linearly with the sequence length.
      block_size: query and key block length of the blockwise path.
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets import GatedAttentionUnit
      >>> gau = GatedAttentionUnit(8, qk_features=4, rngs=nnx.Rngs(0))
      >>> y, trace = gau(jnp.ones((2, 6, 8)), causal=True, return_gates=True)
      >>> y.shape, trace.gates["gau"].output.shape
      ((2, 6, 8), (2, 6, 16))

    References:
      Hua, Dai, Liu and Le, "Transformer Quality in Linear Time", ICML 2022, arXiv:2202.10447.
    """

    gate_names = ("output",)
    kind = "squared_relu"

    def __init__(
        self,
        in_features: int,
        *,
        expansion_features: int | None = None,
        qk_features: int = 128,
        out_features: int | None = None,
        u_gate: str = "silu",
        max_relative_distance: int | None = None,
        use_bias: bool = True,
        kernel_init: Initializer = _layers.default_kernel_init,
        bias_init: Initializer = _layers.default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rope: _core.RoPE | None = None,
        implementation: str | None = None,
        block_size: int = _core.DEFAULT_BLOCK_SIZE,
        rngs: nnx.Rngs,
    ):
        where = type(self).__name__
        _layers.check_int(in_features, "in_features", where=where)
        if expansion_features is None:
            expansion_features = 2 * in_features
        if out_features is None:
            out_features = in_features
        _layers.check_int(expansion_features, "expansion_features", where=where)
        _layers.check_int(qk_features, "qk_features", where=where)
        _layers.check_int(out_features, "out_features", where=where)
        if u_gate not in U_GATE_KINDS:
            raise ValueError(f"{where}: u_gate must be one of {U_GATE_KINDS}; got {u_gate!r}.")
        if max_relative_distance is not None:
            _layers.check_int(max_relative_distance, "max_relative_distance", where=where)
        self.in_features = in_features
        self.expansion_features = expansion_features
        self.qk_features = qk_features
        self.out_features = out_features
        self.u_gate = u_gate
        self.max_relative_distance = max_relative_distance
        self.dtype = dtype
        self.precision = precision
        self.rope = _core.check_rope(rope, qk_features, where)
        self.implementation = _core.check_implementation(implementation, self.kind, where)
        self.block_size = _core.check_block_size(block_size, where)

        dense = _layers.LinearSettings(
            use_bias, kernel_init, bias_init, dtype, param_dtype, precision, rngs
        ).factory(nnx.Linear)
        self.uvz = dense(in_features, 2 * expansion_features + qk_features)
        # Row 0 makes the query, row 1 the key; the small scale follows the paper's init.
        self.gamma = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (2, qk_features), param_dtype)
        )
        self.beta = nnx.Param(jnp.zeros((2, qk_features), param_dtype))
        self.relative_bias = nnx.data(
            nnx.Param(jnp.zeros((2 * max_relative_distance + 1,), param_dtype))
            if max_relative_distance is not None
            else None
        )
        self.out = dense(expansion_features, out_features)

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        mask: Array | None = None,
        seq_lengths: Array | None = None,
        causal: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
    ) -> Any:
        """Applies the unit to ``inputs``.

        Args:
          inputs: ``[batch, time, in_features]``.
          mask: ``[batch, time]`` booleans, True at real steps.
          seq_lengths: ``[batch]`` integers, the alternative to ``mask`` for right padding.
          causal: if True, step t attends to steps up to t only (static).
          return_gates: also return a :class:`~gatenets.GateTrace` with the gate under the
            path ``"gau"`` (static).
          gate_overrides: ``{"output": constant_or_function}`` replacing the sigmoid factor
            :math:`G` of the U branch.

        Returns:
          ``[batch, time, out_features]`` (zero at padded steps), or ``(output, trace)``.
        """
        batch, time = _layers.check_sequence_call(
            self, inputs, gate_overrides, self.gate_names, causal=causal, return_gates=return_gates
        )
        masks = _common.attention_masks(
            batch, time, mask=mask, seq_lengths=seq_lengths, causal=causal
        )
        inputs = zero_invalid(masks.valid, inputs)

        e = self.expansion_features
        pre_u, pre_v, pre_z = jnp.split(self.uvz(inputs), [e, 2 * e], axis=-1)
        gates = apply_overrides(GAUGates(jax.nn.sigmoid(pre_u)), gate_overrides)
        gate = gates.output.astype(pre_u.dtype)
        u = pre_u * gate if self.u_gate == "silu" else gate
        v = jax.nn.silu(pre_v)
        z = jax.nn.silu(pre_z)
        gamma = self.gamma[...].astype(z.dtype)[:, None, None, :]
        beta = self.beta[...].astype(z.dtype)[:, None, None, :]
        query = z * gamma[0] + beta[0]
        key = z * gamma[1] + beta[1]

        if self.rope is not None:
            positions = jnp.arange(time)
            query = self.rope.apply(query[:, :, None], positions)[:, :, 0]
            key = self.rope.apply(key[:, :, None], positions)[:, :, 0]
        path = _core.choose_path(
            kind=self.kind,
            weights_needed=False,
            implementation=self.implementation,
            dtype=query.dtype,
            head_dim=self.qk_features,
            has_holes=masks.has_holes,
            where=type(self).__name__,
            logits_bytes=4 * query.shape[0] * time * time,
        )
        if path == "materialised":
            attended = self._materialised(query, key, v, masks)
        else:
            kernel = _core.BlockwiseKernel(
                "squared_relu",
                1.0 / math.sqrt(self.qk_features),
                relative_bias=None
                if self.relative_bias is None
                else self.relative_bias[...].astype(jnp.float32),
                row_scale=1.0 / masks.counts,
            )
            attended = _core.blockwise_attention(
                query[:, :, None],
                key[:, :, None],
                v[:, :, None],
                kernel,
                key_valid=masks.key_valid,
                causal=causal,
                block_size=self.block_size,
                precision=self.precision,
            )[:, :, 0]
        output = zero_invalid(masks.valid, self.out(u * attended))
        if not return_gates:
            return output
        return output, _layers.gate_trace({"gau": gates}, masks.valid, batch, time)

    def _materialised(self, query: Array, key: Array, v: Array, masks: _common.Masks) -> Array:
        """``[batch, time, expansion_features]`` attention output with the whole ``[query,
        key]`` kernel in one array."""
        time = query.shape[1]
        # The kernel in float32: squaring doubles the exponent range a bfloat16 logit needs.
        logits = _common.float32_logits("bqs,bks->bqk", query, key, self.precision)
        logits = logits / math.sqrt(self.qk_features)
        if self.relative_bias is not None:
            logits = logits + self._relative_bias(time)[None]
        kernel = jnp.square(jax.nn.relu(logits))
        allowed = masks.allowed(time, time)
        if allowed is not None:
            kernel = jnp.where(allowed[:, 0], kernel, 0.0)
        kernel = kernel / masks.counts[:, :, None]
        return jnp.einsum("bqk,bke->bqe", kernel.astype(v.dtype), v, precision=self.precision)

    def _relative_bias(self, time: int) -> Array:
        """``[query, key]`` learned bias of the clipped distance ``query - key``."""
        distance = self.max_relative_distance
        offsets = jnp.arange(time)[:, None] - jnp.arange(time)[None, :]
        index = jnp.clip(offsets, -distance, distance) + distance
        return self.relative_bias[...].astype(jnp.float32)[index]
