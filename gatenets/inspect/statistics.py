r"""Gate statistics: gather a model's gates and summarise them per gate and per unit.

Every statistic here is mask-aware: only the steps where ``GateTrace.mask`` is True count, so
padding never shifts a mean or a saturation fraction.

Units. A recurrent gate is ``[batch, time, hidden]``: each of the ``hidden`` entries is a unit.
An attention gate may be ``[batch, time, heads]`` (one unit per head) or
``[batch, time, heads, head_dim]``; every axis after ``time`` is flattened into units (row-major,
so unit ``k`` is head ``k // head_dim``, dimension ``k % head_dim``) and the original shape is
kept in :attr:`GateStatistics.unit_shape` so per-unit results can be reshaped back. A gate of
shape ``[batch, time]`` has a single unit.

Statistics are computed with running sums (count, mean, sum of squared deviations merged with
Chan et al.'s pairwise formula, saturation counts and a fixed-bin histogram), so a whole dataset
can be summarised batch by batch without keeping its traces in memory
(:func:`accumulate` / :func:`finalize`, or :func:`streaming_statistics` for a model and an
iterator of batches); the result equals :func:`gate_statistics` on the concatenated trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets.gates import GateTrace


def retention_rule(gates_type: type, field: str) -> str | None:
    """How gate ``field`` of ``gates_type`` sets a time constant, as the gate type declares it.

    A gates NamedTuple says which of its gates set how much of its own past a unit keeps in a
    class attribute ``retention``: ``{field: "keep"}`` when the state is multiplied by the gate
    (LSTM :math:`c_t = f_t \\odot c_{t-1} + \\dots`), ``{field: "write"}`` when by one minus it
    (minGRU :math:`h_t = (1 - z_t) \\odot h_{t-1} + \\dots`). Traces read back from files get
    their registered gate types back (:func:`gatenets.inspect.load_trace`), so they keep it.

    Args:
      gates_type: a gates NamedTuple class (``LSTMGates``, …).
      field: one of its field names.

    Returns:
      ``"keep"``, ``"write"`` or None (no time constant from this gate alone).

    Example:
      >>> import gatenets
      >>> from gatenets.inspect.statistics import retention_rule
      >>> retention_rule(gatenets.LSTMGates, "forget"), retention_rule(gatenets.LSTMGates, "input")
      ('keep', None)
    """
    return getattr(gates_type, "retention", {}).get(field)


class GateStatistics(NamedTuple):
    r"""Statistics of one gate over the valid steps of a trace, per unit.

    With :math:`g_{b,t,u}` the gate of unit :math:`u` at step :math:`t` of sequence :math:`b`
    and :math:`V` the set of valid :math:`(b, t)` (:math:`N = |V|`):

    .. math::
        \mu_u = \frac{1}{N}\sum_{V} g_{b,t,u}, \qquad
        \sigma_u = \sqrt{\frac{1}{N}\sum_{V} (g_{b,t,u} - \mu_u)^2}, \\
        \mathrm{left}_u = \frac{1}{N}\sum_{V} [g_{b,t,u} < \ell], \qquad
        \mathrm{right}_u = \frac{1}{N}\sum_{V} [g_{b,t,u} > r], \qquad
        \tau_u = -1 / \ln \mu_u \ \text{(retention gates)}

    Attributes:
      count: number of valid steps :math:`N` (every unit sees the same steps).
      mean: ``[units]`` mean gate value :math:`\mu_u`.
      std: ``[units]`` population standard deviation :math:`\sigma_u`.
      left_saturated: ``[units]`` fraction of steps with the gate below ``left`` (0.1 by
        default), as in Karpathy, Johnson & Fei-Fei (2015).
      right_saturated: ``[units]`` fraction of steps with the gate above ``right`` (0.9).
      histogram: ``[units, bins]`` counts of the gate values in ``bin_edges``.
      bin_edges: ``[bins + 1]`` equal-width edges over ``[0, 1]``; the last bin includes 1.
      time_constant: ``[units]`` :math:`\tau_u = -1/\ln \mu_u` in steps for a gate that keeps
        the past (LSTM and minLSTM ``forget``, GRU ``update``), :math:`-1/\ln(1 - \mu_u)` for
        one that writes over it (minGRU ``update``): the number of steps over which a unit
        whose gate sits at its mean keeps :math:`1/e` of its state; ``inf`` when nothing is
        ever forgotten. None for other gates.
      unit_shape: the gate's shape after ``[batch, time]`` (``(hidden,)``, ``(heads,)``,
        ``(heads, head_dim)``, or ``()``); ``units`` is its product.
      left: the left-saturation threshold used.
      right: the right-saturation threshold used.
    """

    count: int
    mean: np.ndarray
    std: np.ndarray
    left_saturated: np.ndarray
    right_saturated: np.ndarray
    histogram: np.ndarray
    bin_edges: np.ndarray
    time_constant: np.ndarray | None
    unit_shape: tuple[int, ...]
    left: float
    right: float

    @property
    def sparsity(self) -> float:
        """Mean gate value over all units and valid steps (low means a sparse gate), the
        measure of the gated-attention paper (Qiu et al. 2025)."""
        return float(np.mean(self.mean))

    @property
    def units(self) -> int:
        return int(self.mean.shape[0])


class GateAccumulator(NamedTuple):
    """Running sums of one gate, the state of streaming statistics (see :func:`accumulate`).

    Attributes:
      count: valid steps seen so far.
      mean: ``[units]`` running mean (float64).
      m2: ``[units]`` running sum of squared deviations from the mean (float64).
      left_count: ``[units]`` steps with the gate below ``left``.
      right_count: ``[units]`` steps with the gate above ``right``.
      histogram: ``[units, bins]`` counts.
      bin_edges: ``[bins + 1]``.
      unit_shape: shape of the gate after ``[batch, time]``.
      left: left-saturation threshold.
      right: right-saturation threshold.
      retention: ``"keep"`` or ``"write"`` for a gate that sets how much of the past a unit
        keeps (see :attr:`GateStatistics.time_constant`), else None.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    left_count: np.ndarray
    right_count: np.ndarray
    histogram: np.ndarray
    bin_edges: np.ndarray
    unit_shape: tuple[int, ...]
    left: float
    right: float
    retention: str | None = None


class FirstTokenShare(NamedTuple):
    """Attention paid to the first key (the "attention sink"), averaged over valid queries.

    Attributes:
      per_head: ``[heads]`` mean weight on key 0.
      mean: mean over heads.
    """

    per_head: np.ndarray
    mean: float


# --------------------------------------------------------------------------------------------
# Checks.


def _check_thresholds(left: float, right: float, bins: int) -> None:
    if not 0.0 <= left <= 1.0:
        raise ValueError(f"left must lie in [0, 1]; got {left!r}.")
    if not 0.0 <= right <= 1.0:
        raise ValueError(f"right must lie in [0, 1]; got {right!r}.")
    if left > right:
        raise ValueError(f"left must not exceed right; got left={left!r}, right={right!r}.")
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int; got {bins!r}.")


def _check_trace(trace: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The trace's mask and flat gates as NumPy arrays, after checking that they agree."""
    if not isinstance(trace, GateTrace):
        raise TypeError(
            f"trace must be a gatenets.GateTrace (from a layer called with return_gates=True); "
            f"got {type(trace).__name__}."
        )
    mask = np.asarray(trace.mask)
    if mask.ndim != 2:
        raise ValueError(f"trace.mask must be [batch, time]; got shape {mask.shape}.")
    if mask.dtype != np.bool_:
        raise TypeError(f"trace.mask must be boolean; got dtype {mask.dtype}.")
    gates = {name: np.asarray(value) for name, value in trace.items()}
    if not gates:
        raise ValueError("trace holds no gates (a layer without sigmoid gates?).")
    for name, value in gates.items():
        if value.shape[:2] != mask.shape:
            raise ValueError(
                f"gate {name!r} has shape {value.shape}, which disagrees with the trace's mask "
                f"of shape {mask.shape}: a gate must be [batch, time, ...] with the mask's "
                "batch and time."
            )
    return mask, gates


def select_gates(names: Iterable[str], gates: Sequence[str] | None) -> list[str]:
    """The names in ``gates`` (all when None), raising for one that the trace lacks.

    A requested name may be a full name (``"layer0/forward/forget"``) or a gate name
    (``"forget"``) matching that gate in every layer and direction.
    """
    available = list(names)
    if gates is None:
        return available
    if isinstance(gates, str):
        gates = [gates]
    chosen: list[str] = []
    for wanted in gates:
        matches = [n for n in available if n == wanted or n.rsplit("/", 1)[-1] == wanted]
        if not matches:
            raise ValueError(
                f"unknown gate {wanted!r}; this trace has {tuple(available)} (a full name, or "
                "a gate name such as 'forget' for every layer)."
            )
        chosen += [m for m in matches if m not in chosen]
    return chosen


# --------------------------------------------------------------------------------------------
# Streaming accumulation.


def _empty(
    unit_shape: tuple[int, ...], left: float, right: float, bins: int, retention: str | None
) -> GateAccumulator:
    units = math.prod(unit_shape)
    return GateAccumulator(
        count=0,
        mean=np.zeros(units),
        m2=np.zeros(units),
        left_count=np.zeros(units, np.int64),
        right_count=np.zeros(units, np.int64),
        histogram=np.zeros((units, bins), np.int64),
        bin_edges=np.linspace(0.0, 1.0, bins + 1),
        unit_shape=unit_shape,
        left=left,
        right=right,
        retention=retention,
    )


def _update(acc: GateAccumulator, name: str, values: np.ndarray) -> GateAccumulator:
    """Adds ``values`` ``[steps, units]`` (valid steps only) to the running sums."""
    values = values.astype(np.float64)
    n = values.shape[0]
    if n == 0:
        return acc
    if not np.all((values >= 0.0) & (values <= 1.0)):
        bad = values[~((values >= 0.0) & (values <= 1.0))]
        raise ValueError(
            f"gate {name!r} has values outside [0, 1] (e.g. {bad.flat[0]!r}); statistics expect "
            "post-sigmoid gates."
        )
    batch_mean = values.mean(axis=0)
    batch_m2 = ((values - batch_mean) ** 2).sum(axis=0)
    total = acc.count + n
    delta = batch_mean - acc.mean
    mean = acc.mean + delta * (n / total)
    m2 = acc.m2 + batch_m2 + delta**2 * (acc.count * n / total)
    bins = acc.histogram.shape[1]
    # searchsorted against the edges bins exactly as np.histogram does (the last bin is closed).
    index = np.clip(np.searchsorted(acc.bin_edges, values, side="right") - 1, 0, bins - 1)
    units = values.shape[1]
    # One bincount over (unit, bin) pairs: far faster than np.add.at on large batches.
    cells = (np.arange(units) * bins + index).ravel()
    histogram = acc.histogram + np.bincount(cells, minlength=units * bins).reshape(units, bins)
    return acc._replace(
        count=total,
        mean=mean,
        m2=m2,
        left_count=acc.left_count + (values < acc.left).sum(axis=0),
        right_count=acc.right_count + (values > acc.right).sum(axis=0),
        histogram=histogram,
    )


def accumulate(
    accumulators: Mapping[str, GateAccumulator] | None,
    trace: GateTrace,
    *,
    gates: Sequence[str] | None = None,
    left: float = 0.1,
    right: float = 0.9,
    bins: int = 20,
) -> dict[str, GateAccumulator]:
    """Adds one trace (one batch) to running gate statistics.

    Args:
      accumulators: the state returned by the previous call, or None to start.
      trace: a :class:`~gatenets.GateTrace` of this batch.
      gates: names to keep (full names or gate names such as ``"forget"``); all when None.
      left: left-saturation threshold (used when starting).
      right: right-saturation threshold (used when starting).
      bins: number of histogram bins over ``[0, 1]`` (used when starting).

    Returns:
      ``{name: GateAccumulator}``; pass it to the next call, then to :func:`finalize`.

    Example:
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import accumulate, finalize
      >>> acc = None
      >>> for value in (0.2, 0.6):
      ...     g = GRUGates(np.full((1, 2, 3), value), np.full((1, 2, 3), value))
      ...     acc = accumulate(acc, GateTrace({"forward": g}, np.ones((1, 2), bool)))
      >>> stats = finalize(acc)
      >>> round(float(stats["forward/reset"].mean[0]), 6), stats["forward/reset"].count
      (0.4, 4)
    """
    mask, flat = _check_trace(trace)
    names = select_gates(flat, gates)
    retention = {
        f"{path}/{field}": retention_rule(type(group), field)
        for path, group in trace.gates.items()
        for field in group._fields
    }
    if accumulators is None:
        _check_thresholds(left, right, bins)
        accumulators = {}
    else:
        accumulators = dict(accumulators)
        expected = set(accumulators)
        if expected and set(names) != expected:
            raise ValueError(
                f"trace gates {sorted(names)} differ from the accumulated gates "
                f"{sorted(expected)}; every batch must come from the same model."
            )
    for name in names:
        value = flat[name]
        unit_shape = tuple(value.shape[2:])
        acc = accumulators.get(name)
        if acc is None:
            acc = _empty(unit_shape, left, right, bins, retention.get(name))
        elif acc.unit_shape != unit_shape:
            raise ValueError(
                f"gate {name!r} has unit shape {unit_shape} in this batch but {acc.unit_shape} "
                "before."
            )
        accumulators[name] = _update(acc, name, value[mask].reshape(-1, math.prod(unit_shape)))
    return accumulators


def finalize(accumulators: Mapping[str, GateAccumulator]) -> dict[str, GateStatistics]:
    """Turns running sums into :class:`GateStatistics`, one per gate (see :func:`accumulate`
    for an example).

    Raises:
      ValueError: when no valid step was seen (empty data or an all-False mask).
    """
    if not accumulators:
        raise ValueError("no gates were accumulated: the data was empty.")
    stats = {}
    for name, acc in accumulators.items():
        if acc.count == 0:
            raise ValueError(
                f"gate {name!r}: no valid step was seen (empty data, or a mask that is False "
                "everywhere)."
            )
        time_constant = None
        if acc.retention is not None:
            kept = acc.mean if acc.retention == "keep" else 1.0 - acc.mean
            with np.errstate(divide="ignore"):
                # A unit that keeps everything never forgets: +inf, not -1 / (+0.0) = -inf.
                time_constant = np.where(kept >= 1.0, np.inf, -1.0 / np.log(kept))
        stats[name] = GateStatistics(
            count=int(acc.count),
            mean=acc.mean,
            std=np.sqrt(np.maximum(acc.m2 / acc.count, 0.0)),
            left_saturated=acc.left_count / acc.count,
            right_saturated=acc.right_count / acc.count,
            histogram=acc.histogram,
            bin_edges=acc.bin_edges,
            time_constant=time_constant,
            unit_shape=acc.unit_shape,
            left=acc.left,
            right=acc.right,
        )
    return stats


def gate_statistics(
    trace: GateTrace,
    *,
    gates: Sequence[str] | None = None,
    left: float = 0.1,
    right: float = 0.9,
    bins: int = 20,
) -> dict[str, GateStatistics]:
    """Mask-aware statistics of every gate of a trace, per unit.

    Args:
      trace: a :class:`~gatenets.GateTrace` (from any layer called with ``return_gates=True``,
        or from :func:`collect`).
      gates: names to summarise (full names or gate names such as ``"forget"``); all when None.
      left: a gate below this value counts as left-saturated.
      right: a gate above this value counts as right-saturated.
      bins: number of equal-width histogram bins over ``[0, 1]``.

    Returns:
      ``{"layer0/forward/forget": GateStatistics, …}`` in the trace's order.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> lstm = gatenets.LSTM(3, 4, rngs=nnx.Rngs(0))
      >>> _, trace = lstm(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 2]), return_gates=True)
      >>> stats = gatenets.inspect.gate_statistics(trace)
      >>> s = stats["layer0/forward/forget"]
      >>> s.count, s.mean.shape, bool((s.left_saturated + s.right_saturated <= 1).all())
      (7, (4,), True)
    """
    return finalize(accumulate(None, trace, gates=gates, left=left, right=right, bins=bins))


def first_token_share(weights: Any, mask: Any = None) -> FirstTokenShare:
    """Share of attention that queries put on the first key, per head (the attention sink
    that output gating removes, Qiu et al. 2025).

    Args:
      weights: ``[batch, heads, query, key]`` attention probabilities (e.g. from
        ``return_attention_weights=True``).
      mask: ``[batch, query]`` booleans, True at real queries; padded queries are ignored.

    Returns:
      :class:`FirstTokenShare` with the mean weight on key 0 per head and over heads.

    Example:
      >>> import numpy as np
      >>> from gatenets.inspect import first_token_share
      >>> w = np.full((1, 2, 4, 4), 0.25)
      >>> first_token_share(w).per_head.tolist()
      [0.25, 0.25]
    """
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 4:
        raise ValueError(f"weights must be [batch, heads, query, key]; got shape {weights.shape}.")
    batch, _, queries, _ = weights.shape
    if mask is None:
        valid = np.ones((batch, queries), bool)
    else:
        valid = np.asarray(mask)
        if valid.shape != (batch, queries) or valid.dtype != np.bool_:
            raise ValueError(
                f"mask must be [batch, query] = ({batch}, {queries}) booleans; got shape "
                f"{valid.shape} and dtype {valid.dtype}."
            )
    if not valid.any():
        raise ValueError("mask is False everywhere: no query to average over.")
    first = weights[..., 0]  # [batch, heads, query]
    per_head = (first * valid[:, None, :]).sum(axis=(0, 2)) / valid.sum()
    return FirstTokenShare(per_head=per_head, mean=float(per_head.mean()))


# --------------------------------------------------------------------------------------------
# Running a model over data.


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, mask)`` of a batch: an array, or anything with ``inputs`` (and ``mask``)
    attributes such as the tasks' ``Batch(inputs, targets, mask)``."""
    if hasattr(batch, "inputs"):
        return batch.inputs, getattr(batch, "mask", None)
    if hasattr(batch, "shape"):
        return batch, None
    raise TypeError(
        "each batch must be an array [batch, time, …] or have an `inputs` attribute (and "
        f"optionally `mask`), such as gatenets.tasks' Batch; got {type(batch).__name__}."
    )


def iterate_batches(data: Any, max_batches: int | None = None) -> Iterator[Any]:
    """One batch (an array or a ``Batch``) as a one-item iterator, else the iterable itself,
    cut after ``max_batches``."""
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None; got {max_batches!r}.")
    single = hasattr(data, "shape") or hasattr(data, "inputs")
    iterator = iter([data]) if single else iter(data)
    for k, batch in enumerate(iterator):
        if max_batches is not None and k >= max_batches:
            return
        yield batch


@nnx.jit
def _trace_with_mask(model, inputs, mask):
    return model(inputs, mask=mask, return_gates=True)


@nnx.jit
def _trace_without_mask(model, inputs):
    return model(inputs, return_gates=True)


def run_with_gates(model: Any, inputs: Any, mask: Any = None) -> tuple[Any, GateTrace]:
    """``model(inputs, mask=mask, return_gates=True)`` under ``nnx.jit`` (compiled once per
    shape); ``mask`` is passed only when given, so models without a ``mask`` argument work."""
    if mask is None:
        outputs, trace = _trace_without_mask(model, inputs)
    else:
        outputs, trace = _trace_with_mask(model, inputs, jnp.asarray(mask))
    if not isinstance(trace, GateTrace):
        raise TypeError(
            "model(inputs, return_gates=True) must return (outputs, GateTrace); the second item "
            f"is a {type(trace).__name__}."
        )
    return outputs, trace


def _progress(iterable: Iterable, progress: bool, total: int | None, desc: str) -> Iterable:
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch")


def collect(
    model: Any,
    data: Any,
    *,
    max_batches: int | None = None,
    progress: bool = False,
) -> GateTrace:
    """Runs a model over a batch or an iterable of batches and gathers its gates by name.

    The model is any gatenets layer or model called as
    ``model(inputs, mask=…, return_gates=True) -> (outputs, GateTrace)``: a recurrent stack, a
    bidirectional layer, an attention layer, or a task model. Batches are concatenated along
    the batch axis; if their lengths differ, shorter ones are padded at the end with
    ``mask=False`` steps, which no statistic counts. The result lives in host memory; for a
    whole dataset use :func:`streaming_statistics`.

    Args:
      model: the model (an ``nnx.Module``).
      data: an input array ``[batch, time, …]``, a ``Batch(inputs, targets, mask)``, or an
        iterable of either.
      max_batches: stop after this many batches (for endless iterators).
      progress: show a progress bar.

    Returns:
      A :class:`~gatenets.GateTrace` of NumPy arrays: every gate by path and name, and the mask.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> gru = gatenets.GRU(3, 4, bidirectional=True, rngs=nnx.Rngs(0))
      >>> trace = gatenets.inspect.collect(gru, [jnp.ones((2, 5, 3)), jnp.ones((1, 4, 3))])
      >>> trace.gates["layer0/backward"].update.shape, int(trace.mask.sum())
      ((3, 5, 4), 14)
    """
    traces = []
    for batch in _progress(iterate_batches(data, max_batches), progress, max_batches, "gates"):
        inputs, mask = split_batch(batch)
        _, trace = run_with_gates(model, inputs, mask)
        traces.append(jax.tree_util.tree_map(np.asarray, trace))
    if not traces:
        raise ValueError("data is empty: no batch to collect gates from.")
    return concatenate_traces(traces)


def concatenate_traces(traces: Sequence[GateTrace]) -> GateTrace:
    """Joins traces of the same model along the batch axis, padding time with invalid steps."""
    if not traces:
        raise ValueError("traces is empty.")
    time = max(np.shape(t.mask)[1] for t in traces)
    paths = sorted(traces[0].gates)
    for t in traces[1:]:
        if sorted(t.gates) != paths:
            raise ValueError(
                f"traces name different parts: {paths} and {sorted(t.gates)}; they must come "
                "from the same model."
            )

    def pad(x):
        x = np.asarray(x)
        widths = [(0, 0), (0, time - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
        return np.pad(x, widths)

    gates = {
        path: jax.tree_util.tree_map(
            lambda *xs: np.concatenate([pad(x) for x in xs]), *[t.gates[path] for t in traces]
        )
        for path in paths
    }
    mask = np.concatenate([pad(t.mask) for t in traces])
    return GateTrace(gates, mask)


def streaming_statistics(
    model: Any,
    data: Any,
    *,
    gates: Sequence[str] | None = None,
    left: float = 0.1,
    right: float = 0.9,
    bins: int = 20,
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, GateStatistics]:
    """:func:`gate_statistics` of a model over a whole dataset, one batch at a time.

    Only running sums are kept, never the ``[batch, time, units]`` traces, so memory does not
    grow with the data. The arguments are those of :func:`collect` and :func:`gate_statistics`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> lstm = gatenets.LSTM(3, 4, rngs=nnx.Rngs(0))
      >>> batches = (jnp.full((2, 5, 3), v) for v in (0.0, 1.0))
      >>> stats = gatenets.inspect.streaming_statistics(lstm, batches, gates=["forget"])
      >>> list(stats), stats["layer0/forward/forget"].count
      (['layer0/forward/forget'], 20)
    """
    _check_thresholds(left, right, bins)
    accumulators = None
    for batch in _progress(iterate_batches(data, max_batches), progress, max_batches, "gates"):
        inputs, mask = split_batch(batch)
        _, trace = run_with_gates(model, inputs, mask)
        accumulators = accumulate(
            accumulators, trace, gates=gates, left=left, right=right, bins=bins
        )
    if accumulators is None:
        raise ValueError("data is empty: no batch to compute gate statistics from.")
    return finalize(accumulators)


class SummaryRow(NamedTuple):
    """One line of the statistics table: a gate summarised over its units."""

    gate: str
    units: int
    mean: float
    std: float
    left_saturated: float
    right_saturated: float
    median_time_constant: float | None


def summary_table(stats: Mapping[str, GateStatistics]) -> list[SummaryRow]:
    """One :class:`SummaryRow` per gate: unit averages of the statistics (``std`` is the mean
    per-unit std; the time constant is the median over units, for retention gates).

    Example:
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import gate_statistics, summary_table
      >>> g = GRUGates(np.full((1, 2, 3), 0.5), np.full((1, 2, 3), np.exp(-0.5)))
      >>> row = summary_table(gate_statistics(GateTrace({"f": g}, np.ones((1, 2), bool))))[1]
      >>> row.gate, round(row.median_time_constant, 6)  # update = e^{-1/2}: tau = 2 steps
      ('f/update', 2.0)
    """
    rows = []
    for name, s in stats.items():
        rows.append(
            SummaryRow(
                gate=name,
                units=s.units,
                mean=float(np.mean(s.mean)),
                std=float(np.mean(s.std)),
                left_saturated=float(np.mean(s.left_saturated)),
                right_saturated=float(np.mean(s.right_saturated)),
                median_time_constant=None
                if s.time_constant is None
                else float(np.median(s.time_constant)),
            )
        )
    return rows


def format_table(stats: Mapping[str, GateStatistics]) -> str:
    """The statistics table as aligned text, for a terminal.

    Example:
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import format_table, gate_statistics
      >>> g = GRUGates(np.full((1, 2, 3), 0.05), np.full((1, 2, 3), 0.95))
      >>> print(format_table(gate_statistics(GateTrace({"f": g}, np.ones((1, 2), bool)))))
      gate                             units   mean    std   left  right      tau
      f/reset                              3  0.050  0.000  1.000  0.000
      f/update                             3  0.950  0.000  0.000  1.000    19.50
    """
    header = (
        f"{'gate':32s} {'units':>5s} {'mean':>6s} {'std':>6s} {'left':>6s} {'right':>6s} "
        f"{'tau':>8s}"
    )
    lines = [header]
    for r in summary_table(stats):
        tau = "" if r.median_time_constant is None else f"{r.median_time_constant:8.2f}"
        lines.append(
            f"{r.gate:32s} {r.units:5d} {r.mean:6.3f} {r.std:6.3f} {r.left_saturated:6.3f} "
            f"{r.right_saturated:6.3f} {tau:>8s}".rstrip()
        )
    return "\n".join(lines)
