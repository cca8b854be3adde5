"""``gatenets inspect``: write the gate report of a trained model.

With ``--run DIR`` it loads a run written by ``gatenets run`` (through
``gatenets.train.load_run``) and inspects the model on its task's validation data. Without it,
it first trains a small character-level LSTM on the built-in text
(:mod:`gatenets.inspect.builtin`) and a plain sigmoid RNN beside it for the gradient picture,
so ``gatenets inspect --out report/`` works on a fresh install.
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

import numpy as np


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="write an HTML report of a model's gates",
        description=(
            "Write a self-contained HTML report (and PNGs) of a model's gates: of a run written "
            "by `gatenets run` (--run DIR), or, without --run, of a small character LSTM that "
            "it trains first."
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
    for name in ("batches", "batch_size", "steps", "hidden", "length"):
        value = getattr(args, name)
        if value < 1:
            flag = "--" + name.replace("_", "-")
            raise SystemExit(f"gatenets inspect: {flag} must be >= 1; got {value}.")
    if not 0.0 <= args.left <= args.right <= 1.0:
        raise SystemExit(
            f"gatenets inspect: need 0 <= --left <= --right <= 1; got --left {args.left} and "
            f"--right {args.right}."
        )
    if args.run is not None and not os.path.isdir(args.run):
        raise SystemExit(f"gatenets inspect: --run {args.run!r} is not a directory.")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.run is not None:
        files = _inspect_run(args)
    else:
        files = _inspect_builtin(args)
    print(f"report: {files.html}")
    for path in files.images.values():
        print(f"  {path}")
    return 0


def _inspect_builtin(args: argparse.Namespace):
    from gatenets.inspect import builtin
    from gatenets.inspect.probe import gradient_through_time
    from gatenets.inspect.report import inspect_model

    corpus = builtin.builtin_corpus()
    print(
        f"no --run given: training a {args.hidden}-unit character LSTM on {len(corpus.text)} "
        f"characters of Python standard-library source ({args.steps} steps)"
    )
    options = dict(
        hidden=args.hidden,
        steps=args.steps,
        batch_size=args.batch_size,
        length=args.length,
        seed=args.seed,
    )
    lstm, lstm_losses = builtin.train_char_model(corpus, kind="lstm", **options)
    plain, plain_losses = builtin.train_char_model(corpus, kind="plain", **options)
    probe_batch = next(corpus.batches(args.batch_size, args.length, seed=args.seed + 2))
    profiles = [
        _probe(gradient_through_time, model, probe_batch, label)
        for model, label in ((lstm, "LSTM (forget bias 1)"), (plain, "plain sigmoid RNN"))
    ]
    bits = [np.mean(losses[-20:]) / np.log(2.0) for losses in (lstm_losses, plain_losses)]
    notes = [
        f"Character-level LSTM, {args.hidden} units, trained {args.steps} steps on Python "
        f"standard-library source: {bits[0]:.3f} bits/char (plain sigmoid RNN of the same "
        f"size and training: {bits[1]:.3f}).",
    ]
    return inspect_model(
        lstm,
        corpus.batches(args.batch_size, args.length, seed=args.seed + 1),
        args.out,
        decode=corpus.decode,
        metric_fn=builtin.bits_per_char,
        metric_name="bits/char",
        profiles=profiles,
        max_batches=args.batches,
        progress=not args.no_progress,
        title="gatenets gate report: character LSTM",
        notes=notes,
        left=args.left,
        right=args.right,
    )


def _probe(gradient_through_time, model, batch, label):
    import jax.numpy as jnp
    import optax

    embedded = model.embed(jnp.asarray(batch.inputs))
    targets = jnp.asarray(batch.targets[:, -1])
    head = model.head

    def last_step_cross_entropy(outputs):
        logits = head(outputs[:, -1])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

    return gradient_through_time(model.cell, embedded, loss_fn=last_step_cross_entropy, label=label)


def _inspect_run(args: argparse.Namespace):
    from gatenets.inspect.report import inspect_model
    from gatenets.train import load_run

    loaded = load_run(args.run)
    task = loaded.task
    batches = task.batches("valid", args.batch_size, seed=args.seed)
    decode = getattr(task, "decode", None)
    metric = task.metric

    def metric_fn(outputs, batch):
        return task.metrics(outputs, batch)[metric]

    first = next(batches)
    profiles = _run_profiles(loaded.model, first, args.seed)
    return inspect_model(
        loaded.model,
        itertools.chain([first], batches),
        args.out,
        decode=decode,
        metric_fn=metric_fn,
        metric_name=metric,
        profiles=profiles,
        max_batches=args.batches,
        progress=not args.no_progress,
        title=f"gatenets gate report: {task.name} ({args.run})",
        notes=[f"{task.name}: {task.description}"],
        left=args.left,
        right=args.right,
    )


def _run_profiles(model, batch, seed):
    """Gradient profiles of a task model's one-layer recurrent part and of an untrained plain
    sigmoid RNN of the same size on the same inputs (empty when the model has another shape)."""
    import jax.numpy as jnp
    from flax import nnx

    from gatenets.inspect.probe import PlainRNNCell, gradient_through_time
    from gatenets.recurrent import RecurrentStack

    rnn = getattr(model, "rnn", None)
    if not isinstance(rnn, RecurrentStack) or rnn.num_layers != 1 or rnn.bidirectional:
        print("gradient-through-time probe skipped: it needs a one-layer unidirectional model.rnn")
        return []
    inputs = jnp.asarray(batch.inputs)
    embed = getattr(model, "embed", None)
    if embed is not None:
        inputs = embed(inputs)
    cell = rnn.cell
    plain = PlainRNNCell(cell.in_features, cell.output_features, rngs=nnx.Rngs(seed))
    return [
        gradient_through_time(rnn, inputs, label=f"trained {type(cell).__name__}"),
        gradient_through_time(plain, inputs, label="plain sigmoid RNN (untrained)"),
    ]
