"""Watching gates while a model trains: gate statistics every N steps, TensorBoard, a plot.

:class:`GateStatsHook` is one more hook of :func:`~gatenets.train.train_loop`: every N steps it
runs the model on a fixed probe batch with ``return_gates=True`` and emits a record
``{"step", "split": "gates", "gates": {name: {...}}, "bin_edges": [...]}`` with each gate's
mask-aware mean, left and right saturation and histogram (as :mod:`gatenets.inspect` defines
them, counting valid steps only, but reduced on the device). :class:`TensorBoardWriter` receives the
loop's records like :class:`~gatenets.train.JsonLinesWriter` and writes them as TensorBoard
scalars and histograms through ``tensorboardX``. :func:`read_metrics` and
:func:`plot_training` draw a run's loss and gate saturation over training
(``gatenets plot RUN``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._layers import check_int
from gatenets.tasks.base import Batch
from gatenets.train.hooks import FitContext, Hook, LoopState, Record, Schedule
from gatenets.train.sharding import batch_placer

_SUMMARY = ("mean", "left_saturated", "right_saturated")

PROBE_BATCH_SIZE = 32
"""Sequences in the probe batch that :func:`~gatenets.train.fit` watches (fewer when its
``eval_batch_size`` is smaller): enough steps for a histogram per gate, few enough that
watching every 50 steps costs about 1% of training."""


@functools.partial(nnx.jit, static_argnames=("left", "right", "bins"))
def _summaries(model, inputs, mask, *, left: float, right: float, bins: int) -> dict:
    """Per gate, over units and valid steps, the sums a ``"gates"`` record needs, computed
    where the model runs: only a few numbers per gate leave the device."""
    _, trace = model(inputs, mask=mask, return_gates=True)
    edges = jnp.linspace(0.0, 1.0, bins + 1)
    out = {}
    for position, (name, gate) in enumerate(trace.items()):
        gate = gate.astype(jnp.float32).reshape(gate.shape[0], gate.shape[1], -1)
        valid = jnp.broadcast_to(trace.mask[:, :, None], gate.shape)
        weight = valid.astype(jnp.float32)
        # Bins as np.histogram's: half-open, the last one closed at 1. The bin from floor(),
        # moved by one where rounding put a value beside an edge: several times faster on
        # CPU than searchsorted.
        index = jnp.clip(jnp.floor(gate * bins).astype(jnp.int32), 0, bins - 1)
        index = index - (gate < edges[index]) + ((gate >= edges[index + 1]) & (index < bins - 1))
        # Outputs come back as a dict sorted by key: the position keeps the trace's order.
        out[f"{position:04d}:{name}"] = {
            "count": valid.sum(),
            "sum": (gate * weight).sum(),
            "sum_squares": (gate * gate * weight).sum(),
            "min": jnp.where(valid, gate, jnp.inf).min(),
            "max": jnp.where(valid, gate, -jnp.inf).max(),
            "left": (valid & (gate < left)).sum(),
            "right": (valid & (gate > right)).sum(),
            "histogram": jnp.zeros(bins, jnp.int32)
            .at[index.ravel()]
            .add(valid.ravel().astype(jnp.int32)),
        }
    return out


def gate_record(
    model: nnx.Module, batch: Batch, *, left: float = 0.1, right: float = 0.9, bins: int = 20
) -> dict:
    """The gate part of a ``"gates"`` record: per gate of ``model`` on ``batch``, over its
    units and valid steps, the mean, the fractions below ``left`` and above ``right``, the
    histogram over ``bins`` equal bins of [0, 1] (as :func:`numpy.histogram`), and the count,
    sum, sum of squares, min and max that TensorBoard's histograms hold.

    The statistics are computed on the device under ``nnx.jit`` (one compile per model and
    batch shape); the ``[batch, time, units]`` gates never reach the host.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets.tasks import Batch, SequenceModel
      >>> from gatenets.train.watch import gate_record
      >>> model = SequenceModel(2, 3, 1, model="gru", rngs=nnx.Rngs(0))
      >>> mask = jnp.array([[True, True, True], [True, False, False]])
      >>> record = gate_record(model, Batch(jnp.ones((2, 3, 2)), jnp.zeros((2, 1)), mask))
      >>> reset = record["gates"]["layer0/forward/reset"]
      >>> reset["count"], sum(reset["histogram"]), len(record["bin_edges"])
      (12, 12, 21)
      >>> 0 <= reset["left_saturated"] <= 1 and reset["min"] <= reset["mean"] <= reset["max"]
      True
    """
    mask = batch.mask
    if mask is None:
        mask = jnp.ones(jnp.shape(batch.inputs)[:2], bool)
    sums = jax.device_get(
        _summaries(model, batch.inputs, mask, left=float(left), right=float(right), bins=bins)
    )
    gates = {}
    for key, s in sorted(sums.items()):
        name = key.split(":", 1)[1]
        count = int(s["count"])
        if count == 0:
            raise ValueError("batch: its mask is False everywhere; no valid step to summarise.")
        gates[name] = {
            "mean": float(s["sum"]) / count,
            "left_saturated": int(s["left"]) / count,
            "right_saturated": int(s["right"]) / count,
            "histogram": [int(c) for c in s["histogram"]],
            "count": count,
            "min": float(s["min"]),
            "max": float(s["max"]),
            "sum": float(s["sum"]),
            "sum_squares": float(s["sum_squares"]),
        }
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "gates": gates,
        "bin_edges": [float(e) for e in edges],
        "left": float(left),
        "right": float(right),
    }


class GateStatsHook(Hook):
    """Every ``schedule`` step, the gate statistics of the model on a fixed probe batch.

    The model runs in evaluation mode (no dropout) under ``nnx.jit`` (one compile), the
    statistics are reduced on the device (:func:`gate_record`), and the model goes back to
    training mode. :attr:`seconds` adds up the time spent, so its cost can be
    set beside the steps'.

    Args:
      batch: the probe batch, the same at every report (e.g. the first validation batch).
      schedule: when to report.
      emit: receives each record.
      left: left-saturation threshold.
      right: right-saturation threshold.
      bins: histogram bins over [0, 1].

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets.tasks import Batch, SequenceModel
      >>> from gatenets.train import LoopState, Schedule
      >>> from gatenets.train.watch import GateStatsHook
      >>> model = SequenceModel(2, 3, 1, model="gru", rngs=nnx.Rngs(0))
      >>> batch = Batch(jnp.ones((2, 4, 2)), jnp.zeros((2, 1)), jnp.array([[1, 1, 1, 1],
      ...                                                                [1, 1, 0, 0]], bool))
      >>> records = []
      >>> hook = GateStatsHook(batch, Schedule(2, None), records.append)
      >>> for step in (1, 2):
      ...     hook.after_step(LoopState(step, 1.0, 0.1, 0, 2, model, None))
      >>> [(r["step"], r["split"], sorted(r["gates"])) for r in records]
      [(2, 'gates', ['layer0/forward/reset', 'layer0/forward/update'])]
      >>> records[0]["gates"]["layer0/forward/reset"]["count"]  # 6 valid steps x 3 units
      18
    """

    def __init__(
        self,
        batch: Batch | None = None,
        schedule: Schedule | None = None,
        emit: Callable[[Record], None] | None = None,
        *,
        every: int | None = None,
        left: float = 0.1,
        right: float = 0.9,
        bins: int = 20,
    ):
        if every is not None:
            check_int(every, "every")
        self.batch = batch
        self.schedule = schedule
        self.emit = emit
        self.every = every
        self.left, self.right, self.bins = left, right, bins
        self.seconds = 0.0

    def begin(self, context: FitContext) -> None:
        """Fills in what was not given: the first validation batch (no larger than
        ``eval_batch_size`` or :data:`PROBE_BATCH_SIZE`), ``Schedule(every, steps)`` and the
        run's ``emit``; so ``fit(…, hooks=[GateStatsHook(every=50)])`` needs nothing else."""
        if self.batch is None:
            size = min(context.eval_batch_size, PROBE_BATCH_SIZE)
            probe = next(context.task.batches("valid", size, seed=context.seed))
            self.batch = batch_placer(context.mesh, replicate_uneven=True)(probe)
        if self.schedule is None:
            self.schedule = Schedule(self.every, context.steps)
        if self.emit is None:
            self.emit = context.emit

    def after_step(self, state: LoopState) -> None:
        if not self.schedule(state.step):
            return
        began = time.perf_counter()
        model = state.model
        model.eval()
        try:
            record = gate_record(
                model, self.batch, left=self.left, right=self.right, bins=self.bins
            )
        finally:
            model.train()
        self.seconds += time.perf_counter() - began
        self.emit({"step": state.step, "split": "gates", **record})


class TensorBoardWriter(Hook):
    """Writes the loop's records as TensorBoard events in ``logdir`` with ``tensorboardX``.

    Numbers in ``"train"`` and ``"valid"`` records become scalars ``train/loss``,
    ``valid/accuracy``, …; each gate of a ``"gates"`` record becomes the scalars
    ``gates/<name>/mean``, ``…/left_saturated`` and ``…/right_saturated`` and the histogram
    ``gates/<name>``, and the record as a whole the image ``gates/histograms`` (the report's
    histogram picture, at each watch step). As a hook, the loop closes it at the end.

    TensorBoard shows one run per folder: give each run its own ``logdir``
    (:func:`tensorboard_run_dir`; ``gatenets run --tensorboard DIR`` writes into
    ``DIR/<run name>``), and :func:`write_hparams` adds the run's configuration.

    Args:
      logdir: the directory for the event files (created if needed).

    Example:
      >>> import os, tempfile
      >>> from gatenets.train.watch import TensorBoardWriter
      >>> logdir = tempfile.mkdtemp()
      >>> with TensorBoardWriter(logdir) as writer:
      ...     writer.write({"step": 1, "split": "train", "loss": 0.5})
      >>> [name.startswith("events.out.tfevents") for name in os.listdir(logdir)]
      [True]
    """

    def __init__(self, logdir: str | pathlib.Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "tensorboard_dir needs tensorboardX: pip install 'gatenets[tensorboard]' "
                "(or pip install tensorboardX)."
            ) from err
        self.writer = SummaryWriter(logdir=str(logdir))

    def write(self, record: Record) -> None:
        step = int(record["step"])
        split = record.get("split", "train")
        if split == "gates":
            edges = record["bin_edges"]
            self.writer.add_figure("gates/histograms", histogram_figure(record), step)
            for name, gate in record["gates"].items():
                for field in _SUMMARY:
                    self.writer.add_scalar(f"gates/{name}/{field}", gate[field], step)
                self.writer.add_histogram_raw(
                    f"gates/{name}",
                    min=gate["min"],
                    max=gate["max"],
                    num=gate["count"],
                    sum=gate["sum"],
                    sum_squares=gate["sum_squares"],
                    bucket_limits=edges[1:],
                    bucket_counts=gate["histogram"],
                    global_step=step,
                )
            return
        for name, value in record.items():
            if name not in ("step", "split") and isinstance(value, int | float):
                self.writer.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def plot_runs(runs: dict[str, list[Record]]):
    """Several runs together: their training (line) and validation (dots) losses on one axis,
    one colour per run, and below, per run that watched its gates, each gate's right-saturated
    fraction (solid) and left-saturated fraction (dashed) over training.

    Example:
      >>> from gatenets.train.watch import plot_runs
      >>> runs = {name: [{"step": s, "split": "train", "loss": k / s} for s in (1, 2)]
      ...         for k, name in enumerate(("lstm", "gru"), 1)}
      >>> fig = plot_runs(runs)
      >>> [line.get_label() for line in fig.axes[0].get_lines()]
      ['lstm train loss', 'gru train loss']
    """
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("runs is empty: give at least one run's records.")
    watched = [
        name for name, records in runs.items() if any(r.get("split") == "gates" for r in records)
    ]
    fig = Figure(figsize=(8, 3.2 * (1 + len(watched))), layout="constrained")
    axes = fig.subplots(1 + len(watched), 1, sharex=True, squeeze=False)[:, 0]
    for k, (name, records) in enumerate(runs.items()):
        for split, style in (("train", "-"), ("valid", "o")):
            steps, losses = _series(records, split, "loss")
            if steps:
                axes[0].plot(steps, losses, style, color=f"C{k % 10}", markersize=3,
                             label=f"{name} {split} loss")  # fmt: skip
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right", fontsize="small")
    for ax, name in zip(axes[1:], watched, strict=True):
        gate_records = [r for r in runs[name] if r.get("split") == "gates"]
        steps = [r["step"] for r in gate_records]
        for j, gate in enumerate(gate_records[-1]["gates"]):
            for field, style in (("right_saturated", "-"), ("left_saturated", "--")):
                values = [r["gates"].get(gate, {}).get(field, math.nan) for r in gate_records]
                label = gate if style == "-" else None
                ax.plot(steps, values, style, color=f"C{j % 10}", label=label)
        ax.set_ylabel("saturated fraction")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{name}: right-saturated (solid), left-saturated (dashed)", fontsize="small")
        ax.legend(loc="upper left", fontsize="x-small", ncol=2)
    axes[-1].set_xlabel("step")
    return fig


def histogram_figure(record: Record):
    """The histogram of each gate in a ``"gates"`` record (:class:`GateStatsHook`), one panel
    per gate as the report draws them, with the left and right thresholds marked.

    Example:
      >>> from gatenets.train.watch import histogram_figure
      >>> record = {"step": 5, "bin_edges": [0.0, 0.5, 1.0], "left": 0.1, "right": 0.9,
      ...           "gates": {"forward/update": {"histogram": [3, 1]}}}
      >>> [ax.get_title() for ax in histogram_figure(record).axes]
      ['forward/update']
    """
    from matplotlib.figure import Figure

    edges = np.asarray(record["bin_edges"], np.float64)
    names = list(record["gates"])
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(3.2 * columns, 2.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):
        counts = np.asarray(record["gates"][name]["histogram"], np.float64)
        ax.stairs(counts / max(counts.sum(), 1.0), edges, fill=True, color="C0")
        for threshold in (record.get("left"), record.get("right")):
            if threshold is not None:
                ax.axvline(threshold, color="0.4", linestyle=":", linewidth=1)
        ax.set_title(name, fontsize="small")
        ax.set_xlim(0.0, 1.0)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    fig.suptitle(f"gate values at step {record['step']}", fontsize="small")
    return fig


def tensorboard_run_dir(root: str | pathlib.Path, run_dir: str | pathlib.Path) -> pathlib.Path:
    """``root/<name of run_dir>``: where a run's TensorBoard events go, so that runs logged
    into one ``root`` appear side by side in TensorBoard under their own names.

    Example:
      >>> from gatenets.train.watch import tensorboard_run_dir
      >>> tensorboard_run_dir("tb", "runs/adding-gru/").as_posix()
      'tb/adding-gru'
    """
    name = pathlib.Path(os.path.abspath(run_dir)).name
    return pathlib.Path(root) / name


def write_hparams(
    logdir: str | pathlib.Path,
    hparams: dict[str, Any],
    metrics: dict[str, float],
    *,
    notes: dict[str, str] | None = None,
) -> None:
    """Writes a run's configuration and final metrics as TensorBoard hparams into its own
    ``logdir`` (not a new subfolder, as ``SummaryWriter.add_hparams`` would), so the HParams
    tab lists the run under its name beside its scalars. Values that are not numbers, strings
    or booleans are written as text (``str``); None as ``"none"``. ``notes`` are written as
    text summaries (``{tag: markdown}``), to say what a scalar means.

    Example:
      >>> import os, tempfile
      >>> from gatenets.train.watch import write_hparams
      >>> logdir = tempfile.mkdtemp()
      >>> write_hparams(logdir, {"model": "gru", "hidden": 8}, {"test/loss": 0.25})
      >>> sorted(os.listdir(logdir))[0].startswith("events.out.tfevents")
      True
    """
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summary

    def plain(value):
        if value is None:
            return "none"
        return value if isinstance(value, bool | int | float | str) else str(value)

    clean = {str(k): plain(v) for k, v in hparams.items()}
    scores = {str(k): float(v) for k, v in metrics.items()}
    # A file of its own: the training writer's file is named by the second and the host, and a
    # second writer opened in the same second would otherwise replace it.
    with SummaryWriter(logdir=str(logdir), filename_suffix=".hparams") as writer:
        file_writer = writer._get_file_writer()
        for summary in hparams_summary(clean, scores):
            file_writer.add_summary(summary)
        for name, value in scores.items():
            writer.add_scalar(name, value)
        for tag, text in (notes or {}).items():
            writer.add_text(tag, text)


def read_metrics(path: str | pathlib.Path) -> list[Record]:
    """The records of a ``metrics.jsonl`` file (a run directory names its file).

    A last line cut short (no newline, not JSON: the run stopped while writing it) is skipped
    with a warning; any other line that is not JSON is an error.

    Raises:
      FileNotFoundError: naming the path when there is no such file.
      ValueError: naming the line that is not JSON.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"run: no metrics.jsonl at {str(path)!r}; give a directory written by gatenets run."
        )
    text = path.read_text()
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                # A run stopped in the middle of writing its last record: the rest stands.
                warnings.warn(
                    f"{str(path)!r}: skipped line {number}, cut short ({len(line)} characters, "
                    "no newline); the run stopped while writing it.",
                    stacklevel=2,
                )
                continue
            raise ValueError(f"{str(path)!r} line {number} is not JSON: {err}.") from None
    return records


def _series(records: Iterable[Record], split: str, field: str) -> tuple[list[int], list[float]]:
    points = [
        (r["step"], r[field])
        for r in records
        if r.get("split") == split and isinstance(r.get(field), int | float)
    ]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training(records: list[Record], *, title: str = ""):
    """Loss (training and validation) and each gate's saturation over training, as a
    matplotlib figure: top, the losses against the step; below, per gate, the fraction of
    valid steps left-saturated (dashed) and right-saturated (solid), from the ``"gates"``
    records of :class:`GateStatsHook`.

    Example:
      >>> from gatenets.train.watch import plot_training
      >>> records = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (1, 2)]
      >>> records += [{"step": 2, "split": "gates", "bin_edges": [0.0, 1.0],
      ...              "gates": {"forward/update": {"mean": 0.5, "left_saturated": 0.1,
      ...                                           "right_saturated": 0.2}}}]
      >>> [ax.get_ylabel() for ax in plot_training(records).axes]
      ['loss', 'saturated fraction']
    """
    from matplotlib.figure import Figure

    gate_records = [r for r in records if r.get("split") == "gates"]
    rows = 2 if gate_records else 1
    fig = Figure(figsize=(8, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for split, style in (("train", "-"), ("valid", "o-")):
        steps, losses = _series(records, split, "loss")
        if steps:
            axes[0].plot(steps, losses, style, label=f"{split} loss", markersize=3)
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), int | float)]
    # A loss that falls by orders of magnitude reads better on a log axis.
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        axes[0].set_yscale("log")
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right", fontsize="small")
    axes[0].set_title(title)
    if gate_records:
        ax = axes[1]
        steps = [r["step"] for r in gate_records]
        names = list(gate_records[-1]["gates"])
        above = f"> {gate_records[-1].get('right', 'right')}"
        below = f"< {gate_records[-1].get('left', 'left')}"
        colors = [f"C{k % 10}" for k in range(len(names))]
        for name, color in zip(names, colors, strict=True):
            left = [r["gates"].get(name, {}).get("left_saturated", math.nan) for r in gate_records]
            right = [
                r["gates"].get(name, {}).get("right_saturated", math.nan) for r in gate_records
            ]
            ax.plot(steps, right, "-", color=color, label=f"{name} {above}")
            ax.plot(steps, left, "--", color=color, label=f"{name} {below}")
        ax.set_ylabel("saturated fraction")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="upper left", fontsize="x-small", ncol=2)
    axes[-1].set_xlabel("step")
    return fig
