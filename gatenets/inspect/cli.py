"""``gatenets inspect``: write the gate report of a trained model.

With ``--run DIR`` it loads a run written by ``gatenets run`` (through
``gatenets.train.load_run``). Without it, it first trains the default model of the char-LM task
(:mod:`gatenets.tasks.charlm`, Python standard-library source already on the machine) with
``gatenets.train.fit``, so ``gatenets inspect --out report/`` works on a fresh install. Either
way the model is inspected on its task's validation data, and the gradient picture sets its
recurrent layer beside an untrained plain sigmoid RNN of the same size.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import pathlib
from typing import Any

LEARNING_RATE = 1e-2
"""Adam's learning rate for the built-in model: larger than the char-LM task's default, since
an inspection trains for a few hundred steps only."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="write an HTML report of a model's gates",
        description=(
            "Write a self-contained HTML report (and PNGs) and an interactive explorer page "
            "(explorer.html) of a model's gates: of a run written "
            "by `gatenets run` (--run DIR), or, without --run, of the char-LM task's model, "
            "which it trains first."
        ),
    )
    parser.add_argument("--run", help="a run directory written by `gatenets run`")
    parser.add_argument(
        "--step", type=int, help="with --run: the checkpoint of this step (default: the latest)"
    )
    parser.add_argument(
        "--compare-run",
        metavar="DIR",
        help="with --run: show this second run beside it, on the same sequences, and the "
        "difference of each gate both have",
    )
    parser.add_argument(
        "--compare-step",
        type=int,
        metavar="M",
        help="with --run: compare with checkpoint M (of --compare-run, or of --run itself)",
    )
    parser.add_argument(
        "--text",
        metavar="FILE",
        help="inspect the model on this UTF-8 text (a character model: --run of charlm, or the "
        "built-in model) instead of its validation data",
    )
    parser.add_argument(
        "--sequences", type=int, default=16, help="with --text: how many sequences (default 16)"
    )
    parser.add_argument(
        "--sequence-length",
        type=int,
        default=256,
        help="with --text: characters per sequence (default 256)",
    )
    parser.add_argument("--out", default="report", help="output directory (default: report/)")
    parser.add_argument("--batches", type=int, default=8, help="batches to collect gates over")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300, help="training steps (built-in model)")
    parser.add_argument("--hidden", type=int, default=64, help="state size (built-in model)")
    parser.add_argument("--length", type=int, default=64, help="sequence length (built-in)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--left", type=float, default=0.1, help="left-saturation threshold")
    parser.add_argument("--right", type=float, default=0.9, help="right-saturation threshold")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """Raises :class:`~gatenets.cli.UsageError` naming the first bad argument, before any work:
    the counts, the thresholds, ``--run`` (a directory holding a readable run config) and
    ``--out`` (a directory that can be written)."""
    from gatenets.cli import UsageError, check_output_dir

    for name in ("batches", "batch_size", "steps", "hidden", "length", "sequences"):
        value = getattr(args, name)
        if value < 1:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be >= 1; got {value}.")
    if args.sequence_length < 2:
        raise UsageError(f"--sequence-length must be >= 2; got {args.sequence_length}.")
    if args.step is not None and args.run is None:
        raise UsageError("--step needs --run: it picks a checkpoint of that run.")
    for flag in ("compare_run", "compare_step"):
        if getattr(args, flag) is not None and args.run is None:
            raise UsageError(f"--{flag.replace('_', '-')} needs --run: it compares with that run.")
    if args.compare_run is not None and not os.path.isdir(args.compare_run):
        raise UsageError(f"--compare-run {args.compare_run!r} is not a directory.")
    if args.text is not None and not os.path.isfile(args.text):
        raise UsageError(f"--text {args.text!r} is not a file; give a UTF-8 text file.")
    if not 0.0 <= args.left <= args.right <= 1.0:
        raise UsageError(
            f"need 0 <= --left <= --right <= 1; got --left {args.left} and --right {args.right}."
        )
    if args.run is not None:
        if not os.path.isdir(args.run):
            raise UsageError(f"--run {args.run!r} is not a directory; give a run directory.")
        from gatenets.train.run import read_config

        try:
            read_config(args.run)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(f"--run: {err}") from None
    check_output_dir("--out", args.out)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    checkpoint = None
    if args.run is not None:
        model, task, checkpoint = _load_run(args)
        title = f"gatenets gate report: {task.name} ({args.run}, step {checkpoint['step']})"
        notes = [f"{task.name}: {task.description}"]
    else:
        model, task, notes = _train_charlm(args)
        title = "gatenets gate report: character LSTM"
    if args.text is not None:
        data, source = _text_batches(task, args)
    else:
        data, source = _validation_batches(task, args)
    compare = None
    if args.compare_run is not None or args.compare_step is not None:
        compare = _compared_model(args, task, checkpoint)
    files = _inspect_task(
        model, task, data, args, title=title, notes=notes, source=source, checkpoint=checkpoint,
        compare=compare,
    )  # fmt: skip
    print(f"report: {files.html}")
    if files.explorer is not None:
        print(f"explorer: {files.explorer} (open it in a browser)")
    for path in files.images.values():
        print(f"  {path}")
    return 0


def _load_run(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """The run's model at checkpoint ``--step`` (the latest without it), its task, and what
    the page says of it: ``{"run", "step", "validation", "metric"}``."""
    from gatenets.cli import UsageError
    from gatenets.train import load_run
    from gatenets.train.checkpoint import Checkpointer
    from gatenets.train.watch import read_metrics

    loaded = load_run(args.run)
    with Checkpointer(
        os.path.join(args.run, "checkpoints"), keep=loaded.config.keep_checkpoints
    ) as checkpoints:
        steps = checkpoints.all_steps()
        if args.step is not None and args.step not in steps:
            flag = getattr(args, "step_flag", "--step")
            raise UsageError(f"{flag} {args.step}: {args.run!r} has checkpoints of steps {steps}.")
        step = checkpoints.restore(loaded.model, step=args.step)
    loaded.model.eval()
    try:
        records = read_metrics(args.run)
    except (FileNotFoundError, ValueError):
        records = []
    losses = [
        r["loss"]
        for r in records
        if r.get("split") == "valid" and r.get("step") == step and "loss" in r
    ]
    checkpoint = {
        "run": os.path.abspath(args.run),
        "step": step,
        "validation": losses[-1] if losses else None,
        "metric": "loss",
    }
    return loaded.model, loaded.task, checkpoint


def _compared_model(args: argparse.Namespace, task: Any, checkpoint: dict) -> tuple:
    """``(model, label of --run, label of the other)`` for ``--compare-run`` and
    ``--compare-step``."""
    from gatenets.cli import UsageError

    other_run = args.compare_run or args.run
    other = argparse.Namespace(run=other_run, step=args.compare_step, step_flag="--compare-step")
    model, other_task, other_checkpoint = _load_run(other)
    if getattr(task, "vocab", None) != getattr(other_task, "vocab", None):
        raise UsageError(
            f"--compare-run {other_run!r} reads other inputs than --run {args.run!r} (another "
            "task or vocabulary): the two must run on the same sequences."
        )

    def label(run: str, step: int) -> str:
        name = os.path.basename(os.path.normpath(run))
        return f"step {step}" if args.compare_run is None else f"{name} step {step}"

    first, second = label(args.run, checkpoint["step"]), label(other_run, other_checkpoint["step"])
    if first == second:
        second += " (again)"
    return model, first, second


def _validation_batches(task: Any, args: argparse.Namespace) -> tuple[Any, str]:
    batches = task.batches("valid", args.batch_size, seed=args.seed)
    return batches, (
        f"the {task.name} task's validation split: the first of {args.batches} batches of "
        f"{args.batch_size} sequences (statistics over all of them)"
    )


def _text_batches(task: Any, args: argparse.Namespace) -> tuple[list[Any], str]:
    """``--text`` as one batch of consecutive ``--sequence-length`` windows (at most
    ``--sequences``), each run from a zero state, the next character as its target."""
    import jax.numpy as jnp
    import numpy as np

    from gatenets.cli import UsageError
    from gatenets.tasks import Batch

    if not hasattr(task, "encode"):
        raise UsageError(f"--text needs a character model; the {task.name} task reads no text.")
    try:
        text = pathlib.Path(args.text).read_text(encoding="utf-8")
        ids = task.encode(text)
    except UnicodeDecodeError as err:
        raise UsageError(f"--text {args.text!r} is not UTF-8 text ({err.reason}).") from None
    except ValueError as err:
        raise UsageError(f"--text {args.text!r}: {err} (the model's vocabulary)") from None
    length = args.sequence_length
    count = min(args.sequences, max(1, math.ceil((len(ids) - 1) / length)))
    if len(ids) < 2:
        raise UsageError(f"--text {args.text!r} has {len(ids)} characters; give at least 2.")
    inputs = np.zeros((count, length), np.int32)
    targets = np.zeros((count, length), np.int32)
    mask = np.zeros((count, length), bool)
    for k in range(count):
        window = ids[k * length : (k + 1) * length + 1]
        n = len(window) - 1
        inputs[k, :n], targets[k, :n], mask[k, :n] = window[:-1], window[1:], True
    covered = int(mask.sum())
    source = (
        f"{args.text}: characters 0\u2013{covered - 1} of {len(ids)} in {count} consecutive "
        f"sequences of {length} (each from a zero state)"
    )
    return [Batch(jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(mask))], source


def _train_charlm(args: argparse.Namespace) -> tuple[Any, Any, list[str]]:
    """The char-LM task's default model, trained with ``gatenets.train.fit``."""
    from gatenets.tasks import get_task
    from gatenets.train import RunConfig, train_model

    task = get_task("charlm", seq_len=args.length)
    config = RunConfig(
        "charlm",
        {"seq_len": args.length},
        hidden=args.hidden,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=LEARNING_RATE,
        seed=args.seed,
        eval_every=0,
    )
    print(
        f"no --run given: training a {args.hidden}-unit character {config.resolved(task).model} "
        f"on Python standard-library source ({args.steps} steps)"
    )
    trained = train_model(config, task=task, progress=not args.no_progress)
    nats = trained.result.train_loss
    bits = nats / math.log(2.0)
    # The progress bar shows the loss in nats, as the loss function returns it.
    print(f"trained: loss {nats:.3f} nats/char = {bits:.3f} bits/char (last training steps)")
    notes = [
        f"Character-level {trained.config.model.upper()}, {args.hidden} units, trained "
        f"{args.steps} steps on Python standard-library source: {bits:.3f} bits/char on its last "
        f"training batches (a context-free unigram model: {task.baseline:.3f}).",
    ]
    return trained.model, task, notes


def _hidden_states(model: Any, batch: Any) -> dict[str, Any] | None:
    """``{"output/hidden state": [batch, time, units]}``: the recurrent stack's output (the
    last layer's hidden state h_t; both directions side by side) on ``batch``, for a task
    model with a recurrent stack (``model.rnn``), else None. Cell states are not returned
    per step by the layers, so they are not shown."""
    import jax.numpy as jnp
    import numpy as np

    rnn = getattr(model, "rnn", None)
    if rnn is None:
        return None
    embed = getattr(model, "embed", None)
    inputs = jnp.asarray(batch.inputs)
    outputs = rnn(inputs if embed is None else embed(inputs), mask=batch.mask)
    return {"output/hidden state": np.asarray(outputs, np.float64)}


def _inspect_task(model, task, data, args, *, title, notes, source, checkpoint, compare=None):
    """The report of a task model on ``data`` (an iterable of its batches)."""
    from gatenets.inspect.probe import gradient_contrast
    from gatenets.inspect.report import inspect_model

    metric = task.metric

    def metric_fn(outputs, batch):
        return task.metrics(outputs, batch)[metric]

    batches = iter(data)
    first = next(batches)
    try:
        profiles = gradient_contrast(model, first.inputs, seed=args.seed)
    except ValueError:
        if getattr(model, "transformer", None) is not None:
            print(
                "gradient-through-time probe skipped: the attention model has no recurrence; "
                "its attention gates and first block's weights are in the report and explorer"
            )
        else:
            print(
                "gradient-through-time probe skipped: it needs a one-layer unidirectional model.rnn"
            )
        profiles = []
    examples = args.sequences if args.text is not None else 4
    return inspect_model(
        model,
        itertools.chain([first], batches),
        args.out,
        decode=getattr(task, "decode", None),
        metric_fn=metric_fn,
        metric_name=metric,
        profiles=profiles,
        max_batches=args.batches,
        progress=not args.no_progress,
        title=title,
        notes=notes,
        left=args.left,
        right=args.right,
        explorer_options={
            "examples": examples,
            "max_steps": max(1000, args.sequence_length),
            "source": source,
            "checkpoint": checkpoint,
            "states": _hidden_states(model, first),
        },
        compare=compare,
    )
