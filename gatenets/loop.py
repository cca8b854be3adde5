"""How a sequence is run: one named choice, resolved once per call.

Every recurrent layer takes ``loop=``; the cell resolves it (:meth:`GatedCell.resolve_loop`)
against what it was asked to compute — gates, overrides, masks — and runs that loop. ``"auto"``
picks the first loop in the cell's preference list (``GatedCell.loops``) that computes the
request exactly; naming a loop forces it, and a loop that cannot compute the request raises,
saying why. Every loop is tested equal to ``"scan"``, the generic reference.
"""

from __future__ import annotations

import enum
from typing import Any


class Loop(str, enum.Enum):
    """The ways a gatenets cell can run over a sequence.

    Attributes:
      AUTO: the fastest loop that computes the request exactly (the default).
      SCAN: ``jax.lax.scan`` over the cell's step, differentiated by autodiff: every cell,
        every option (functions as gate overrides, peepholes, projections, any ``gate_fn``).
      FUSED: a custom-VJP sequence kernel with a hand-written backward pass (LSTM, GRU): the
        weight gradients are one large matmul after the loop instead of one per step.
      NATIVE: the same kernel as one C++ call through ``jax.ffi`` on CPU — the time loop, the
        gate math and BLAS matmuls outside XLA's op-by-op execution
        (:mod:`gatenets.kernels.native`; compiled on first use, float32/float64).
      ASSOCIATIVE: a log-space associative (parallel prefix) scan, :math:`O(\\log T)` depth,
        for the diagonal cells whose gates read only the input (minGRU, minLSTM, RG-LRU).
      CUDNN: a whole LSTM stack as one cuDNN call on an NVIDIA GPU (``gatenets.LSTM`` only;
        float32, no gates returned, no overrides, ``seq_lengths`` padding, dropout inactive).

    Example:
      >>> import gatenets
      >>> gatenets.Loop("fused") is gatenets.Loop.FUSED
      True
    """

    AUTO = "auto"
    SCAN = "scan"
    FUSED = "fused"
    NATIVE = "native"
    ASSOCIATIVE = "associative"
    CUDNN = "cudnn"

    def __str__(self) -> str:
        return self.value


def as_loop(value: Any, name: str = "loop") -> Loop:
    """``value`` as a :class:`Loop` (a member or its name), or a ValueError naming ``name``."""
    try:
        return Loop(value)
    except ValueError:
        raise ValueError(
            f"{name} must be one of {tuple(m.value for m in Loop)}; got {value!r}."
        ) from None
