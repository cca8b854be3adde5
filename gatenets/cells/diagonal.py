"""What the parallel-scan cells share: a diagonal linear recurrence run by two loops.

A cell here only says how its projected input becomes the decay logs :math:`\\ell_t`, the
recurrence inputs :math:`b_t` and its gates (:meth:`DiagonalCell.coefficients`); stepping, the
parallel scan, masks, reverse and overrides are common, so the two loops cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatenets._typing import Array
from gatenets.cells.base import GatedCell, compute_dtype, recurrent_input, state_dtype
from gatenets.gates import GateOverride, zero_invalid
from gatenets.kernels.sequence_parallel import run_linear_recurrence
from gatenets.loop import Loop


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
    ``loop="associative"`` solves the recurrence with a log-space associative scan, depth
    :math:`O(\\log T)`; ``loop="scan"`` with ``jax.lax.scan``, one multiply-add per step, which
    ``"auto"`` picks on CPU, where it is the faster
    (:func:`gatenets.kernels.parallel_scan.linear_recurrence`). :meth:`step` runs one step, as
    ``__call__`` and ``flax.nnx.RNN`` use it.

    Sequence parallelism: inside a :func:`gatenets.sequence_parallel` block naming a mesh axis
    for time, the recurrence of a whole sequence is split over that axis's devices (each scans
    its chunk with the chosen loop, the chunks' summaries are all-gathered and a correction pass
    fixes each chunk; :mod:`gatenets.kernels.sequence_parallel`). Values and gradients equal the
    unsplit layer up to rounding; the loop choice is unchanged.
    """

    carry_type = DiagonalCarry
    loops = (Loop.ASSOCIATIVE, Loop.SCAN)

    def _auto_order(self) -> tuple[Loop, ...]:
        # The associative scan does more work for less depth, which pays only with many cores
        # at once; on a CPU one multiply-add per step is faster (benchmarks/parallel_scan.py).
        return (Loop.SCAN, Loop.ASSOCIATIVE) if jax.default_backend() == "cpu" else self.loops

    def coefficients(
        self, projected: Array, gate_overrides: Mapping[str, GateOverride] | None
    ) -> tuple[Array, Array, Any]:
        """``(log_a, b, gates)`` from projected input ``[..., k * hidden]``; float32 arrays."""
        raise NotImplementedError

    def _carry_dtype(self):
        # The recurrence runs in float32 whatever the matmul dtype.
        return state_dtype(compute_dtype(self.dtype, self.param_dtype))

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

    def scan(
        self,
        carry: DiagonalCarry,
        xs: Array,
        valid: Array | None,
        *,
        projected: bool,
        loop: Loop | str = Loop.AUTO,
        reverse: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
        unroll: int = 1,
    ) -> tuple[DiagonalCarry, Array, Any]:
        """The :meth:`GatedCell.scan` contract.

        The gates read only the input, so the coefficients of every step are computed at once,
        outside the time loop, for both loops; only the recurrence itself runs as an associative
        scan (``"associative"``) or one multiply-add per step (``"scan"``).
        """
        loop = self.resolve_loop(loop, gate_overrides)
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
        h = run_linear_recurrence(
            log_a,
            b,
            carry.h.astype(jnp.float32),
            valid=valid,
            reverse=reverse,
            loop=loop,
            unroll=unroll,
        )
        final = h[0] if reverse else h[-1]
        outputs = zero_invalid(valid, h.astype(xs.dtype))
        return (
            DiagonalCarry(h=final.astype(carry.h.dtype)),
            outputs,
            gates if return_gates else None,
        )
