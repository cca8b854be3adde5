"""Where the loop's records go: the training-loss log, the JSON-lines file and the progress bar.

:class:`TrainLossLog` is a hook that turns losses into records; :class:`JsonLinesWriter` and
:class:`ProgressBar` receive records (``write(record)``); :func:`fan_out` sends each record to
several of them. Restricting output to one process of a multi-process run is one more wrapper
around a writer.
"""

from __future__ import annotations

import collections
import json
import pathlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gatenets._files import atomic_write
from gatenets.train.hooks import Hook, LoopState, Record, Schedule


def fan_out(writers: Iterable[Any]) -> Callable[[Record], None]:
    """An ``emit(record)`` that calls ``writer.write(record)`` for each writer, in order.

    Example:
      >>> from gatenets.train import fan_out
      >>> class Printer:
      ...     def __init__(self, name): self.name = name
      ...     def write(self, record): print(self.name, record)
      >>> fan_out([Printer("a"), Printer("b")])({"step": 1})
      a {'step': 1}
      b {'step': 1}
    """
    writers = tuple(writers)

    def emit(record: Record) -> None:
        for writer in writers:
            writer.write(record)

    return emit


class TrainLossLog(Hook):
    """Keeps the last ``window`` losses and emits their mean when ``schedule`` is due.

    Each record is ``{"step", "split": "train", "loss", "steps_per_second", "seconds"}``, the
    rate counting this call's steps only.

    Args:
      window: how many of the latest losses the mean covers.
      schedule: when to emit a record.
      emit: receives each record.

    Example:
      >>> from gatenets.train import LoopState, Schedule, TrainLossLog
      >>> records = []
      >>> log = TrainLossLog(2, Schedule(2, 3), records.append)
      >>> for step, loss in ((1, 4.0), (2, 2.0), (3, 1.0)):
      ...     log.after_step(LoopState(step, loss, 0.5 * step, 0, 3, None, None))
      >>> [(r["step"], r["loss"], r["steps_per_second"]) for r in records], log.mean
      ([(2, 3.0, 2.0), (3, 1.5, 2.0)], 1.5)
    """

    def __init__(self, window: int, schedule: Schedule, emit: Callable[[Record], None]):
        self.losses: collections.deque[float] = collections.deque(maxlen=window)
        self.schedule = schedule
        self.emit = emit

    @property
    def mean(self) -> float:
        """Mean of the window's losses (NaN before the first step)."""
        return float(np.mean(self.losses)) if self.losses else float("nan")

    def after_step(self, state: LoopState) -> None:
        self.losses.append(state.loss)
        if self.schedule(state.step):
            self.emit(
                {
                    "step": state.step,
                    "split": "train",
                    "loss": self.mean,
                    "steps_per_second": (state.step - state.start) / state.seconds,
                    "seconds": state.seconds,
                }
            )


class JsonLinesWriter(Hook):
    """Appends each record as one JSON line to ``path`` (flushed at once, so a crash loses
    nothing written); ``path=None`` writes nothing. As a hook, the loop closes it at the end.

    Args:
      path: the file, or None.
      keep_until: first drop the file's records of steps after this one (a run resumed from
        the checkpoint of that step writes them again); None keeps every record.

    Example:
      >>> import pathlib, tempfile
      >>> from gatenets.train import JsonLinesWriter
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
      >>> with JsonLinesWriter(path) as writer:
      ...     writer.write({"step": 1, "split": "train", "loss": 0.5})
      >>> path.read_text()
      '{"step": 1, "split": "train", "loss": 0.5}\\n'
    """

    def __init__(self, path: str | pathlib.Path | None, *, keep_until: int | None = None):
        if path is not None and keep_until is not None:
            _drop_records_after(pathlib.Path(path), keep_until)
        self.stream = None if path is None else open(path, "a")

    def write(self, record: Record) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def __enter__(self) -> JsonLinesWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _drop_records_after(path: pathlib.Path, step: int) -> None:
    """Rewrites ``path`` (atomically) without its records of steps after ``step``, and without
    a last line cut short by a crash."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text("".join(kept)), ".jsonl.tmp")


class ProgressBar(Hook):
    """A tqdm bar on stderr with the mean loss of the last ``window`` steps; it prints each
    validation record as a line (``step 200: valid loss 0.0123, …``), shown or not.

    Args:
      total: the step the bar ends at.
      initial: the step it starts at (after a resume).
      desc: the bar's label.
      window: how many of the latest losses the shown mean covers.
      enabled: draw the bar (the lines are printed either way).
    """

    def __init__(self, total: int, *, initial: int, desc: str, window: int, enabled: bool):
        self.losses: collections.deque[float] = collections.deque(maxlen=window)
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=not enabled,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def after_step(self, state: LoopState) -> None:
        self.losses.append(state.loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{np.mean(self.losses):.4f}", refresh=False)

    def write(self, record: Record) -> None:
        if record.get("split") == "valid":
            shown = ", ".join(
                f"{name} {value:.4g}"
                for name, value in record.items()
                if name not in ("step", "split")
            )
            self.say(f"step {record['step']}: valid {shown}")

    def say(self, text: str) -> None:
        """Prints ``text`` on stderr without breaking the bar."""
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
