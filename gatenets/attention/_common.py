"""Input checks, masks and head bookkeeping shared by the attention layers.

Every check here runs in Python on static shapes, so a bad input fails at trace time, before
anything is compiled, with a message naming the argument, what arrived and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx

from gatenets._typing import Array
from gatenets.gates import check_gate_names, check_static_flag, sequence_mask

# Module-level initialisers, shared as argument defaults (Flax's own defaults).
default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()


def check_positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int; got {value!r}.")
    return value


def check_sequence_inputs(inputs: Any, in_features: int, where: str) -> tuple[int, int]:
    """Checks ``inputs`` is ``[batch, time, in_features]`` and returns ``(batch, time)``."""
    shape = getattr(inputs, "shape", None)
    if shape is None:
        raise TypeError(
            f"{where}: inputs must be an array of shape [batch, time, in_features] = "
            f"[batch, time, {in_features}]; got {type(inputs).__name__}."
        )
    if len(shape) != 3 or shape[-1] != in_features:
        raise ValueError(
            f"{where}: inputs must have shape [batch, time, in_features] = "
            f"[batch, time, {in_features}]; got {tuple(shape)}."
        )
    if not jnp.issubdtype(inputs.dtype, jnp.floating):
        raise TypeError(f"{where}: inputs must hold floats; got dtype {inputs.dtype}.")
    return shape[0], shape[1]


def check_feature_inputs(inputs: Any, in_features: int, where: str) -> None:
    """Checks ``inputs`` is ``[..., in_features]`` (position-wise layers accept any batch rank)."""
    shape = getattr(inputs, "shape", None)
    if shape is None or len(shape) < 1 or shape[-1] != in_features:
        received = tuple(shape) if shape is not None else type(inputs).__name__
        raise ValueError(
            f"{where}: inputs must have shape [..., in_features] = [..., {in_features}]; "
            f"got {received}."
        )
    if not jnp.issubdtype(inputs.dtype, jnp.floating):
        raise TypeError(f"{where}: inputs must hold floats; got dtype {inputs.dtype}.")


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


def zero_padding(inputs: Array, valid: Array | None) -> Array:
    """Zeros padded steps so that garbage there (even NaN or inf, which 0 * x would spread)
    cannot reach valid steps through a masked weight."""
    if valid is None:
        return inputs
    return jnp.where(valid[..., None], inputs, jnp.zeros((), inputs.dtype))


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


def compute_dtype(dtype: Any, *arrays: Any) -> Any:
    """The dtype a layer computes in: ``dtype`` if given, else the promotion of its inputs."""
    if dtype is not None:
        return jnp.dtype(dtype)
    return jnp.result_type(*arrays)


def masked_fill_value(dtype: Any) -> float:
    """A large negative logit for masked keys: finite, so a fully masked row gives no NaN."""
    return float(jnp.finfo(dtype).min)


class MultiHeadSelfAttention(nnx.Module):
    """The query, key, value and output projections of multi-head self-attention, and the
    checks and masking every such layer starts its call with (base of ``GatedAttention`` and
    ``SigmoidAttention``)."""

    def _build_heads(
        self,
        in_features: int,
        num_heads: int,
        head_dim: int | None,
        num_kv_heads: int | None,
        out_features: int | None,
        *,
        use_bias: bool,
        kernel_init: Any,
        bias_init: Any,
        dtype: Any,
        param_dtype: Any,
        precision: Any,
        rngs: nnx.Rngs,
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
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        settings = dict(
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            precision=precision,
            rngs=rngs,
        )

        def project(features: tuple[int, ...]) -> nnx.LinearGeneral:
            return nnx.LinearGeneral(in_features, features, **settings)

        self.query = project((self.num_heads, self.head_dim))
        self.key = project((self.num_kv_heads, self.head_dim))
        self.value = project((self.num_kv_heads, self.head_dim))
        self.out = nnx.LinearGeneral(
            (self.num_heads, self.head_dim), out_features, axis=(-2, -1), **settings
        )
        return project

    def _prepare(
        self,
        inputs: Any,
        *,
        mask: Any,
        seq_lengths: Any,
        causal: Any,
        return_gates: Any,
        return_attention_weights: Any,
        gate_overrides: Any,
        gate_names: tuple[str, ...],
    ) -> tuple[int, int, Masks, Array, Array, Array, Array]:
        """Validates a call and returns ``(batch, time, masks, inputs with padding zeroed,
        query, key, value)``, keys and values repeated to every query head."""
        where = type(self).__name__
        check_static_flag(causal, "causal", where)
        check_static_flag(return_gates, "return_gates", where)
        check_static_flag(return_attention_weights, "return_attention_weights", where)
        batch, time = check_sequence_inputs(inputs, self.in_features, where)
        check_gate_names(gate_overrides, gate_names, where)
        masks = attention_masks(batch, time, mask=mask, seq_lengths=seq_lengths, causal=causal)
        inputs = zero_padding(inputs, masks.valid)
        query = self.query(inputs)
        key = repeat_kv(self.key(inputs), self.num_heads)
        value = repeat_kv(self.value(inputs), self.num_heads)
        return batch, time, masks, inputs, query, key, value
