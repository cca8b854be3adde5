"""The training loop: a short loop over steps, and :func:`fit`, which composes its pieces.

:func:`train_loop` takes one step after another and calls a list of hooks
(:class:`~gatenets.train.Hook`) after each step, on Ctrl-C, and at the end. Everything else is a
hook, each usable and testable alone:

- :class:`~gatenets.train.NonFiniteGuard` stops at a NaN or infinite loss, naming the last good
  checkpoint (:class:`~gatenets.train.NonFiniteLossError`).
- :class:`~gatenets.train.PeriodicEvaluation` evaluates on a :class:`~gatenets.train.Schedule`
  and emits ``{"step", "split": "valid", …}`` records.
- :class:`~gatenets.train.PeriodicCheckpoint` saves on a schedule and, on Ctrl-C, once more
  (interrupt handling); :func:`~gatenets.train.restore_latest` resumes.
- :class:`~gatenets.train.TrainLossLog` averages the latest losses and emits
  ``{"step", "split": "train", "loss", …}`` records.
- :class:`~gatenets.train.GateStatsHook` (``gate_stats_every``) emits the gates' mask-aware
  statistics on a fixed validation batch as ``{"step", "split": "gates", …}`` records.
- :class:`~gatenets.train.JsonLinesWriter` (``metrics.jsonl``),
  :class:`~gatenets.train.ProgressBar` and, with ``tensorboard_dir``,
  :class:`~gatenets.train.TensorBoardWriter` receive the records: every record a hook emits
  reaches every hook's ``write``.

:func:`fit` checks its arguments, builds these pieces from its keywords (:func:`fit_hooks`),
appends the caller's ``hooks``, gives each the run's :class:`~gatenets.train.FitContext`
(``begin``) and runs the loop. A new feature is one :class:`~gatenets.train.Hook` subclass,
passed as ``fit(…, hooks=[MyHook()])``: no change to the loop or to :func:`fit`; a built-in
one offered as a keyword of its own (``gate_stats_every=50`` is
``hooks=[GateStatsHook(every=50)]``) adds that one keyword and the line that makes it.
"""

from __future__ import annotations

import functools
import pathlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import optax
from flax import nnx
from jax.sharding import Mesh

from gatenets._layers import check_int
from gatenets.tasks.base import Batch, Task
from gatenets.train.checkpoint import Checkpointer
from gatenets.train.distributed import is_main_process
from gatenets.train.hooks import (
    FitContext,
    Hook,
    LoopState,
    NonFiniteGuard,
    NonFiniteLossError,
    PeriodicCheckpoint,
    PeriodicEvaluation,
    Record,
    Schedule,
    restore_latest,
)
from gatenets.train.logs import JsonLinesWriter, ProgressBar, TrainLossLog
from gatenets.train.sharding import batch_placer, replicate
from gatenets.train.steps import evaluate, make_eval_step, make_train_step
from gatenets.train.watch import GateStatsHook, TensorBoardWriter

__all__ = ["FitHooks", "FitResult", "NonFiniteLossError", "fit", "fit_hooks", "train_loop"]


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      optimizer: the ``nnx.Optimizer`` (its state continues training).
      step: the last completed step.
      train_loss: mean training loss over the last logging window.
      valid: metrics of the last evaluation (empty if none ran).
      seconds: wall time of this call's training steps (compiling included).
      steps_per_second: steps this call ran, per second.
    """

    optimizer: nnx.Optimizer
    step: int
    train_loss: float
    valid: dict[str, float]
    seconds: float
    steps_per_second: float


def train_loop(
    train_step: Callable[[nnx.Module, nnx.Optimizer, Batch], Any],
    batches: Iterator[Batch],
    hooks: Sequence[Hook],
    *,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    start: int,
    steps: int,
) -> LoopState:
    """Runs ``train_step`` from step ``start`` to ``steps``, calling ``hooks`` after each step.

    On Ctrl-C every hook's ``interrupted`` sees the last completed step before the
    ``KeyboardInterrupt`` propagates; every hook's ``close`` runs however the loop ends.

    Args:
      train_step: ``train_step(model, optimizer, batch) -> loss`` (e.g.
        :func:`~gatenets.train.make_train_step`).
      batches: the training batches, from batch ``start`` on.
      hooks: called in order.
      model: the model.
      optimizer: its optimizer.
      start: steps already completed.
      steps: the step to stop at.

    Returns:
      the :class:`~gatenets.train.LoopState` of the last step, ``seconds`` counting the close.

    Example:
      >>> from gatenets.train import Hook, train_loop
      >>> class Show(Hook):
      ...     def after_step(self, state): print(state.step, state.loss)
      ...     def close(self): print("closed")
      >>> state = train_loop(lambda m, o, b: 2.0 * b, iter([1, 2]), [Show()], model=None,
      ...                    optimizer=None, start=0, steps=2)
      1 2.0
      2 4.0
      closed
    """
    state = LoopState(start, float("nan"), 0.0, start, steps, model, optimizer)
    began = time.perf_counter()
    try:
        while state.step < steps:
            loss = float(train_step(model, optimizer, next(batches)))
            state = state._replace(
                step=state.step + 1, loss=loss, seconds=time.perf_counter() - began
            )
            for hook in hooks:
                hook.after_step(state)
    except KeyboardInterrupt:
        for hook in hooks:
            hook.interrupted(state)
        raise
    finally:
        _close_all(hooks)
    return state._replace(seconds=time.perf_counter() - began)


def _close_all(hooks: Sequence[Hook]) -> None:
    """Closes every hook, even when one fails (the metrics file must still be closed when
    the checkpoint cannot be written); the first failure is raised once all are closed."""
    failure = None
    for hook in hooks:
        try:
            hook.close()
        except BaseException as err:  # re-raised below, once every hook is closed
            failure = failure or err
    if failure is not None:
        raise failure


class FitHooks(NamedTuple):
    """The pieces :func:`fit` runs, in the order the loop calls them (see :func:`fit_hooks`):
    the built-in ones by name, then the caller's ``hooks`` (``extra``)."""

    guard: NonFiniteGuard
    progress: ProgressBar
    train_log: TrainLossLog
    evaluation: PeriodicEvaluation
    writer: JsonLinesWriter
    checkpoint: PeriodicCheckpoint | None
    gate_stats: GateStatsHook | None = None
    tensorboard: TensorBoardWriter | None = None
    extra: tuple[Hook, ...] = ()

    def in_order(self) -> list[Hook]:
        """Every hook present, in the order the loop calls them."""
        named = [hook for hook in self[:-1] if hook is not None]
        return [*named, *self.extra]


def fit_hooks(
    model: nnx.Module,
    task: Task,
    *,
    steps: int,
    start: int = 0,
    seed: int = 0,
    eval_every: int | None = None,
    eval_batch_size: int = 256,
    log_every: int = 50,
    out_dir: pathlib.Path | None = None,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
    gate_stats_every: int | None = None,
    tensorboard_dir: str | pathlib.Path | None = None,
    hooks: Sequence[Hook] = (),
) -> FitHooks:
    """The hooks of :func:`fit` for these settings (same meanings as there), each given the
    run's :class:`~gatenets.train.FitContext` (:meth:`~gatenets.train.Hook.begin`).

    Opens ``out_dir/metrics.jsonl`` (nothing when ``out_dir`` is None), dropping the records
    after step ``start`` (those of steps a resumed run takes again), and the progress bar; the
    loop closes them. Each checkpoint carries the training-loss window, so that a resumed
    run's records equal an uninterrupted run's. Every record any hook emits reaches every
    hook's :meth:`~gatenets.train.Hook.write`, on process 0 only.
    """
    # With several processes, only process 0 prints and writes metrics.jsonl.
    main = is_main_process()
    progress_bar = ProgressBar(
        steps, initial=start, desc=task.name, window=log_every, enabled=progress and main
    )
    metrics = None if out_dir is None or not main else out_dir / "metrics.jsonl"
    receivers: list[Hook] = []  # filled below, once every hook exists

    def emit(record: Record) -> None:
        for hook in receivers if main else ():
            hook.write(record)

    say = progress_bar.say if main else (lambda text: None)
    train_log = TrainLossLog(log_every, Schedule(log_every, steps), emit)
    evaluation = PeriodicEvaluation(
        functools.partial(
            evaluate,
            model,
            task,
            "valid",
            batch_size=eval_batch_size,
            seed=seed,
            eval_step=make_eval_step(task),
            prepare=batch_placer(mesh, replicate_uneven=True),
        ),
        Schedule(eval_every, steps) if eval_every != 0 else Schedule(None, None),
        emit,
    )
    checkpoint = None
    if checkpointer is not None:
        checkpoint = PeriodicCheckpoint(
            checkpointer,
            Schedule(checkpoint_every, steps),
            say=say,
            loop=lambda: {"losses": list(train_log.losses)},
        )
    built = FitHooks(
        guard=NonFiniteGuard(checkpointer),
        progress=progress_bar,
        train_log=train_log,
        evaluation=evaluation,
        writer=JsonLinesWriter(metrics, keep_until=start),
        checkpoint=checkpoint,
        # The optional pieces are hooks like any other, made from their one keyword.
        gate_stats=GateStatsHook(every=gate_stats_every) if gate_stats_every else None,
        tensorboard=(
            TensorBoardWriter(tensorboard_dir) if tensorboard_dir is not None and main else None
        ),
        extra=tuple(hooks),
    )
    context = FitContext(model, task, steps, start, seed, eval_batch_size, mesh, out_dir, emit, say)
    receivers.extend(built.in_order())
    for hook in receivers:
        hook.begin(context)
    return built


def _check_fit_arguments(
    tx, steps, batch_size, eval_batch_size, log_every, eval_every, checkpoint_every, hooks, **more
) -> None:
    """Raises naming the first bad argument: ``tx`` must be optax, the counts positive ints
    (``eval_every`` may be 0; it and ``checkpoint_every`` may be None), ``hooks`` a sequence
    of :class:`~gatenets.train.Hook`."""
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation; got {type(tx).__name__}.")
    if isinstance(hooks, Hook) or not isinstance(hooks, Sequence):
        raise TypeError(f"hooks must be a list of gatenets.train.Hook; got {hooks!r}.")
    for index, hook in enumerate(hooks):
        if not isinstance(hook, Hook):
            raise TypeError(
                f"hooks[{index}] must be a gatenets.train.Hook (subclass it and override "
                f"after_step, write, …); got {type(hook).__name__}."
            )
    counts = {
        "steps": steps,
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        "log_every": log_every,
        "eval_every": eval_every,
        "checkpoint_every": checkpoint_every,
        **more,
    }
    for name, value in counts.items():
        if value is not None:
            check_int(value, name, minimum=0 if name == "eval_every" else 1)


def _result(state: LoopState, hooks: FitHooks) -> FitResult:
    """The :class:`FitResult` of a loop that ended in ``state``."""
    seconds = state.seconds
    return FitResult(
        optimizer=state.optimizer,
        step=state.step,
        train_loss=hooks.train_log.mean,
        valid=hooks.evaluation.metrics,
        seconds=seconds,
        steps_per_second=(state.step - state.start) / seconds if seconds > 0 else 0.0,
    )


def _open_checkpoints(
    out: pathlib.Path | None,
    keep: int,
    resume: bool,
    resume_step: int | None,
    steps: int,
    model: nnx.Module,
    optimizer: Any,
) -> tuple[Checkpointer | None, int, list[float]]:
    """The checkpointer of ``out/checkpoints`` (None without ``out``), the step to start
    from and the loss window to start with: those of the checkpoint restored when resuming
    (the latest, or ``resume_step``, after which later checkpoints are moved aside)."""
    resume = resume or resume_step is not None
    if out is None:
        if resume:
            raise ValueError("resume=True needs out_dir, where the checkpoints are.")
        return None, 0, []
    out.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(out / "checkpoints", keep=keep)
    if not resume:
        return checkpointer, 0, []
    try:
        start = restore_latest(checkpointer, model, optimizer, step=resume_step)
        check_resume_steps(start, steps)
    except BaseException:
        checkpointer.close()
        raise
    checkpointer.discard_after(start)
    return checkpointer, start, checkpointer.loop_state(start).get("losses", [])


def check_resume_steps(start: int, steps: int) -> None:
    """Raises unless a run resumed at step ``start`` can train to ``steps``.

    Example:
      >>> from gatenets.train.fit import check_resume_steps
      >>> check_resume_steps(4, 3)
      Traceback (most recent call last):
      ...
      ValueError: steps: 3 is below step 4 of the checkpoint being resumed; pass steps >= 4.
    """
    if steps < start:
        raise ValueError(
            f"steps: {steps} is below step {start} of the checkpoint being resumed; pass "
            f"steps >= {start}."
        )


def fit(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    task: Task,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    eval_every: int | None = None,
    eval_batch_size: int = 256,
    log_every: int = 50,
    out_dir: str | pathlib.Path | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 3,
    resume: bool = False,
    resume_step: int | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
    gate_stats_every: int | None = None,
    tensorboard_dir: str | pathlib.Path | None = None,
    hooks: Sequence[Hook] = (),
) -> FitResult:
    """Trains ``model`` on ``task`` with the optax transformation ``tx``.

    Batch ``k`` of the training stream depends only on ``(seed, k)``, so a run resumed from
    the checkpoint of step ``k`` sees the same batches, and ends with the same parameters, as
    one that was never interrupted.

    Args:
      model: a model of ``task`` (updated in place).
      tx: any optax gradient transformation (``optax.chain(clip, adam)``, …).
      task: the task (data, loss, metrics).
      steps: total number of training steps, counting those before a resume.
      batch_size: sequences per training batch.
      seed: data seed.
      eval_every: evaluate on ``"valid"`` every this many steps and at the end (None: only
        at the end; 0: never).
      eval_batch_size: sequences per evaluation batch.
      log_every: write the mean training loss to ``metrics.jsonl`` every this many steps.
      out_dir: directory for ``metrics.jsonl`` and ``checkpoints/``; None writes nothing.
      checkpoint_every: save every this many steps (and always at the end, on Ctrl-C);
        None saves only at the end.
      keep_checkpoints: how many checkpoints to keep.
      resume: continue from the latest checkpoint in ``out_dir/checkpoints``; there must be
        one, and its step must not exceed ``steps``. Records of ``metrics.jsonl`` after that
        step are dropped, so the file ends as an uninterrupted run's would.
      resume_step: resume from this earlier checkpoint instead (e.g. when the latest is
        corrupt); the checkpoints after it are moved to ``out_dir/discarded-checkpoints``.
      mesh: a device mesh for data parallelism (:func:`gatenets.train.data_parallel_mesh`):
        batches are split over its first axis, parameters replicated.
      progress: show a progress bar with the loss and steps per second.
      gate_stats_every: every this many steps (and at the end), write the mask-aware
        statistics of every gate on the first validation batch (mean, left and right
        saturation, histogram) to ``metrics.jsonl`` as a ``"gates"`` record
        (:class:`~gatenets.train.watch.GateStatsHook`); None: never.
      tensorboard_dir: also write every record as TensorBoard scalars and gate histograms
        there (needs ``tensorboardX``: ``pip install 'gatenets[tensorboard]'``).
      hooks: more :class:`~gatenets.train.Hook` objects, called after the built-in ones:
        each receives the :class:`~gatenets.train.FitContext` before the first step, every
        record, and every step's :class:`~gatenets.train.LoopState` (see
        :class:`~gatenets.train.Hook` for one written in five lines).

    Returns:
      a :class:`FitResult`.

    Raises:
      NonFiniteLossError: when a loss, the parameters or the optimizer state are NaN or
        infinite after a step; nothing is saved after that step.
      FileNotFoundError: when resuming and there is no checkpoint (or none of
        ``resume_step``).
      gatenets.train.CorruptCheckpointError: when the checkpoint to resume fails its checksums
        or holds non-finite values.
      KeyboardInterrupt: after saving a checkpoint of the last completed step.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from gatenets.tasks import get_task
      >>> from gatenets.train import fit
      >>> task = get_task("adding", length=6)
      >>> model = task.make_model("lstm", 8, rngs=nnx.Rngs(0))
      >>> result = fit(model, optax.adam(1e-2), task, steps=3, batch_size=8, eval_every=0,
      ...              progress=False)
      >>> result.step
      3
    """
    _check_fit_arguments(
        tx,
        steps,
        batch_size,
        eval_batch_size,
        log_every,
        eval_every,
        checkpoint_every,
        hooks,
        gate_stats_every=gate_stats_every,
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    out = None if out_dir is None else pathlib.Path(out_dir)
    checkpointer, start, losses = _open_checkpoints(
        out, keep_checkpoints, resume, resume_step, steps, model, optimizer
    )
    if mesh is not None:
        nnx.update((model, optimizer), replicate(nnx.state((model, optimizer)), mesh))
    built = fit_hooks(
        model,
        task,
        steps=steps,
        start=start,
        seed=seed,
        eval_every=eval_every,
        eval_batch_size=eval_batch_size,
        log_every=log_every,
        out_dir=out,
        checkpointer=checkpointer,
        checkpoint_every=checkpoint_every,
        mesh=mesh,
        progress=progress,
        gate_stats_every=gate_stats_every,
        tensorboard_dir=tensorboard_dir,
        hooks=hooks,
    )
    built.train_log.losses.extend(losses)
    state = train_loop(
        make_train_step(task),
        map(batch_placer(mesh), task.batches("train", batch_size, seed=seed, start=start)),
        built.in_order(),
        model=model,
        optimizer=optimizer,
        start=start,
        steps=steps,
    )
    return _result(state, built)
