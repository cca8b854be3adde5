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

    for name in ("batches", "batch_size", "steps", "hidden", "length"):
        value = getattr(args, name)
        if value < 1:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be >= 1; got {value}.")
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
    if args.run is not None:
        from gatenets.train import load_run

        loaded = load_run(args.run)
        model, task = loaded.model, loaded.task
        title = f"gatenets gate report: {task.name} ({args.run})"
        notes = [f"{task.name}: {task.description}"]
    else:
        model, task, notes = _train_charlm(args)
        title = "gatenets gate report: character LSTM"
    files = _inspect_task(model, task, args, title=title, notes=notes)
    print(f"report: {files.html}")
    if files.explorer is not None:
        print(f"explorer: {files.explorer} (open it in a browser)")
    for path in files.images.values():
        print(f"  {path}")
    return 0


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
    bits = trained.result.train_loss / math.log(2.0)
    print(f"trained: {bits:.3f} bits/char (training loss, last steps)")
    notes = [
        f"Character-level {trained.config.model.upper()}, {args.hidden} units, trained "
        f"{args.steps} steps on Python standard-library source: {bits:.3f} bits/char on its last "
        f"training batches (a context-free unigram model: {task.baseline:.3f}).",
    ]
    return trained.model, task, notes


def _inspect_task(model: Any, task: Any, args: argparse.Namespace, *, title: str, notes: list):
    """The report of a task model on the task's validation data."""
    from gatenets.inspect.probe import gradient_contrast
    from gatenets.inspect.report import inspect_model

    batches = task.batches("valid", args.batch_size, seed=args.seed)
    metric = task.metric

    def metric_fn(outputs, batch):
        return task.metrics(outputs, batch)[metric]

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
    )
