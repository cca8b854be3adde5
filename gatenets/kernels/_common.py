"""Pieces shared by the sequence kernels: constant overrides, time shifts, flat matmuls."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatenets._typing import Array


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


def flat_matmul(a: Array, b: Array) -> Array:
    """``sum_t a[t].T @ b[t]`` as one ``[features, time * batch] @ [time * batch, out]`` matmul:
    the weight gradient of a whole sequence, left out of the loop."""
    return jnp.dot(
        a.reshape(-1, a.shape[-1]).T,
        b.reshape(-1, b.shape[-1]),
        preferred_element_type=accumulation(jnp.result_type(a, b)),
    )
