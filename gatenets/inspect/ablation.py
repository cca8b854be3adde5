"""Gate ablation: replace one gate at a time and measure what the model loses.

Each gate of a model (every layer, direction and gate name in its trace) is overridden in turn
through the layers' ``gate_overrides`` (a constant such as 0 or 1, or a function of the gate,
applied inside the compiled scan), and a metric is compared with the unmodified model's on the
same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx

from gatenets.gates import GateOverride
from gatenets.inspect.statistics import (
    _progress,
    iterate_batches,
    run_with_gates,
    select_gates,
    split_batch,
)


class AblationResult(NamedTuple):
    """Effect of overriding one gate.

    Attributes:
      gate: the gate, ``"layer0/forward/forget"``.
      baseline: the metric of the unmodified model (mean over batches).
      ablated: the metric with the gate overridden.
    """

    gate: str
    baseline: float
    ablated: float

    @property
    def change(self) -> float:
        """``ablated - baseline``."""
        return self.ablated - self.baseline


def _overrides_for(gate: str, paths: Sequence[str], value: GateOverride) -> dict[str, Any]:
    part, gate_name = gate.rsplit("/", 1)
    # A lone RNN takes plain {gate: value}; stacks and bidirectional layers take paths.
    if len(paths) == 1:
        return {gate_name: value}
    return {part: {gate_name: value}}


def _compiled_call(overrides: dict[str, Any] | None, with_mask: bool) -> Callable:
    if with_mask:

        @nnx.jit
        def call(model, inputs, mask):
            return model(inputs, mask=mask, gate_overrides=overrides)

    else:

        @nnx.jit
        def call(model, inputs):
            return model(inputs, gate_overrides=overrides)

    return call


def ablate(
    model: Any,
    data: Any,
    metric_fn: Callable[[Any, Any], Any],
    *,
    value: GateOverride = 0.0,
    gates: Sequence[str] | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> list[AblationResult]:
    """Overrides each gate in turn and reports the change in a metric.

    The data is read once: every batch runs through the unmodified model and through one
    modified model per gate, so an endless or single-pass iterator works.

    Args:
      model: a gatenets layer or task model called as
        ``model(inputs, mask=…, gate_overrides=…)``.
      data: a batch or an iterable of batches (arrays or ``Batch(inputs, targets, mask)``).
      metric_fn: ``metric_fn(outputs, batch) -> scalar``, such as a task's loss or accuracy.
      value: the override: a constant (0 closes a gate, 1 opens it) or a function of the gate.
      gates: gates to ablate (full names or gate names such as ``"forget"``); all when None.
      max_batches: stop after this many batches.
      progress: show a progress bar.

    Returns:
      One :class:`AblationResult` per gate, in the trace's order.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> lstm = gatenets.LSTM(2, 4, rngs=nnx.Rngs(0))
      >>> x = jnp.ones((3, 6, 2))
      >>> energy = lambda outputs, batch: float(jnp.mean(outputs ** 2))
      >>> results = gatenets.inspect.ablate(lstm, x, energy, value=0.0, gates=["input"])
      >>> results[0].gate, results[0].ablated  # a closed input gate lets nothing in
      ('layer0/forward/input', 0.0)
    """
    names: list[str] | None = None
    paths: list[str] = []
    calls: dict[tuple[str, bool], Callable] = {}
    baseline_sum = 0.0
    ablated_sums: dict[str, float] = {}
    count = 0
    for batch in _progress(iterate_batches(data, max_batches), progress, max_batches, "ablation"):
        inputs, mask = split_batch(batch)
        args = (inputs,) if mask is None else (inputs, jnp.asarray(mask))
        outputs, trace = run_with_gates(model, *args)
        if names is None:
            names = select_gates([n for n, _ in trace.items()], gates)
            paths = sorted(trace.gates)
            ablated_sums = dict.fromkeys(names, 0.0)
        baseline_sum += float(metric_fn(outputs, batch))
        for name in names:
            key = (name, mask is None)
            if key not in calls:
                calls[key] = _compiled_call(_overrides_for(name, paths, value), mask is not None)
            ablated_sums[name] += float(metric_fn(calls[key](model, *args), batch))
        count += 1
    if names is None:
        raise ValueError("data is empty: no batch to measure the ablations on.")
    return [
        AblationResult(gate=n, baseline=baseline_sum / count, ablated=ablated_sums[n] / count)
        for n in names
    ]


def format_ablation(results: Sequence[AblationResult], metric: str = "metric") -> str:
    """The ablation results as aligned text.

    Example:
      >>> from gatenets.inspect import AblationResult, format_ablation
      >>> print(format_ablation([AblationResult("forward/forget", 1.5, 2.25)], "loss"))
      gate                               baseline    ablated     change   (loss)
      forward/forget                       1.5000     2.2500    +0.7500
    """
    lines = [f"{'gate':32s} {'baseline':>10s} {'ablated':>10s} {'change':>10s}   ({metric})"]
    for r in results:
        lines.append(f"{r.gate:32s} {r.baseline:10.4f} {r.ablated:10.4f} {r.change:+10.4f}")
    return "\n".join(lines)
