"""What the parallel-scan cells share: a diagonal linear recurrence run by two loops.

A cell here only says how its projected input becomes the decay logs :math:`\\ell_t`, the
recurrence inputs :math:`b_t` and its gates (:meth:`DiagonalCell.coefficients`); stepping, the
parallel scan, masks, reverse and overrides are common, so the two loops cannot drift apart.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp

from gatenets._typing import Array
from gatenets.cells.base import GatedCell, recurrent_input
from gatenets.gates import GateOverride, zero_invalid
from gatenets.kernels.sequence_parallel import run_linear_recurrence


class DiagonalCarry(NamedTuple):
    """State of a diagonal recurrent cell (minGRU, minLSTM, RG-LRU) between steps.

    Attributes:
      h: hidden state, ``[batch, hidden]`` (float32 when the cell computes in bf16/f16).
    """

    h: Array


class DiagonalCell(GatedCell):
    """Base of the cells whose recurrence is :math:`h_t = a_t \\odot h_{t-1} + b_t` with gates
    that depend on the input only.

    Over a sequence, ``loop="linear_scan"`` and ``loop="associative"`` compute
    :meth:`coefficients` once for all steps (in float32) and solve the recurrence with one
    multiply-add per step or with a log-space associative scan of depth :math:`O(\\log T)`
    (:mod:`gatenets.kernels.parallel_scan`); ``loop="scan"`` is the generic loop over
    :meth:`step`, as for every cell. ``"auto"`` measures which is fastest here.

    Sequence parallelism: inside a :func:`gatenets.sequence_parallel` block naming a mesh axis
    for time, the recurrence of a whole sequence is split over that axis's devices (each scans
    its chunk with the chosen solver, the chunks' summaries are all-gathered and a correction pass
    fixes each chunk; :mod:`gatenets.kernels.sequence_parallel`). Values and gradients equal the
    unsplit layer up to rounding; the loop choice is unchanged.
    """

    carry_type = DiagonalCarry

    @abc.abstractmethod
    def coefficients(
        self, projected: Array, gate_overrides: Mapping[str, GateOverride] | None
    ) -> tuple[Array, Array, Any]:
        """``(log_a, b, gates)`` from projected input ``[..., k * hidden]``; float32 arrays."""

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
        h_prev = recurrent_input(carry.h.astype(jnp.float32), recurrent_mask)
        h = jnp.exp(log_a) * h_prev + b
        return DiagonalCarry(h=h.astype(carry.h.dtype)), h.astype(projected.dtype), gates

    def run_kernel(self, kernel, carry, xs, valid, request):
        """Runs a linear-recurrence solver of the loop table (``Loop.LINEAR_SCAN`` or
        ``Loop.ASSOCIATIVE``): the coefficients of every step are computed at once, outside
        the time loop; only the recurrence itself runs in ``kernel``."""
        if not request.projected:
            xs = self.project(xs)
        if xs.shape[0] == 0:
            return carry, jnp.zeros(xs.shape[:2] + (self.hidden_features,), xs.dtype), None
        log_a, b, gates = self.coefficients(xs, request.gate_overrides)
        recurrent_mask = request.recurrent_mask
        if recurrent_mask is not None:
            # Dropping h_{t-1} scales it; folded into the decay, a dropped unit gets a_t = 0.
            scale = jnp.broadcast_to(recurrent_mask.astype(jnp.float32), log_a.shape)
            positive = scale > 0
            log_scale = jnp.log(jnp.where(positive, scale, jnp.ones((), scale.dtype)))
            log_a = jnp.where(positive, log_a + log_scale, -jnp.inf)
        h = run_linear_recurrence(
            log_a,
            b,
            carry.h.astype(jnp.float32),
            solver=kernel,
            valid=valid,
            reverse=request.reverse,
            unroll=request.unroll,
        )
        final = h[0] if request.reverse else h[-1]
        outputs = zero_invalid(valid, h.astype(xs.dtype))
        return (
            DiagonalCarry(h=final.astype(carry.h.dtype)),
            outputs,
            gates if request.return_gates else None,
        )
