"""The training loop: progress, periodic evaluation, JSON-lines metrics, checkpoints, resume."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any, NamedTuple

import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from gatenets.tasks.base import Task, check_positive_int
from gatenets.train.checkpoint import Checkpointer
from gatenets.train.sharding import replicate, shard_batch
from gatenets.train.steps import evaluate, make_eval_step, make_train_step


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left in place."""


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


def _write_line(stream, record: dict[str, Any]) -> None:
    if stream is not None:
        stream.write(json.dumps(record) + "\n")
        stream.flush()


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
    mesh: Mesh | None = None,
    progress: bool = True,
) -> FitResult:
    """Trains ``model`` on ``task`` with the optax transformation ``tx``.

    Batch ``k`` of the training stream depends only on ``(seed, k)``, so a run resumed from
    the checkpoint of step ``k`` sees the same batches, and ends with the same parameters, as
    one that was never interrupted.

    Args:
      model: a model of ``task`` (updated in place).
      tx: any optax gradient transformation, e.g.
        ``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))``.
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
      resume: continue from the latest checkpoint in ``out_dir/checkpoints`` if there is one.
      mesh: a device mesh for data parallelism (:func:`gatenets.train.data_parallel_mesh`):
        batches are split over its first axis, parameters replicated.
      progress: show a progress bar with the loss and steps per second.

    Returns:
      a :class:`FitResult`.

    Raises:
      NonFiniteLossError: when a loss is NaN or infinite; nothing is saved after that step.
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
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation; got {type(tx).__name__}.")
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size)
    log_every = check_positive_int("log_every", log_every)
    if eval_every is not None:
        eval_every = check_positive_int("eval_every", eval_every, minimum=0)
    if checkpoint_every is not None:
        checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir, where the checkpoints are.")

    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    out = None if out_dir is None else pathlib.Path(out_dir)
    checkpointer = None
    start = 0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        checkpointer = Checkpointer(out / "checkpoints", keep=keep_checkpoints)
        if resume and checkpointer.latest_step() is not None:
            start = checkpointer.restore(model, optimizer)
    if mesh is not None:
        nnx.update((model, optimizer), replicate(nnx.state((model, optimizer)), mesh))

    def prepare(batch):
        return batch if mesh is None else shard_batch(batch, mesh)

    def prepare_eval(batch):
        # The last evaluation batch of a finite split may not divide over the devices: it is
        # then replicated, each device computing all of it, instead of refused.
        if mesh is None or np.shape(batch.inputs)[0] % mesh.shape[mesh.axis_names[0]] == 0:
            return prepare(batch)
        return replicate(batch, mesh)

    train_step = make_train_step(task)
    eval_step = make_eval_step(task)
    metrics_file = None if out is None else open(out / "metrics.jsonl", "a")
    bar = tqdm(
        total=steps,
        initial=start,
        disable=not progress,
        desc=task.name,
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    step, window, valid = start, [], {}
    began = time.perf_counter()

    def save() -> int:
        # The optimizer's own counter, not the loop's: Ctrl-C usually lands while the loop
        # waits for a step's loss, after that step's parameters were already written back.
        done = int(optimizer.step[...])
        if checkpointer is not None:
            checkpointer.save(done, model, optimizer)
        return done

    try:
        batches = task.batches("train", batch_size, seed=seed, start=start)
        while step < steps:
            loss = float(train_step(model, optimizer, prepare(next(batches))))
            if not math.isfinite(loss):
                kept = None if checkpointer is None else checkpointer.latest_step()
                where = (
                    f"the last good checkpoint, step {kept}, is in {str(checkpointer.directory)!r}"
                    if kept is not None
                    else "no checkpoint was saved"
                )
                raise NonFiniteLossError(
                    f"training stopped: the loss is {loss} at step {step + 1}; {where}. "
                    "Try a lower learning rate or gradient clipping."
                )
            step += 1
            window.append(loss)
            bar.update(1)
            elapsed = time.perf_counter() - began
            rate = (step - start) / elapsed
            bar.set_postfix(loss=f"{np.mean(window[-log_every:]):.4f}", refresh=False)
            if step % log_every == 0 or step == steps:
                _write_line(
                    metrics_file,
                    {
                        "step": step,
                        "split": "train",
                        "loss": float(np.mean(window[-log_every:])),
                        "steps_per_second": rate,
                        "seconds": elapsed,
                    },
                )
            if eval_every != 0 and (
                step == steps or (eval_every is not None and step % eval_every == 0)
            ):
                valid = evaluate(
                    model,
                    task,
                    "valid",
                    batch_size=eval_batch_size,
                    seed=seed,
                    eval_step=eval_step,
                    prepare=prepare_eval,
                )
                _write_line(metrics_file, {"step": step, "split": "valid", **valid})
                shown = ", ".join(f"{k} {v:.4g}" for k, v in valid.items())
                bar.write(f"step {step}: valid {shown}", file=sys.stderr)
            if step == steps or (checkpoint_every is not None and step % checkpoint_every == 0):
                save()
    except KeyboardInterrupt:
        done = save()
        if checkpointer is not None:
            checkpointer.wait()
            bar.write(
                f"interrupted: saved step {done} in {str(checkpointer.directory)!r}; "
                "continue with resume=True (gatenets run … --resume).",
                file=sys.stderr,
            )
        raise
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if checkpointer is not None:
            checkpointer.wait()
            checkpointer.close()
    seconds = time.perf_counter() - began
    return FitResult(
        optimizer=optimizer,
        step=step,
        train_loss=float(np.mean(window[-log_every:])) if window else float("nan"),
        valid=valid,
        seconds=seconds,
        steps_per_second=(step - start) / seconds if seconds > 0 else 0.0,
    )
