"""Masks and head bookkeeping shared by the attention layers (the checks every layer shares
are in :mod:`gatenets._layers`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gatenets._layers import (
    LinearSettings,
    check_int,
    check_sequence_call,
    gate_trace,
)
from gatenets._typing import Array
from gatenets.attention import _core
from gatenets.gates import sequence_mask, zero_invalid


class HeadLayout(NamedTuple):
    """Resolved head sizes of a multi-head layer."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


def resolve_heads(
    in_features: int, num_heads: int, head_dim: int | None, num_kv_heads: int | None, where: str
) -> HeadLayout:
    """Validates the head arguments of a multi-head layer and fills in the defaults."""
    check_int(in_features, "in_features", where=where)
    check_int(num_heads, "num_heads", where=where)
    if head_dim is None:
        if in_features % num_heads:
            raise ValueError(
                f"{where}: num_heads must divide in_features when head_dim is not given; got "
                f"num_heads={num_heads} and in_features={in_features}. Pass head_dim explicitly "
                f"or choose num_heads among the divisors of {in_features}."
            )
        head_dim = in_features // num_heads
    check_int(head_dim, "head_dim", where=where)
    if num_kv_heads is None:
        num_kv_heads = num_heads
    check_int(num_kv_heads, "num_kv_heads", where=where)
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
    """The masks of one attention call, kept as vectors: the ``[query, key]`` mask is built
    only by the materialised path (:meth:`allowed`).

    Attributes:
      valid: ``[batch, query]`` True at real query steps, or None when every step is real.
      key_valid: ``[batch, key]`` True at keys that may be attended, or None for all.
      causal: the query at step ``i`` sees keys at steps ``<= i`` only.
      seq_lengths: ``[batch]`` lengths when the padding was given as right padding, else None.
      has_holes: the padding was given as a ``[batch, time]`` mask (any pattern).
      counts: ``[batch, query]`` float32 number of keys each query attends to (at least 1).
    """

    valid: Array | None
    key_valid: Array | None
    causal: bool
    seq_lengths: Array | None
    has_holes: bool
    counts: Array

    def allowed(self, query_time: int, key_time: int) -> Array | None:
        """``[batch, 1, query, key]`` True where a query may attend to a key, or None when
        every query may attend to every key."""
        allowed = None
        if self.key_valid is not None:
            allowed = self.key_valid[:, None, None, :]
        if self.causal:
            lower = jnp.tril(jnp.ones((query_time, key_time), bool))[None, None]
            allowed = lower if allowed is None else allowed & lower
        return allowed


def attention_masks(
    batch: int, time: int, *, mask: Array | None, seq_lengths: Array | None, causal: bool
) -> Masks:
    """The masks of self-attention: a padding mask over keys and queries, and the causal mask."""
    valid = sequence_mask(batch, time, seq_lengths=seq_lengths, mask=mask)
    if valid is None:
        steps = jnp.arange(1, time + 1, dtype=jnp.float32)
        counts = jnp.broadcast_to(steps if causal else jnp.float32(time), (batch, time))
    elif causal:
        counts = jnp.cumsum(valid, axis=1, dtype=jnp.float32)
    else:
        counts = jnp.broadcast_to(
            jnp.sum(valid, axis=1, keepdims=True, dtype=jnp.float32), (batch, time)
        )
    return Masks(valid, valid, causal, seq_lengths, mask is not None, jnp.maximum(counts, 1.0))


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
    ``SigmoidAttention``): masks, rotary positions, the choice of path and the key/value cache
    of autoregressive decoding.

    A subclass sets ``kind`` (one of :data:`gatenets.attention._core.KINDS`), makes its
    projections with :meth:`_build_heads` and implements :meth:`_attend`,
    :meth:`_weights_needed` and :meth:`_returned_weights`; its ``__call__`` hands its arguments
    to :meth:`_attend_call`.
    """

    kind: str

    def _build_heads(
        self,
        in_features: int,
        num_heads: int,
        head_dim: int | None,
        num_kv_heads: int | None,
        out_features: int | None,
        settings: LinearSettings,
        *,
        rope: Any = None,
        implementation: Any = None,
        block_size: Any = _core.DEFAULT_BLOCK_SIZE,
    ) -> Callable[[tuple[int, ...]], nnx.LinearGeneral]:
        """Checks the sizes, makes ``query``, ``key``, ``value`` and ``out``, and returns the
        factory of further ``in_features -> features`` projections (a gate, say)."""
        where = type(self).__name__
        layout = resolve_heads(in_features, num_heads, head_dim, num_kv_heads, where)
        if out_features is None:
            out_features = in_features
        check_int(out_features, "out_features", where=where)
        self.in_features = in_features
        self.out_features = out_features
        self.num_heads = layout.num_heads
        self.num_kv_heads = layout.num_kv_heads
        self.head_dim = layout.head_dim
        self.dtype = settings.dtype
        self.param_dtype = settings.param_dtype
        self.precision = settings.precision
        self.rope = _core.check_rope(rope, layout.head_dim, where)
        self.implementation = _core.check_implementation(implementation, self.kind, where)
        self.block_size = _core.check_block_size(block_size, where)
        linear = settings.factory(nnx.LinearGeneral)

        def project(features: tuple[int, ...]) -> nnx.LinearGeneral:
            return linear(in_features, features)

        self.query = project((self.num_heads, self.head_dim))
        self.key = project((self.num_kv_heads, self.head_dim))
        self.value = project((self.num_kv_heads, self.head_dim))
        self.out = linear((self.num_heads, self.head_dim), out_features, axis=(-2, -1))
        self.cached_key: nnx.Cache | None = nnx.data(None)
        self.cached_value: nnx.Cache | None = nnx.data(None)
        self.cache_index: nnx.Cache | None = nnx.data(None)
        return project

    def init_cache(self, input_shape: tuple[int, ...], dtype: Any = jnp.float32) -> None:
        """Makes an empty key/value cache for autoregressive decoding (``decode=True``), as
        :meth:`flax.nnx.MultiHeadAttention.init_cache` does.

        The cache holds ``max_length`` steps of keys (rotated, with ``rope``) and values in
        ``cached_key`` / ``cached_value`` (``[batch, max_length, num_kv_heads, head_dim]``
        :class:`flax.nnx.Cache` variables) and the number of steps decoded so far in
        ``cache_index``. Step ``p`` is written to slot ``p % max_length``: past
        ``max_length`` steps the cache keeps the latest ``max_length`` (a sliding window), so
        each new query attends to itself and the ``max_length - 1`` steps before it.

        Args:
          input_shape: ``(batch, max_length, in_features)``, the shape of the longest input
            the cache stands for.
          dtype: dtype of the cached keys and values.
        """
        where = f"{type(self).__name__}.init_cache"
        if len(tuple(input_shape)) != 3:
            raise ValueError(
                f"{where}: input_shape must be (batch, max_length, in_features); got "
                f"{tuple(input_shape)!r}."
            )
        batch, max_length, features = input_shape
        check_int(batch, "input_shape[0] (batch)", where=where)
        check_int(max_length, "input_shape[1] (max_length)", where=where)
        if features != self.in_features:
            raise ValueError(
                f"{where}: input_shape[2] must be in_features = {self.in_features}; got "
                f"{features!r}."
            )
        shape = (batch, max_length, self.num_kv_heads, self.head_dim)
        self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
        self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
        self.cache_index = nnx.Cache(jnp.array(0, jnp.int32))

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
        decode: Any = False,
    ) -> Any:
        """The whole call, with ``__call__``'s arguments: checks, masks (padded inputs
        zeroed), projections, rotary positions, the path, :meth:`_attend`, the output
        projection (zero at padded queries), and the result: ``output``, then the trace with
        ``return_gates`` and the weights with ``return_attention_weights``."""
        batch, time = check_sequence_call(
            self,
            inputs,
            gate_overrides,
            self._gate_names_in_use(),
            causal=causal,
            return_gates=return_gates,
            return_attention_weights=return_attention_weights,
            decode=decode,
        )
        if decode:
            return self._decode_call(
                inputs, mask, seq_lengths, return_gates, return_attention_weights, gate_overrides
            )
        masks = attention_masks(batch, time, mask=mask, seq_lengths=seq_lengths, causal=causal)
        inputs = zero_invalid(masks.valid, inputs)
        query, key, value = self._project(inputs, jnp.arange(time))
        path = _core.choose_path(
            kind=self.kind,
            weights_needed=self._weights_needed(
                return_gates, return_attention_weights, gate_overrides
            ),
            implementation=self.implementation,
            dtype=query.dtype,
            head_dim=self.head_dim,
            has_holes=masks.has_holes,
            where=type(self).__name__,
            logits_bytes=4 * batch * query.shape[2] * time * time,
        )
        heads, gates, weights = self._attend(inputs, masks, query, key, value, gate_overrides, path)
        return self._finish(
            heads, gates, weights, masks, batch, time, return_gates, return_attention_weights
        )

    def _project(self, inputs: Array, positions: Array) -> tuple[Array, Array, Array]:
        """Queries ``[batch, time, heads, head_dim]``, keys and values ``[batch, time,
        kv_heads, head_dim]``, queries and keys rotated at ``positions`` with ``rope``."""
        query, key, value = self.query(inputs), self.key(inputs), self.value(inputs)
        if self.rope is not None:
            query = self.rope.apply(query, positions)
            key = self.rope.apply(key, positions)
        return query, key, value

    def _finish(
        self,
        heads: Array,
        gates: dict[str, Any],
        weights: Any,
        masks: Masks,
        batch: int,
        time: int,
        return_gates: bool,
        return_attention_weights: bool,
    ) -> Any:
        output = zero_invalid(masks.valid, self.out(heads))
        if not (return_gates or return_attention_weights):
            return output
        results: tuple[Any, ...] = (output,)
        if return_gates:
            results += (gate_trace(gates, masks.valid, batch, time),)
        if return_attention_weights:
            results += (self._returned_weights(weights, masks),)
        return results

    def _decode_call(
        self,
        inputs: Array,
        mask: Any,
        seq_lengths: Any,
        return_gates: bool,
        return_attention_weights: bool,
        gate_overrides: Any,
    ) -> Any:
        """One step of autoregressive decoding against the cache (see :meth:`init_cache`)."""
        where = type(self).__name__
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ValueError(
                f"{where}: decode=True needs a cache; call init_cache(input_shape) first."
            )
        cache_batch, max_length = self.cached_key.shape[:2]
        if inputs.shape[:2] != (cache_batch, 1):
            raise ValueError(
                f"{where}: decode=True takes one step per call, inputs of shape [batch, 1, "
                f"in_features] = [{cache_batch}, 1, {self.in_features}] (the cache's batch); "
                f"got {tuple(inputs.shape)}."
            )
        if mask is not None or seq_lengths is not None:
            raise ValueError(
                f"{where}: decode=True takes no mask or seq_lengths: every decoded step is "
                "real and sees the steps cached before it."
            )
        index = self.cache_index[...]
        query, key, value = self._project(inputs, index[None])
        slot = index % max_length
        cached_key = jax.lax.dynamic_update_slice(
            self.cached_key[...], key.astype(self.cached_key.dtype), (0, slot, 0, 0)
        )
        cached_value = jax.lax.dynamic_update_slice(
            self.cached_value[...], value.astype(self.cached_value.dtype), (0, slot, 0, 0)
        )
        self.cached_key[...] = cached_key
        self.cached_value[...] = cached_value
        self.cache_index[...] = index + 1
        filled = jnp.arange(max_length) <= index
        key_valid = jnp.broadcast_to(filled, (cache_batch, max_length))
        count = jnp.minimum(index + 1, max_length).astype(jnp.float32)
        masks = Masks(
            None, key_valid, False, None, False, jnp.full((cache_batch, 1), count, jnp.float32)
        )
        heads, gates, weights = self._attend(
            inputs,
            masks,
            query,
            cached_key.astype(key.dtype),
            cached_value.astype(value.dtype),
            gate_overrides,
            "materialised",
        )
        return self._finish(
            heads, gates, weights, masks, cache_batch, 1, return_gates, return_attention_weights
        )

    def _attention(
        self, query: Array, key: Array, value: Array, masks: Masks, path: str, kernel: Any
    ) -> Array:
        """``[batch, query, heads, head_dim]`` attention output by the blockwise or cuDNN path
        (the materialised path is the subclass's own, since it also returns weights)."""
        if path == "cudnn":
            return _core.cudnn_attention(
                query, key, value, seq_lengths=masks.seq_lengths, causal=masks.causal
            )
        return _core.blockwise_attention(
            query,
            key,
            value,
            kernel,
            key_valid=masks.key_valid,
            causal=masks.causal,
            block_size=self.block_size,
            precision=self.precision,
        )

    def _gate_names_in_use(self) -> tuple[str, ...]:
        """The names ``gate_overrides`` may use."""
        return self.gate_names

    def _weights_needed(
        self, return_gates: bool, return_attention_weights: bool, gate_overrides: Any
    ) -> bool:
        """Whether this call needs the ``[query, key]`` weights as one array."""
        raise NotImplementedError

    def _attend(
        self,
        inputs: Array,
        masks: Masks,
        query: Array,
        key: Array,
        value: Array,
        gate_overrides: Any,
        path: str,
    ) -> tuple[Array, dict[str, Any], Any]:
        """The layer's attention: ``([batch, query, heads, head_dim]`` heads before the output
        projection, the gates of the trace by path, the weights for :meth:`_returned_weights`
        (None off the materialised path)).

        ``inputs`` are ``[batch, query, in_features]`` with padding zeroed; ``query`` is
        ``[batch, query, heads, head_dim]``, ``key`` and ``value`` ``[batch, key, kv_heads,
        head_dim]`` (not repeated to every query head)."""
        raise NotImplementedError

    def _returned_weights(self, weights: Array, masks: Masks) -> Array:
        """The ``[batch, heads, query, key]`` weights ``return_attention_weights`` returns."""
        raise NotImplementedError
