"""Sigmoid attention (Ramapuram et al., 2024): each attention weight is an independent sigmoid
gate on one key, with no normalisation across the row."""

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


class SigmoidAttentionGates(NamedTuple):
    """The attention weights of :class:`SigmoidAttention`, which are sigmoid gates.

    Attributes:
      weights: ``[batch, time, heads, key_time]``: the gate of query step ``time`` in head
        ``heads`` on key step ``key_time``; exactly 0 where the key is masked (padding, or the
        future when causal).
    """

    weights: Array


class SigmoidAttention(_common.MultiHeadSelfAttention):
    r"""Multi-head self-attention whose weights are elementwise sigmoids, not a softmax.

    .. math::
        Q_h = X W^Q_h,\quad K_h = X W^K_{g(h)},\quad V_h = X W^V_{g(h)} \\
        S_{h,ij} = \sigma\!\Big(\frac{Q_{h,i} \cdot K_{h,j}}{\sqrt{d_{head}}} + b_i\Big)
            \quad (j \text{ attended by } i,\ 0 \text{ otherwise}) \\
        Y_{h,i} = \sum_j S_{h,ij}\, V_{h,j} \\
        O = [Y_1, \dots, Y_H]\, W^O + b^O

    There is no row normalisation: each :math:`S_{h,ij} \in (0, 1)` gates one key, and these
    weights are the layer's gates. Ramapuram et al. show the bias :math:`b = -\log n` (with
    :math:`n` the sequence length) is what makes sigmoid attention train like softmax attention:
    it keeps the sum of a row near its softmax value of 1 at initialisation. By default this
    layer takes :math:`n_i` to be the number of keys query :math:`i` attends to: the sequence
    length for unpadded non-causal inputs (the paper's choice), the number of valid keys with
    padding, and the :math:`i + 1` visible keys when ``causal=True``. Pass a float
    ``attention_bias`` for a constant bias instead (e.g. ``-math.log(context_length)``, the
    paper's setting for causal language models).

    Args:
      in_features: size of the last axis of the inputs.
      num_heads: number of query heads.
      head_dim: size of each head; defaults to ``in_features // num_heads``, which must divide.
      num_kv_heads: number of key/value heads (must divide ``num_heads``).
      attention_bias: None for :math:`b_i = -\log n_i`, or a float constant bias.
      out_features: size of the output; defaults to ``in_features``.
      use_bias: whether the projections have biases.
      kernel_init: initialiser of the projection kernels.
      bias_init: initialiser of the projection biases.
      dtype: compute dtype; None promotes inputs and parameters. Logits and sigmoids are
        computed in float32.
      param_dtype: dtype of the parameters.
      precision: matrix-product precision (:class:`jax.lax.Precision`) of the projections
        and of the attention's products, as in :class:`flax.nnx.Linear`; None is JAX's
        default.
      rope: rotary positions (:class:`~gatenets.RoPE`) applied to queries and keys, or None.
      implementation: None to choose per call, ``"materialised"`` or ``"blockwise"``.
      block_size: query and key block length of the blockwise path.
      rngs: random streams for parameter initialisation.

    Paths: the weights are the gates, so ``return_gates``, ``return_attention_weights`` or a
    ``gate_overrides`` entry computes them as one ``[batch, query, heads, key]`` array
    (``"materialised"``). Otherwise a blockwise sum over key blocks (FlashSigmoid's
    computation, Ramapuram et al., 2024, as a ``lax.scan``) keeps memory linear in the
    sequence length; both give the same values and gradients. Decoding: :meth:`init_cache`
    then ``decode=True``, one step per call.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets import SigmoidAttention
      >>> layer = SigmoidAttention(8, 2, rngs=nnx.Rngs(0))
      >>> y, trace = layer(jnp.ones((1, 4, 8)), return_gates=True)
      >>> weights = trace.gates["attention"].weights
      >>> weights.shape, bool(jnp.all((weights > 0) & (weights < 1)))
      ((1, 4, 2, 4), True)

    References:
      Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid Self-Attention",
      ICLR 2025, arXiv:2409.04431.
    """

    gate_names = ("weights",)
    kind = "sigmoid"

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        num_kv_heads: int | None = None,
        attention_bias: float | None = None,
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
        if attention_bias is not None and not (
            isinstance(attention_bias, int | float)
            and not isinstance(attention_bias, bool)
            and math.isfinite(attention_bias)
        ):
            raise ValueError(
                f"{type(self).__name__}: attention_bias must be None (for -log of the number "
                f"of attended keys) or a finite float; got {attention_bias!r}."
            )
        settings = _layers.LinearSettings(
            use_bias, kernel_init, bias_init, dtype, param_dtype, precision, rngs
        )
        self._build_heads(
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
        self.attention_bias = None if attention_bias is None else float(attention_bias)

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
        """Attends over ``inputs`` with sigmoid weights.

        Args:
          inputs: ``[batch, time, in_features]``.
          mask: ``[batch, time]`` booleans, True at real steps.
          seq_lengths: ``[batch]`` integers, the alternative to ``mask`` for right padding.
          causal: if True, step t attends to steps up to t only (static).
          return_gates: also return a :class:`~gatenets.GateTrace` with the weights under the
            path ``"attention"`` (static).
          return_attention_weights: also return the weights as ``[batch, heads, query, key]``,
            the layout of :class:`GatedAttention` (static).
          gate_overrides: ``{"weights": constant_or_function}`` replacing the sigmoid weights;
            masked keys stay at 0 whatever the override.
          decode: autoregressive decoding (static): ``inputs`` is one step ``[batch, 1,
            in_features]`` attending to the cache made by :meth:`init_cache` (causal by
            construction; ``causal`` is not consulted); :math:`n_i` is the number of cached
            steps it sees. Gates and weights are the new step's, over the cache's slots.

        Returns:
          ``[batch, time, out_features]`` (zero at padded steps); with ``return_gates``,
          ``(output, trace)``; with ``return_attention_weights`` the weights are appended.
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

    def _weights_needed(
        self, return_gates: bool, return_attention_weights: bool, gate_overrides: Any
    ) -> bool:
        # The weights are the gates: returning or overriding them needs them all at once.
        return return_gates or return_attention_weights or bool(gate_overrides)

    def _row_bias(self, masks: _common.Masks) -> Any:
        """``[batch, query]`` :math:`-\\log n_i`, or the constant bias."""
        if self.attention_bias is None:
            return -jnp.log(masks.counts)
        return self.attention_bias

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
        row_bias = self._row_bias(masks)
        if path != "materialised":
            kernel = _core.BlockwiseKernel("sigmoid", 1.0 / math.sqrt(self.head_dim), row_bias)
            return self._attention(query, key, value, masks, path, kernel), {}, None
        key = _common.repeat_kv(key, self.num_heads)
        value = _common.repeat_kv(value, self.num_heads)
        # Gate layout [batch, query, heads, key]: batch and time first, as every gate trace.
        logits = _common.float32_logits("bqhd,bkhd->bqhk", query, key, self.precision)
        logits = logits / math.sqrt(self.head_dim)
        logits = logits + (row_bias[:, :, None, None] if jnp.ndim(row_bias) else row_bias)
        gates = apply_overrides(SigmoidAttentionGates(jax.nn.sigmoid(logits)), gate_overrides)
        weights = gates.weights
        allowed = masks.allowed(query.shape[1], key.shape[1])
        if allowed is not None or masks.valid is not None:
            allowed = True if allowed is None else jnp.swapaxes(allowed, 1, 2)
            if masks.valid is not None:
                allowed = allowed & masks.valid[:, :, None, None]
            weights = jnp.where(allowed, weights, 0.0)
            gates = SigmoidAttentionGates(weights)
        heads = jnp.einsum(
            "bqhk,bkhd->bqhd", weights.astype(value.dtype), value, precision=self.precision
        )
        return heads, {"attention": gates}, weights

    def _returned_weights(self, weights: Array, masks: _common.Masks) -> Array:
        return jnp.transpose(weights, (0, 2, 1, 3))
