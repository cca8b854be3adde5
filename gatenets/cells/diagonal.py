"""What the parallel-scan cells share: a diagonal linear recurrence run in two modes.

A cell here only says how its projected input becomes the decay logs :math:`\\ell_t`, the
recurrence inputs :math:`b_t` and its gates (:meth:`DiagonalCell.coefficients`); stepping, the
parallel scan, masks, reverse and overrides are common, so the two modes cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax.nnx.nn import initializers

from gatenets._typing import Array
from gatenets.cells.base import GatedCell, compute_dtype, state_dtype
from gatenets.gates import GateOverride
from gatenets.kernels.parallel_scan import linear_recurrence

MODES = ("parallel", "sequential")


class DiagonalCarry(NamedTuple):
    """State of a diagonal recurrent cell (minGRU, minLSTM, RG-LRU) between steps.

    Attributes:
      h: hidden state, ``[batch, hidden]`` (float32 when the cell computes in bf16/f16).
    """

    h: Array


class DiagonalCell(GatedCell):
    """Base of the cells whose recurrence is :math:`h_t = a_t \\odot h_{t-1} + b_t` with gates
    that depend on the input only.

    Over a sequence, :meth:`coefficients` runs once for all steps (in float32) and
    ``mode="parallel"`` solves the recurrence with a log-space associative scan, depth
    :math:`O(\\log T)`; ``mode="sequential"`` with ``jax.lax.scan``, one multiply-add per step
    (:func:`gatenets.kernels.parallel_scan.linear_recurrence`). :meth:`step` runs one step, as
    ``__call__`` and ``flax.nnx.RNN`` use it.
    """

    carry_type = DiagonalCarry

    def __init__(self, in_features: int, hidden_features: int, *, mode: str, dtype, param_dtype):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
        self.mode = mode

    def coefficients(
        self, projected: Array, gate_overrides: Mapping[str, GateOverride] | None
    ) -> tuple[Array, Array, Any]:
        """``(log_a, b, gates)`` from projected input ``[..., k * hidden]``; float32 arrays."""
        raise NotImplementedError

    def initialize_carry(self, input_shape, rngs=None, carry_init=initializers.zeros_init()):
        """Zero carry for inputs of shape ``[*batch, in_features]``."""
        dtype = state_dtype(compute_dtype(self.dtype, self.param_dtype))
        key = rngs() if rngs is not None else jax.random.key(0)
        shape = tuple(input_shape[:-1]) + (self.hidden_features,)
        return DiagonalCarry(h=carry_init(key, shape, dtype))

    def _held_input(self, h: Array, recurrent_mask: Array | None) -> Array:
        return h if recurrent_mask is None else h * recurrent_mask.astype(h.dtype)

    def step(
        self,
        carry: DiagonalCarry,
        projected: Array,
        *,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
    ) -> tuple[DiagonalCarry, Array, Any]:
        """One sequential step from the projected input: returns ``(new_carry, h, gates)``."""
        log_a, b, gates = self.coefficients(projected, gate_overrides)
        h_prev = self._held_input(carry.h.astype(jnp.float32), recurrent_mask)
        h = jnp.exp(log_a) * h_prev + b
        return DiagonalCarry(h=h.astype(carry.h.dtype)), h.astype(projected.dtype), gates

    def scan(
        self,
        carry: DiagonalCarry,
        xs: Array,
        valid: Array | None,
        *,
        projected: bool,
        reverse: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
        unroll: int = 1,
    ) -> tuple[DiagonalCarry, Array, Any]:
        """The :meth:`GatedCell.scan` contract.

        The gates read only the input, so the coefficients of every step are computed at once,
        outside the time loop, in both modes; only the recurrence itself runs as an associative
        scan (``"parallel"``) or one multiply-add per step (``"sequential"``).
        """
        if not projected:
            xs = self.project(xs)
        if xs.shape[0] == 0:
            return carry, jnp.zeros(xs.shape[:2] + (self.hidden_features,), xs.dtype), None
        log_a, b, gates = self.coefficients(xs, gate_overrides)
        if recurrent_mask is not None:
            # Dropping h_{t-1} scales it; folded into the decay, a dropped unit gets a_t = 0.
            scale = jnp.broadcast_to(recurrent_mask.astype(jnp.float32), log_a.shape)
            positive = scale > 0
            log_scale = jnp.log(jnp.where(positive, scale, jnp.ones((), scale.dtype)))
            log_a = jnp.where(positive, log_a + log_scale, -jnp.inf)
        h = linear_recurrence(
            log_a,
            b,
            carry.h.astype(jnp.float32),
            valid=valid,
            reverse=reverse,
            method="associative" if self.mode == "parallel" else "sequential",
            unroll=unroll,
        )
        final = h[0] if reverse else h[-1]
        outputs = h.astype(xs.dtype)
        if valid is not None:
            outputs = jnp.where(valid[:, :, None], outputs, jnp.zeros((), outputs.dtype))
        return (
            DiagonalCarry(h=final.astype(carry.h.dtype)),
            outputs,
            gates if return_gates else None,
        )
