"""A whole run of a task: config, training, checkpoints, final summary; and reloading it."""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from gatenets._files import atomic_write
from gatenets._layers import check_int
from gatenets.tasks import MODELS, get_task
from gatenets.tasks.base import Task
from gatenets.tasks.charlm import TextChangedError
from gatenets.train.checkpoint import Checkpointer, saved_steps
from gatenets.train.distributed import is_main_process
from gatenets.train.fit import FitResult, check_resume_steps, fit
from gatenets.train.rundir import RunLock, check_run_directory
from gatenets.train.sharding import data_parallel_mesh
from gatenets.train.steps import evaluate, gate_means


class RunConfig(NamedTuple):
    """Everything that defines a run; ``config.json`` holds it. None means the task's default.

    Attributes:
      task: task name.
      options: the task's options (``{"length": 100}``, ``{"text_file": "x.txt"}``, …).
      model: a name of :func:`gatenets.tasks.list_models` (the task's default if None).
      hidden: recurrent state size (the width of ``"attention"``).
      num_layers: stacked recurrent layers (blocks of ``"attention"``).
      steps: training steps.
      batch_size: sequences per training batch.
      learning_rate: Adam's learning rate.
      grad_clip: global-norm gradient clipping threshold.
      seed: seed of parameters and data.
      eval_every: steps between validations.
      eval_batch_size: sequences per evaluation batch.
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: how many checkpoints to keep.
      data_parallel: split batches over all local devices.
    """

    task: str
    options: dict[str, Any] = {}
    model: str | None = None
    hidden: int | None = None
    num_layers: int = 1
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int | None = None
    eval_batch_size: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    data_parallel: bool = False

    def resolved(self, task: Task) -> RunConfig:
        """The config with the task's defaults filled in, validated."""
        model = task.defaults.get("model", "lstm") if self.model is None else self.model
        if model not in MODELS:
            raise ValueError(f"model: unknown model {model!r}; the models are {list(MODELS)}.")
        filled = self._replace(
            model=model,
            options=dict(task.options),
            **{
                field: task.defaults[field]
                for field in ("hidden", "steps", "batch_size", "learning_rate", "eval_every")
                if getattr(self, field) is None
            },
        )
        if filled.eval_batch_size is None:
            filled = filled._replace(eval_batch_size=task.defaults["eval_batch_size"])
        if filled.checkpoint_every is None:
            filled = filled._replace(checkpoint_every=filled.eval_every)
        for field in ("hidden", "num_layers", "steps", "batch_size", "eval_batch_size"):
            check_int(getattr(filled, field), field)
        for field in ("eval_every", "checkpoint_every", "seed"):
            check_int(getattr(filled, field), field, minimum=0)
        check_int(filled.keep_checkpoints, "keep_checkpoints")
        for field in ("learning_rate", "grad_clip"):
            value = getattr(filled, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{field} must be a positive number; got {value!r}.")
        return filled._replace(checkpoint_every=filled.checkpoint_every or None)


class LoadedRun(NamedTuple):
    """A run rebuilt from its directory: the trained model, its task and its config."""

    model: nnx.Module
    task: Task
    config: RunConfig


class TrainedModel(NamedTuple):
    """What :func:`train_model` returns: the task, its trained model, the resolved config and
    the :class:`~gatenets.train.FitResult`."""

    task: Task
    model: nnx.Module
    config: RunConfig
    result: FitResult


def make_optimizer(config: RunConfig) -> optax.GradientTransformation:
    """Adam after global-norm clipping, as ``gatenets run`` trains."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip), optax.adam(config.learning_rate)
    )


def _write_json(path: pathlib.Path, data: Any) -> None:
    """Writes ``data`` to ``path`` atomically (a crash leaves the old file or the new one),
    as strict JSON: NaN and infinities become null, which every JSON reader accepts. With
    several processes, only process 0 writes."""
    if not is_main_process():
        return
    text = json.dumps(_strict(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(text), ".json.tmp")


def _strict(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _strict(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_strict(value) for value in data]
    return data


def _build(config: RunConfig, task: Task | None = None) -> tuple[Task, RunConfig, nnx.Module]:
    """The task (made from the config unless given), the resolved config and a fresh model."""
    task = get_task(config.task, **config.options) if task is None else task
    config = config.resolved(task)
    model = task.make_model(
        config.model, config.hidden, num_layers=config.num_layers, rngs=nnx.Rngs(config.seed)
    )
    return task, config, model


def train_model(
    config: RunConfig,
    *,
    task: Task | None = None,
    out_dir: str | pathlib.Path | None = None,
    resume: bool = False,
    resume_step: int | None = None,
    progress: bool = True,
    **watch: Any,
) -> TrainedModel:
    """Builds the config's model of its task and trains it with :func:`~gatenets.train.fit`.

    Writes nothing unless ``out_dir`` is given (then ``metrics.jsonl`` and ``checkpoints/``
    as :func:`fit` does; :func:`run` adds the config and the summary).

    Args:
      config: the settings; the task's defaults fill what it leaves None.
      task: the task, if already made (it must be ``config``'s).
      out_dir: where :func:`fit` writes, or None.
      resume: continue from the latest checkpoint in ``out_dir``.
      resume_step: continue from this earlier checkpoint instead.
      progress: show a progress bar.
      **watch: ``gate_stats_every``, ``tensorboard_dir`` and ``hooks``, passed to :func:`fit`.

    Example:
      >>> from gatenets.train import RunConfig, train_model
      >>> trained = train_model(RunConfig("adding", {"length": 6}, hidden=4, steps=2,
      ...                                 batch_size=4, eval_every=0), progress=False)
      >>> trained.result.step, trained.config.model, trained.model.rnn.hidden_features
      (2, 'lstm', 4)
    """
    task, config, model = _build(config, task)
    result = fit(
        model,
        make_optimizer(config),
        task,
        steps=config.steps,
        batch_size=config.batch_size,
        seed=config.seed,
        eval_every=config.eval_every,
        eval_batch_size=config.eval_batch_size,
        out_dir=out_dir,
        checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints,
        resume=resume,
        resume_step=resume_step,
        mesh=data_parallel_mesh() if config.data_parallel else None,
        progress=progress,
        **watch,
    )
    return TrainedModel(task, model, config, result)


def read_config(run_dir: str | pathlib.Path) -> RunConfig:
    """The :class:`RunConfig` saved in ``run_dir/config.json``.

    Raises:
      FileNotFoundError: when ``run_dir`` has no ``config.json`` (it is not a run).
      ValueError: when ``config.json`` is not a run config, naming the file.

    Example:
      >>> import pathlib, tempfile
      >>> from gatenets.train.run import read_config
      >>> run_dir = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (run_dir / "config.json").write_text('{"task": "adding", "hiden": 4}')
      >>> read_config(run_dir)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: .../config.json' is not a run config written by gatenets run (unexpected key 'hiden'); fix it or run again into a new directory.
    """  # noqa: E501
    path = pathlib.Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"run_dir: no config.json in {str(run_dir)!r}; it is not a run written by gatenets run."
        )
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        unknown = sorted(set(data) - set(RunConfig._fields))
        if unknown:
            raise ValueError(f"unexpected key {unknown[0]!r}")
        if not isinstance(data.get("task"), str):
            raise ValueError("no task name")
        for key, value in data.items():
            _check_config_value(key, value)
        return RunConfig(**data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{str(path)!r} is not a run config written by gatenets run ({err}); fix it or "
            "run again into a new directory."
        ) from None


_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str,),
    "options": (dict,),
    "model": (str, type(None)),
    "learning_rate": (int, float, type(None)),
    "grad_clip": (int, float),
    "data_parallel": (bool,),
}
"""The JSON types of :class:`RunConfig`'s fields; the others are integers (or null)."""


def _check_config_value(key: str, value: Any) -> None:
    """Raises ValueError naming ``key`` when ``value`` is not of its field's JSON type (a
    hand-edited ``config.json``)."""
    types = _CONFIG_TYPES.get(key, (int, type(None)))
    if key in ("num_layers", "seed", "keep_checkpoints", "grad_clip"):
        types = tuple(t for t in types if t is not type(None))
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ValueError(f"{key!r} is {json.dumps(value)}, expected {expected}")


def _check_resumable(
    out: pathlib.Path, config: RunConfig, resume: bool, resume_step: int | None
) -> None:
    """Raises unless ``out`` holds no saved step (a fresh directory, or a run that stopped
    before its first checkpoint: it starts again), or holds this config's run (``steps``
    aside) and ``resume`` is set, with a checkpoint at or below ``steps``."""
    steps = saved_steps(out / "checkpoints")
    if not resume and resume_step is None:
        if steps and (out / "config.json").exists():
            raise FileExistsError(
                f"out_dir {str(out)!r} already holds a run; pass resume=True (--resume) to "
                "continue it or choose another directory."
            )
        return
    if not steps:
        raise FileNotFoundError(
            f"resume: {str(out)!r} holds no checkpoint to resume; run without resume "
            "(--resume) to start the run."
        )
    saved = read_config(out)
    _check_same_text(out, saved, config)
    differing = [
        f for f in RunConfig._fields if f != "steps" and getattr(saved, f) != getattr(config, f)
    ]
    if differing:
        raise ValueError(
            f"resume: the config differs from the saved run in {differing}; only steps may "
            "change when resuming."
        )
    if resume_step is not None and resume_step not in steps:
        raise FileNotFoundError(
            f"resume_step: no checkpoint of step {resume_step!r} in "
            f"{str(out / 'checkpoints')!r}; the steps are {steps}."
        )
    check_resume_steps(steps[-1] if resume_step is None else resume_step, config.steps)


def _check_same_text(out: pathlib.Path, saved: RunConfig, config: RunConfig) -> None:
    """Raises :class:`~gatenets.tasks.charlm.TextChangedError` when the run in ``out`` was
    trained on a text file whose contents differ from the file ``config`` reads now."""
    before = saved.options.get("text_sha256") if isinstance(saved.options, dict) else None
    now = config.options.get("text_sha256")
    if before is not None and now is not None and before != now:
        raise TextChangedError(
            f"text_file {config.options.get('text_file')!r} differs from the text the run in "
            f"{str(out)!r} was trained on (SHA-256 {now[:16]}…, the run's {before[:16]}…, "
            f"file {saved.options.get('text_file')!r}); put the original text back, or start "
            "a new run on the new text."
        )
    if "text_sha256" in config.options and "text_sha256" not in saved.options:
        # A run saved before texts were checksummed: nothing to compare with.
        saved.options["text_sha256"] = now


def run(
    config: RunConfig,
    out_dir: str | pathlib.Path,
    *,
    resume: bool = False,
    resume_step: int | None = None,
    progress: bool = True,
    flag: str = "out_dir",
    **watch: Any,
) -> dict[str, Any]:
    """Trains ``config`` into ``out_dir`` and returns the summary.

    Writes ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and ``summary.json``: the test
    metrics against the baseline and target, validation metrics, wall time, and the mean of
    every gate over a validation batch (and, for ``charlm``, a sample of generated text).

    Args:
      config: the run's settings.
      out_dir: the run directory.
      resume: continue the run in ``out_dir`` from its latest checkpoint; the config must
        match the saved one except for ``steps``, which must not be below the checkpoint's.
        A directory whose run stopped before its first checkpoint is started again without it.
      resume_step: continue from this earlier checkpoint instead (implies ``resume``).
      progress: show a progress bar.
      flag: how errors name ``out_dir`` (``"--out"`` from the command line).
      **watch: ``gate_stats_every``, ``tensorboard_dir`` and ``hooks``, passed to :func:`fit`.

    Raises:
      FileExistsError: when ``out_dir`` holds files but no gatenets run (nothing is
        written), or holds a run and ``resume`` is not set.
      gatenets.train.rundir.RunDirectoryInUseError: when another process is writing a run
        into ``out_dir`` (its pid is named).
      gatenets.tasks.charlm.TextChangedError: when resuming a run on a text file whose
        contents changed since.

    Example:
      >>> import tempfile
      >>> from gatenets.train import RunConfig, load_run, run
      >>> config = RunConfig("adding", {"length": 6}, hidden=4, steps=2, batch_size=4,
      ...                    eval_batch_size=8)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     summary = run(config, d, progress=False)
      ...     loaded = load_run(d)
      >>> summary["metric"], summary["steps"], loaded.config.hidden
      ('mse', 2, 4)
    """
    opened = open_run(config, out_dir, resume=resume, resume_step=resume_step, flag=flag)
    try:
        return train_run(opened, progress=progress, **watch)
    finally:
        opened.close()


class OpenedRun(NamedTuple):
    """A run directory checked and locked for one run, its ``config.json`` written
    (:func:`open_run`); :meth:`close` releases the lock."""

    task: Task
    config: RunConfig
    out: pathlib.Path
    resume: bool
    resume_step: int | None
    lock: RunLock | None

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


def open_run(
    config: RunConfig,
    out_dir: str | pathlib.Path,
    *,
    resume: bool = False,
    resume_step: int | None = None,
    flag: str = "out_dir",
) -> OpenedRun:
    """Every check of :func:`run` before training (the task and config, the directory, its
    lock, resuming), then writes ``config.json``: what it raises is the caller's doing, not
    a failure of training. Same arguments and errors as :func:`run`."""
    out = pathlib.Path(out_dir)
    task = get_task(config.task, **config.options)
    config = config.resolved(task)
    # Every check before the first write: a refused resume leaves config.json as it was, and
    # a directory of someone else's files is refused before the lock file is made in it.
    check_run_directory(out, flag=flag)
    # Only process 0 writes the run's own files; the others write checkpoints with it.
    lock = RunLock(out, flag=flag) if is_main_process() else None
    try:
        check_run_directory(out, flag=flag)  # again, now that no other run can write it
        _check_resumable(out, config, resume, resume_step)
        _write_json(out / "config.json", config._asdict())
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return OpenedRun(task, config, out, resume, resume_step, lock)


def train_run(opened: OpenedRun, *, progress: bool = True, **watch: Any) -> dict[str, Any]:
    """Trains the run :func:`open_run` opened and writes its ``summary.json``; returns the
    summary (see :func:`run`)."""
    task, config, out = opened.task, opened.config, opened.out
    resume, resume_step = opened.resume, opened.resume_step
    began = time.perf_counter()
    trained = train_model(
        config,
        task=task,
        out_dir=out,
        resume=resume,
        resume_step=resume_step,
        progress=progress,
        **watch,
    )
    model, result = trained.model, trained.result
    test = evaluate(model, task, "test", batch_size=config.eval_batch_size, seed=config.seed)
    value = test[task.metric]
    better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)
    probe = next(task.batches("valid", min(config.eval_batch_size, 64), seed=config.seed))
    summary: dict[str, Any] = {
        "task": task.name,
        "options": task.options,
        "model": config.model,
        "hidden": config.hidden,
        "num_layers": config.num_layers,
        "parameters": int(sum(np.size(p) for p in _leaves(nnx.state(model, nnx.Param)))),
        "steps": result.step,
        "seconds": time.perf_counter() - began,
        "steps_per_second": result.steps_per_second,
        "metric": task.metric,
        "value": value,
        "baseline": task.baseline,
        "baseline_source": task.baseline_source,
        "beats_baseline": bool(better(value, task.baseline)),
        "target": task.target,
        "reached_target": bool(better(value, task.target) or value == task.target),
        "test": test,
        "valid": result.valid,
        "train_loss": result.train_loss,
        "gate_means": gate_means(model, probe),
    }
    if hasattr(task, "sample"):
        summary["sample"] = task.sample(
            model, task.default_prompt, 200, temperature=0.8, seed=config.seed
        )
    _write_json(out / "summary.json", summary)
    return summary


def _leaves(state: Any) -> list[Any]:
    return jax.tree_util.tree_leaves(nnx.to_pure_dict(state))


def load_run(run_dir: str | pathlib.Path) -> LoadedRun:
    """Rebuilds the task and model of a run directory and loads its latest checkpoint.

    Args:
      run_dir: a directory written by :func:`run` (``gatenets run … --out run_dir``).

    Returns:
      ``LoadedRun(model, task, config)`` with the model in evaluation mode.
    """
    run_dir = pathlib.Path(run_dir)
    config = read_config(run_dir)
    try:
        task, _, model = _build(config)
    except TextChangedError:
        raise
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{str(run_dir / 'config.json')!r} does not describe a run gatenets can rebuild "
            f"({err}); fix it or run again into a new directory."
        ) from err
    with Checkpointer(run_dir / "checkpoints", keep=config.keep_checkpoints) as checkpoints:
        checkpoints.restore(model)
    model.eval()
    return LoadedRun(model, task, config)
