"""What every gatenets recurrent cell shares.

A cell splits its work into a time-parallel part, :meth:`GatedCell.project` (the input matmul,
done once for all steps when that pays), and a sequential part, :meth:`GatedCell.step`, which
returns the new carry, the output and the post-sigmoid gates. ``__call__`` chains the two, so a
cell also works step by step and inside ``flax.nnx.RNN``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx

from gatenets._typing import Array, Dtype, Initializer
from gatenets.gates import GateOverride


def compute_dtype(dtype: Dtype | None, param_dtype: Dtype) -> Any:
    """The dtype a cell computes in: ``dtype`` if given, else the parameters' dtype."""
    return jnp.dtype(dtype if dtype is not None else param_dtype)


def state_dtype(dtype: Any) -> Any:
    """Recurrent state dtype: low-precision compute keeps its state in float32."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


def fused_orthogonal(
    init: Initializer, rngs: nnx.Rngs, rows: int, hidden: int, blocks: int, param_dtype: Dtype
) -> Array:
    """A ``[rows, blocks * hidden]`` kernel made of ``blocks`` separately initialised blocks.

    Orthogonal initialisation is meant per gate (each ``[rows, hidden]`` block), not for the
    fused matrix, whose columns could not all be orthogonal.
    """
    return jnp.concatenate(
        [init(rngs.params(), (rows, hidden), param_dtype) for _ in range(blocks)], axis=-1
    )


class GatedCell(nnx.RNNCellBase):
    """Base of gatenets' recurrent cells (``nnx.RNNCellBase`` compatible).

    Subclasses set ``gates_type`` and ``carry_type`` (NamedTuples) and implement
    ``initialize_carry``, ``project`` and ``step``.
    """

    gates_type: ClassVar[type]
    carry_type: ClassVar[type]

    def __init__(self, in_features: int, hidden_features: int, *, dtype, param_dtype):
        for name, value in (("in_features", in_features), ("hidden_features", hidden_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        self.param_dtype = param_dtype

    @property
    def gate_names(self) -> tuple[str, ...]:
        return self.gates_type._fields

    @property
    def output_features(self) -> int:
        """Size of the output ``h`` (and of the recurrent input)."""
        return self.hidden_features

    @property
    def num_feature_axes(self) -> int:
        return 1

    def project(self, x: Array) -> Array:
        raise NotImplementedError

    def step(
        self,
        carry: Any,
        projected: Array,
        *,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
    ) -> tuple[Any, Array, Any]:
        raise NotImplementedError

    def check_input(self, x: Any, name: str = "x", min_rank: int = 1) -> Array:
        """Raises a clear error for input of the wrong type, rank or feature size."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{name} must be a floating-point array; got dtype {x.dtype}. Cast integer "
                "inputs explicitly (e.g. x.astype(jnp.float32)) or embed token ids first."
            )
        if x.ndim < min_rank:
            raise ValueError(f"{name} must have rank >= {min_rank}; got shape {x.shape}.")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{name} must have in_features = {self.in_features} on its last axis; got "
                f"shape {x.shape}."
            )
        return x

    def __call__(self, carry: Any, inputs: Array) -> tuple[Any, Array]:
        """One step on raw input ``[batch, in_features]``: returns ``(new_carry, output)``."""
        inputs = self.check_input(inputs, "inputs")
        carry, h, _ = self.step(carry, self.project(inputs))
        return carry, h
