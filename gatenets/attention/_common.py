"""Masks and head bookkeeping shared by the attention layers (the checks every layer shares
are in :mod:`gatenets._layers`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx

from gatenets._layers import (
    LinearSettings,
    check_positive_int,
    check_sequence_call,
    gate_trace,
    zero_padding,
)
from gatenets._typing import Array
from gatenets.gates import sequence_mask


class HeadLayout(NamedTuple):
    """Resolved head sizes of a multi-head layer."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


def resolve_heads(
    in_features: int, num_heads: int, head_dim: int | None, num_kv_heads: int | None, where: str
) -> HeadLayout:
    """Validates the head arguments of a multi-head layer and fills in the defaults."""
    check_positive_int(in_features, "in_features", where)
    check_positive_int(num_heads, "num_heads", where)
    if head_dim is None:
        if in_features % num_heads:
            raise ValueError(
                f"{where}: num_heads must divide in_features when head_dim is not given; got "
                f"num_heads={num_heads} and in_features={in_features}. Pass head_dim explicitly "
                f"or choose num_heads among the divisors of {in_features}."
            )
        head_dim = in_features // num_heads
    check_positive_int(head_dim, "head_dim", where)
    if num_kv_heads is None:
        num_kv_heads = num_heads
    check_positive_int(num_kv_heads, "num_kv_heads", where)
    if num_heads % num_kv_heads:
        raise ValueError(
            f"{where}: num_kv_heads must divide num_heads (each key/value head serves a group of "
            f"query heads); got num_kv_heads={num_kv_heads} and num_heads={num_heads}."
        )
    return HeadLayout(num_heads, num_kv_heads, head_dim)


def repeat_kv(x: Array, num_heads: int) -> Array:
    """``[batch, time, kv_heads, d]`` -> ``[batch, time, heads, d]``, each kv head repeated for
    its group of consecutive query heads (the grouped-query layout of Ainslie et al., 2023)."""
    groups = num_heads // x.shape[2]
    return x if groups == 1 else jnp.repeat(x, groups, axis=2)


class Masks(NamedTuple):
    """The masks of one self-attention call.

    Attributes:
      valid: ``[batch, time]`` True at real steps, or None when every step is real.
      allowed: ``[batch, 1, query, key]`` True where a query may attend to a key, or None when
        every query may attend to every key.
    """

    valid: Array | None
    allowed: Array | None


def attention_masks(
    batch: int, time: int, *, mask: Array | None, seq_lengths: Array | None, causal: bool
) -> Masks:
    """Combines a padding mask over keys with the causal mask."""
    valid = sequence_mask(batch, time, seq_lengths=seq_lengths, mask=mask)
    allowed = None
    if valid is not None:
        allowed = valid[:, None, None, :]
    if causal:
        lower = jnp.tril(jnp.ones((time, time), bool))[None, None]
        allowed = lower if allowed is None else allowed & lower
    if allowed is not None:
        allowed = jnp.broadcast_to(allowed, (batch, 1, time, time))
    return Masks(valid, allowed)


def zero_invalid_queries(outputs: Array, valid: Array | None) -> Array:
    """Zeros outputs at padded query steps: they attend to nothing real and mean nothing."""
    if valid is None:
        return outputs
    expand = (slice(None), slice(None)) + (None,) * (outputs.ndim - 2)
    return jnp.where(valid[expand], outputs, jnp.zeros((), outputs.dtype))


def attended_key_counts(masks: Masks, batch: int, time: int) -> Array:
    """``[batch, 1, query, 1]`` number of keys each query attends to (at least 1), float32."""
    if masks.allowed is None:
        return jnp.full((batch, 1, time, 1), float(time), jnp.float32)
    counts = jnp.sum(masks.allowed, axis=-1, keepdims=True, dtype=jnp.float32)
    return jnp.maximum(counts, 1.0)


def float32_logits(spec: str, query: Array, key: Array, precision: Any) -> Array:
    """``jnp.einsum(spec, query, key)`` accumulated and returned in float32 whatever the
    compute dtype: attention logits are small differences that bfloat16 would round away."""
    return jnp.einsum(spec, query, key, precision=precision, preferred_element_type=jnp.float32)


def masked_fill_value(dtype: Any) -> float:
    """A large negative logit for masked keys: finite, so a fully masked row gives no NaN."""
    return float(jnp.finfo(dtype).min)


class MultiHeadSelfAttention(nnx.Module):
    """The query, key, value and output projections of multi-head self-attention, and the call
    every such layer makes around its own attention (base of ``GatedAttention`` and
    ``SigmoidAttention``).

    A subclass makes its projections with :meth:`_build_heads` and implements :meth:`_attend`
    and :meth:`_returned_weights`; its ``__call__`` hands its arguments to :meth:`_attend_call`.
    """

    def _build_heads(
        self,
        in_features: int,
        num_heads: int,
        head_dim: int | None,
        num_kv_heads: int | None,
        out_features: int | None,
        settings: LinearSettings,
    ) -> Callable[[tuple[int, ...]], nnx.LinearGeneral]:
        """Checks the sizes, makes ``query``, ``key``, ``value`` and ``out``, and returns the
        factory of further ``in_features -> features`` projections (a gate, say)."""
        where = type(self).__name__
        layout = resolve_heads(in_features, num_heads, head_dim, num_kv_heads, where)
        if out_features is None:
            out_features = in_features
        check_positive_int(out_features, "out_features", where)
        self.in_features = in_features
        self.out_features = out_features
        self.num_heads = layout.num_heads
        self.num_kv_heads = layout.num_kv_heads
        self.head_dim = layout.head_dim
        self.dtype = settings.dtype
        self.param_dtype = settings.param_dtype
        self.precision = settings.precision
        linear = settings.factory(nnx.LinearGeneral)

        def project(features: tuple[int, ...]) -> nnx.LinearGeneral:
            return linear(in_features, features)

        self.query = project((self.num_heads, self.head_dim))
        self.key = project((self.num_kv_heads, self.head_dim))
        self.value = project((self.num_kv_heads, self.head_dim))
        self.out = linear((self.num_heads, self.head_dim), out_features, axis=(-2, -1))
        return project

    def _attend_call(
        self,
        inputs: Any,
        *,
        mask: Any,
        seq_lengths: Any,
        causal: Any,
        return_gates: Any,
        return_attention_weights: Any,
        gate_overrides: Any,
    ) -> Any:
        """The whole call, with ``__call__``'s arguments: checks, masks (padded inputs
        zeroed), projections (keys and values repeated to every query head), :meth:`_attend`,
        the output projection (zero at padded queries), and the result: ``output``, then the
        trace with ``return_gates`` and the weights with ``return_attention_weights``."""
        batch, time = check_sequence_call(
            self,
            inputs,
            gate_overrides,
            self._gate_names_in_use(),
            causal=causal,
            return_gates=return_gates,
            return_attention_weights=return_attention_weights,
        )
        masks = attention_masks(batch, time, mask=mask, seq_lengths=seq_lengths, causal=causal)
        inputs = zero_padding(inputs, masks.valid)
        query = self.query(inputs)
        key = repeat_kv(self.key(inputs), self.num_heads)
        value = repeat_kv(self.value(inputs), self.num_heads)
        heads, gates, weights = self._attend(inputs, masks, query, key, value, gate_overrides)
        output = zero_invalid_queries(self.out(heads), masks.valid)
        if not (return_gates or return_attention_weights):
            return output
        results: tuple[Any, ...] = (output,)
        if return_gates:
            results += (gate_trace(gates, masks.valid, batch, time),)
        if return_attention_weights:
            results += (self._returned_weights(weights, masks),)
        return results

    def _gate_names_in_use(self) -> tuple[str, ...]:
        """The names ``gate_overrides`` may use."""
        return self.gate_names

    def _attend(
        self,
        inputs: Array,
        masks: Masks,
        query: Array,
        key: Array,
        value: Array,
        gate_overrides: Any,
    ) -> tuple[Array, dict[str, Any], Array]:
        """The layer's attention: ``([batch, time, heads, head_dim]`` heads before the output
        projection, the gates of the trace by path, the weights for :meth:`_returned_weights`).

        ``inputs`` are ``[batch, time, in_features]`` with padding zeroed; ``query``, ``key``
        and ``value`` are ``[batch, time, heads, head_dim]``."""
        raise NotImplementedError

    def _returned_weights(self, weights: Array, masks: Masks) -> Array:
        """The ``[batch, heads, query, key]`` weights ``return_attention_weights`` returns."""
        raise NotImplementedError
