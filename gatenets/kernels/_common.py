"""Pieces shared by the sequence kernels: constant overrides, time shifts, flat matmuls."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatenets._typing import Array

#: A canonical matmul precision: None (JAX's default, which ``jax.default_matmul_precision``
#: sets) or a pair of :class:`jax.lax.Precision` (one per operand), hashable.
Precision = tuple[jax.lax.Precision, jax.lax.Precision] | None


def canonical_precision(precision: Any) -> Precision:
    """``precision`` as the kernels store it: None, or a pair of :class:`jax.lax.Precision`.

    Accepts what :func:`jax.lax.dot_general` and Flax's ``Linear`` accept: None, a
    :class:`jax.lax.Precision`, one of its names (``"default"``, ``"high"``, ``"highest"``,
    ``"bfloat16"``, ``"tensorfloat32"``, ``"float32"``), or a pair of those.

    Example:
      >>> canonical_precision("highest")
      (<Precision.HIGHEST: 2>, <Precision.HIGHEST: 2>)
      >>> canonical_precision(None) is None
      True
    """
    if precision is None:
        return None
    pair = tuple(precision) if isinstance(precision, tuple | list) else (precision, precision)
    try:
        if len(pair) != 2 or not all(isinstance(p, str | jax.lax.Precision) for p in pair):
            raise ValueError
        return tuple(jax.lax.Precision(p) for p in pair)
    except ValueError:
        raise ValueError(
            "precision must be None, a jax.lax.Precision, one of 'default', 'high', 'highest', "
            f"'bfloat16', 'tensorfloat32', 'float32', or a pair of them; got {precision!r}."
        ) from None


def constant_overrides(
    overrides: Mapping[str, Any] | None, gate_names: tuple[str, ...]
) -> tuple[float | None, ...] | None:
    """Per-gate Python floats if every override is a concrete scalar, else None.

    The fused kernels bake constant gates into the compiled loop (their derivative with
    respect to the pre-activation is zero). A function of the gate, an array, or a traced value
    needs the generic scan, which differentiates whatever the override does.
    """
    values: list[float | None] = []
    overrides = overrides or {}
    for name in gate_names:
        value = overrides.get(name)
        if value is None:
            values.append(None)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            values.append(float(value))
        elif (
            isinstance(value, np.ndarray | np.generic | jax.Array)
            and not isinstance(value, jax.core.Tracer)
            and np.ndim(value) == 0
        ):
            values.append(float(value))
        else:
            return None
    return tuple(values)


def previous(sequence: Array, initial: Array, reverse: bool) -> Array:
    """The value before each step: ``initial`` then ``sequence`` shifted by one step in the
    direction of the loop (``[time, batch, …]``); empty for an empty sequence."""
    if sequence.shape[0] == 0:
        return sequence
    if reverse:
        return jnp.concatenate([sequence[1:], initial[None]], axis=0)
    return jnp.concatenate([initial[None], sequence[:-1]], axis=0)


def accumulation(dtype: Any) -> Any:
    """The dtype gradients are summed in: at least float32 (bf16 sums over time lose the
    gradient), float64 for float64 kernels."""
    return jnp.promote_types(dtype, jnp.float32)


def flat_matmul(a: Array, b: Array, precision: Precision = None) -> Array:
    """``sum_t a[t].T @ b[t]`` as one ``[features, time * batch] @ [time * batch, out]`` matmul:
    the weight gradient of a whole sequence, left out of the loop."""
    return jnp.dot(
        a.reshape(-1, a.shape[-1]).T,
        b.reshape(-1, b.shape[-1]),
        precision=precision,
        preferred_element_type=accumulation(jnp.result_type(a, b)),
    )
