"""Multi-head softmax attention with a sigmoid gate on each head's output (Qiu et al., 2025)."""

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
from gatenets.gates import GateOverride, apply_overrides

GATE_KINDS = ("elementwise", "headwise")


class GatedAttentionGates(NamedTuple):
    """Post-sigmoid gate of :class:`GatedAttention` on the attention output.

    Attributes:
      output: ``[batch, time, heads, head_dim]`` with ``gate="elementwise"``, or
        ``[batch, time, heads]`` with ``gate="headwise"``; ``time`` is the query position.
    """

    output: Array


def softmax_attention(
    query: Array, key: Array, value: Array, allowed: Array | None, precision: Any = None
) -> tuple[Array, Array]:
    """Scaled dot-product attention over heads.

    Args:
      query, key, value: ``[batch, time, heads, head_dim]`` (keys and values already repeated
        to ``heads`` for grouped-query layouts).
      allowed: ``[batch, 1, query, key]`` True where a query may attend to a key, or None.
      precision: passed to the two matrix products.

    Returns:
      ``([batch, time, heads, head_dim]`` output in the dtype of ``value``,
      ``[batch, heads, query, key]`` float32 weights).
    """
    # Logits and softmax in float32 whatever the compute dtype: in bfloat16 a row of
    # near-equal logits loses the differences that the softmax exists to amplify.
    scale = 1.0 / math.sqrt(query.shape[-1])
    logits = _common.float32_logits("bqhd,bkhd->bhqk", query, key, precision) * scale
    if allowed is not None:
        logits = jnp.where(allowed, logits, _common.masked_fill_value(jnp.float32))
    weights = jax.nn.softmax(logits, axis=-1)
    output = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value, precision=precision)
    return output, weights


class GatedAttention(_common.MultiHeadSelfAttention):
    r"""Multi-head self-attention with a query-dependent sigmoid gate after SDPA.

    The gate of Qiu et al. (2025) multiplies each head's attention output, before the output
    projection, by a sigmoid of a linear map of the same input that made the query:

    .. math::
        Q_h = X W^Q_h,\quad K_h = X W^K_{g(h)},\quad V_h = X W^V_{g(h)} \\
        Y_h = \operatorname{softmax}\!\Big(\frac{Q_h K_h^\top}{\sqrt{d_{head}}} + M\Big) V_h \\
        G_h = \sigma(X W^G_h + b^G_h) \\
        Y'_h = Y_h \odot G_h \\
        O = [Y'_1, \dots, Y'_H]\, W^O + b^O

    The biases of Q, K and V (``use_bias=True``) are left out of the equations.
    :math:`M` is 0 where a query may see a key and :math:`-\infty` elsewhere (padding, and the
    future when ``causal=True``); :math:`g(h)` maps a query head to its key/value head
    (grouped-query attention when ``num_kv_heads < num_heads``, consecutive query heads sharing
    one key/value head). With ``gate="elementwise"`` :math:`G_h` has one value per head dimension
    (``[batch, time, heads, head_dim]``); with ``gate="headwise"`` one per head
    (``[batch, time, heads]``), broadcast over the head's dimensions. The paper finds the gate
    sparse (mean about 0.1-0.2 after training) and that it removes the attention sink on the
    first token. ``gate=None`` builds the same layer without :math:`W^G`: plain multi-head
    attention whose ``query``/``key``/``value``/``out`` parameters have the shapes and names of
    :class:`flax.nnx.MultiHeadAttention`, so weights copy across.

    Padded steps (``mask`` / ``seq_lengths``) are zeroed before the projections, are never
    attended to, and their outputs are zero. Returned gates are the values actually used, after
    ``gate_overrides``.

    Args:
      in_features: size of the last axis of the inputs.
      num_heads: number of query heads.
      head_dim: size of each head; defaults to ``in_features // num_heads``, which must divide.
      num_kv_heads: number of key/value heads (must divide ``num_heads``); defaults to
        ``num_heads``.
      gate: ``"elementwise"``, ``"headwise"`` or None (no gate).
      out_features: size of the output; defaults to ``in_features``.
      use_bias: whether the projections (gate included) have biases, as in Flax.
      kernel_init: initialiser of the projection kernels.
      bias_init: initialiser of the biases (zeros: every gate starts at 0.5).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); None promotes inputs and parameters. The
        attention logits and softmax are always computed in float32.
      param_dtype: dtype of the parameters.
      precision: matrix-product precision (:class:`jax.lax.Precision`) of every projection
        and of the attention's own products on the materialised and blockwise paths, as in
        :class:`flax.nnx.Linear`; None is JAX's default (TF32 for float32 on NVIDIA GPUs).
        cuDNN's fused kernel (:func:`jax.nn.dot_product_attention`) takes no precision: it
        computes in bfloat16/float16 with float32 accumulation.
      rope: rotary positions (:class:`~gatenets.RoPE`) applied to queries and keys, or None.
      implementation: None to choose per call, or ``"materialised"``, ``"blockwise"`` or
        ``"cudnn"`` (see below).
      block_size: query and key block length of the blockwise path.
      rngs: random streams for parameter initialisation.

    Paths: with ``return_attention_weights=True`` the ``[batch, heads, query, key]`` weights
    are computed as one array (``"materialised"``). Otherwise the layer runs cuDNN's fused
    softmax kernel when it applies (NVIDIA GPU, bfloat16/float16, no ``mask`` with holes) and
    else a blockwise online softmax whose memory grows linearly with the sequence length, so
    the gates of a long sequence cost no ``[T, T]`` array. All paths compute the same function
    (tested to float rounding, values and gradients).

    Decoding: :meth:`init_cache` then ``decode=True`` one step at a time, as
    :class:`flax.nnx.MultiHeadAttention`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets import GatedAttention
      >>> layer = GatedAttention(8, 2, gate="headwise", rngs=nnx.Rngs(0))
      >>> x = jnp.ones((1, 5, 8))
      >>> y, trace = layer(x, causal=True, return_gates=True)
      >>> y.shape, trace.gates["attention"].output.shape, trace.mask.shape
      ((1, 5, 8), (1, 5, 2), (1, 5))
      >>> y_off = layer(x, causal=True, gate_overrides={"output": 0.0})
      >>> bool(jnp.all(y_off == layer.out.bias[...][None, None]))  # every head gated shut
      True
      >>> layer.init_cache((1, 16, 8))  # decode one step at a time
      >>> y_step, step_trace = layer(x[:, :1], decode=True, return_gates=True)
      >>> bool(jnp.allclose(y_step, y[:, :1], atol=1e-6))
      True
      >>> step_trace.gates["attention"].output.shape
      (1, 1, 2)

    References:
      Qiu et al., "Gated Attention for Large Language Models: Non-linearity, Sparsity, and
      Attention-Sink-Free", 2025, arXiv:2505.06708.
    """

    gate_names = ("output",)
    kind = "softmax"

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        num_kv_heads: int | None = None,
        gate: str | None = "elementwise",
        out_features: int | None = None,
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
        if gate is not None and gate not in GATE_KINDS:
            raise ValueError(
                f"{type(self).__name__}: gate must be one of {GATE_KINDS} or None; got {gate!r}."
            )
        settings = _layers.LinearSettings(
            use_bias, kernel_init, bias_init, dtype, param_dtype, precision, rngs
        )
        project = self._build_heads(
            in_features,
            num_heads,
            head_dim,
            num_kv_heads,
            out_features,
            settings,
            rope=rope,
            implementation=implementation,
            block_size=block_size,
        )
        self.gate_kind = gate
        gate_shape = {"elementwise": (self.num_heads, self.head_dim), "headwise": (self.num_heads,)}
        self.gate = nnx.data(project(gate_shape[gate]) if gate is not None else None)

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        mask: Array | None = None,
        seq_lengths: Array | None = None,
        causal: bool = False,
        return_gates: bool = False,
        return_attention_weights: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        decode: bool = False,
    ) -> Any:
        """Attends over ``inputs`` and gates each head's output.

        Args:
          inputs: ``[batch, time, in_features]``.
          mask: ``[batch, time]`` booleans, True at real steps (keys and queries alike).
          seq_lengths: ``[batch]`` integers, the alternative to ``mask`` for right padding.
          causal: if True, the query at step t sees keys at steps up to t only (static).
          return_gates: also return a :class:`~gatenets.GateTrace` with the gate under the
            path ``"attention"`` (static); with ``gate=None`` the trace holds no gates.
          return_attention_weights: also return the softmax weights (static).
          gate_overrides: ``{"output": constant_or_function}`` replacing the gate in the
            computation (an error when ``gate=None``, which has no gate).
          decode: autoregressive decoding (static): ``inputs`` is one step ``[batch, 1,
            in_features]``, its key and value are written to the cache made by
            :meth:`init_cache`, and it attends to the cached steps (causal by construction;
            ``causal`` is not consulted). The gate and weights returned are the new step's;
            the weights' key axis is the cache's slots.

        Returns:
          ``[batch, time, out_features]``; with ``return_gates``, ``(output, trace)``; with
          ``return_attention_weights``, the ``[batch, heads, query, key]`` float32 weights
          are appended: ``(output, weights)`` or ``(output, trace, weights)``.
        """
        return self._attend_call(
            inputs,
            mask=mask,
            seq_lengths=seq_lengths,
            causal=causal,
            return_gates=return_gates,
            return_attention_weights=return_attention_weights,
            gate_overrides=gate_overrides,
            decode=decode,
        )

    def _gate_names_in_use(self) -> tuple[str, ...]:
        # gate=None leaves nothing to override: any name in gate_overrides is an error.
        return self.gate_names if self.gate is not None else ()

    def _weights_needed(
        self, return_gates: bool, return_attention_weights: bool, gate_overrides: Any
    ) -> bool:
        return return_attention_weights

    def _attend(
        self,
        inputs: Array,
        masks: _common.Masks,
        query: Array,
        key: Array,
        value: Array,
        gate_overrides: Mapping[str, GateOverride] | None,
        path: str,
    ) -> tuple[Array, dict[str, Any], Any]:
        if path == "materialised":
            allowed = masks.allowed(query.shape[1], key.shape[1])
            heads, weights = softmax_attention(
                query,
                _common.repeat_kv(key, self.num_heads),
                _common.repeat_kv(value, self.num_heads),
                allowed,
                self.precision,
            )
        else:
            kernel = _core.BlockwiseKernel("softmax", 1.0 / math.sqrt(self.head_dim))
            heads, weights = self._attention(query, key, value, masks, path, kernel), None
        if self.gate is None:
            return heads, {}, weights
        gates = GatedAttentionGates(jax.nn.sigmoid(self.gate(inputs)))
        gates = apply_overrides(gates, gate_overrides)
        gate = gates.output if self.gate_kind == "elementwise" else gates.output[..., None]
        return heads * gate.astype(heads.dtype), {"attention": gates}, weights

    def _returned_weights(self, weights: Array, masks: _common.Masks) -> Array:
        if masks.valid is not None:
            weights = jnp.where(masks.valid[:, None, :, None], weights, 0.0)
        return weights
