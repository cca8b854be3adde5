"""Checks and pieces shared by every sequence and position-wise layer outside the recurrent
cells: the attention layers, the feed-forward blocks, heads and routers.

Every check here runs in Python on static shapes, so a bad input fails at trace time, before
anything is compiled, with a message naming the argument, what arrived and what was expected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._typing import Array
from gatenets.gates import GateTrace, check_gate_names, check_static_flag

# Module-level initialisers, shared as argument defaults (Flax's own defaults).
default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()


def scoped(method: Callable) -> Callable:
    """Runs a layer's ``__call__`` inside ``jax.named_scope(<class name>)``, so profiles and
    HLO dumps show which layer each operation belongs to (as Equinox does)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with jax.named_scope(type(self).__name__):
            return method(self, *args, **kwargs)

    return call


def check_precision(precision: Any, name: str = "precision") -> Any:
    """``precision`` if it is one a matmul takes (see :data:`gatenets._typing.PrecisionLike`),
    else a ValueError naming ``name``. Strings are checked by ``jax.lax.Precision``."""
    try:
        if precision is None:
            return None
        if isinstance(precision, tuple) and len(precision) == 2:
            return tuple(check_precision(p, name) for p in precision)
        if isinstance(precision, str | jax.lax.Precision):
            jax.lax.Precision(precision)
            return precision
    except ValueError:
        pass
    raise ValueError(
        f"{name} must be None, 'default', 'high', 'highest' (or 'bfloat16', 'tensorfloat32', "
        f"'float32'), a jax.lax.Precision or a pair of those; got {precision!r}."
    )


def check_int(value: Any, name: str, *, minimum: int = 1, where: str | None = None) -> int:
    """``value`` as an int if it is one ``>= minimum``, else a ValueError naming ``name`` (and
    ``where``, the layer, when given): the one integer check of the package.

    Example:
      >>> from gatenets._layers import check_int
      >>> check_int(3, "num_heads"), check_int(0, "seed", minimum=0)
      (3, 0)
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{name} must be {expected}; got {value!r}.")
    return int(value)


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


def check_sequence_call(
    layer: Any, inputs: Any, gate_overrides: Any, gate_names: tuple[str, ...], **flags: Any
) -> tuple[int, int]:
    """The checks a sequence layer's call starts with, in this order: the static ``flags``
    (by name), ``inputs`` against ``layer.in_features``, and the names in ``gate_overrides``
    against ``gate_names``. Returns ``(batch, time)``."""
    where = type(layer).__name__
    for name, value in flags.items():
        check_static_flag(value, name, where)
    batch, time = check_sequence_inputs(inputs, layer.in_features, where)
    check_gate_names(gate_overrides, gate_names, where)
    return batch, time


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


class LinearSettings(NamedTuple):
    """How a layer makes its projections: the arguments of ``nnx.Linear`` and
    ``nnx.LinearGeneral`` other than the sizes, given once, in the order the layers'
    signatures list them."""

    use_bias: bool
    kernel_init: Any
    bias_init: Any
    dtype: Any
    param_dtype: Any
    precision: Any
    rngs: nnx.Rngs

    def factory(self, cls: type[nnx.Module]) -> Callable[..., Any]:
        """``cls`` with these settings bound: call it with the sizes (and ``axis``)."""
        return functools.partial(cls, **self._asdict())


def gate_trace(gates: dict[str, Any], valid: Array | None, batch: int, time: int) -> GateTrace:
    """The :class:`~gatenets.GateTrace` of a call: ``gates`` by path, and the ``[batch, time]``
    mask of valid steps (every step when ``valid`` is None)."""
    return GateTrace(gates, valid if valid is not None else jnp.ones((batch, time), bool))


def compute_dtype(dtype: Any, *arrays: Any) -> Any:
    """The dtype a layer computes in: ``dtype`` if given, else the promotion of its inputs."""
    if dtype is not None:
        return jnp.dtype(dtype)
    return jnp.result_type(*arrays)
