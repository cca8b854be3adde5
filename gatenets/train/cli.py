"""``gatenets run``: train a task's model and write checkpoints, metrics and a summary.

gatenets run --list
gatenets run adding
gatenets run mnist1d --model gru --steps 3000 --out runs/mnist1d-gru
gatenets run adding --model attention --layers 2
gatenets run charlm --text my.txt --option seq_len=64
gatenets run copying --option delay=100 --resume --out runs/copying-lstm
gatenets run adding --coordinator host0:1234 --num-processes 2 --process-id 0   (and 1)
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import pathlib
import sys

from gatenets._usage import UsageError, check_output_dir
from gatenets.registry import FAMILIES
from gatenets.tasks import TASKS, get_task, list_models, list_tasks
from gatenets.train.distributed import add_arguments as add_distributed_arguments
from gatenets.train.distributed import initialize_from_arguments, is_main_process


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option must be KEY=VALUE; got {text!r}.")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _count(minimum: int):
    """An argparse type: an int >= ``minimum`` (argparse names the flag in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _positive_number(text: str) -> float:
    """An argparse type: a finite number > 0 (``inf`` and ``nan`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0; got {text!r}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="train a model on an example sequence task",
        description=(
            "Train a model on a sequence task; writes config.json, metrics.jsonl, "
            "checkpoints/ and summary.json into --out."
        ),
    )
    parser.add_argument("task", nargs="?", help=f"one of {', '.join(list_tasks())}")
    parser.add_argument("--list", action="store_true", help="list the tasks and models and exit")
    parser.add_argument(
        "--model", help=f"one of {', '.join(list_models())} (task default if omitted)"
    )
    parser.add_argument("--steps", type=_count(1), help="training steps (task default if omitted)")
    parser.add_argument("--hidden", type=_count(1), help="recurrent state size (attention: width)")
    parser.add_argument(
        "--layers", type=_count(1), default=1, help="stacked recurrent layers (attention: blocks)"
    )
    parser.add_argument("--batch-size", type=_count(1))
    parser.add_argument("--lr", type=_positive_number, help="Adam learning rate")
    parser.add_argument("--seed", type=_count(0), default=0)
    parser.add_argument("--eval-every", type=_count(0))
    parser.add_argument("--text", help="charlm: a UTF-8 text file instead of the default corpus")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="a task option, e.g. length=200 for adding (repeatable)",
    )
    parser.add_argument("--out", help="run directory (default runs/TASK-MODEL)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--resume-step",
        type=_count(0),
        metavar="N",
        help="continue from the checkpoint of step N (when the latest is corrupt); implies "
        "--resume",
    )
    parser.add_argument(
        "--data-parallel", action="store_true", help="split batches over all local devices"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_distributed_arguments(parser)
    parser.add_argument(
        "--watch-gates",
        type=_count(1),
        nargs="?",
        const=50,
        metavar="N",
        help="every N steps (default 50) write gate statistics to metrics.jsonl",
    )
    _add_logging_arguments(parser)
    parser.set_defaults(func=main)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def _add_logging_arguments(parser) -> None:
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write TensorBoard events into DIR/<run name>, with the run's configuration "
        "as hparams (needs tensorboardX)",
    )
    parser.add_argument(
        "--log-every",
        type=_positive_int,
        default=50,
        metavar="N",
        help="log the training loss as the mean of every N steps (default 50; 1: every step)",
    )


def main(args: argparse.Namespace) -> int:
    from gatenets.train.run import RunConfig, open_run, train_run
    from gatenets.train.rundir import RunDirectoryInUseError

    if args.list:
        _print_list()
        return 0
    if args.task is None:
        print("gatenets run: give a TASK or --list", file=sys.stderr)
        return 2
    options = _task_options(args)
    try:
        # Before anything touches a device: with several processes, jax.devices() spans them.
        distributed = initialize_from_arguments(args)
        task = get_task(args.task, **options)
        config = RunConfig(
            task=args.task,
            options=options,
            model=args.model,
            hidden=args.hidden,
            num_layers=args.layers,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=args.seed,
            eval_every=args.eval_every,
            data_parallel=args.data_parallel or distributed,
        ).resolved(task)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    out = args.out or f"runs/{args.task}-{config.model}"
    check_output_dir("--out", out)
    try:
        # Every check of the directory and of resuming, before training: the user's doing.
        opened = open_run(
            config, out, resume=args.resume, resume_step=args.resume_step, flag="--out"
        )
    except (FileExistsError, FileNotFoundError, ValueError, RunDirectoryInUseError) as err:
        raise UsageError(str(err)) from None
    say = print if is_main_process() else lambda text: None
    say(
        f"{task.name}: {config.model}, hidden {config.hidden}, {config.steps} steps of "
        f"{config.batch_size}; baseline {task.metric} {task.baseline:.4g} "
        f"({task.baseline_source}); writing {out}"
    )
    # What fails from here on is the run's failure (a non-finite loss, a full disk): exit 1.
    try:
        summary = train_run(
            opened,
            progress=not args.no_progress,
            **_watch_options(args, out),
        )
    finally:
        opened.close()
    _tensorboard_hparams(_tensorboard_dir(args.tensorboard, out), config, summary, args.log_every)
    say(_format_summary(summary))
    return 0


def _print_list() -> None:
    print("tasks:")
    for name in list_tasks():
        print(f"  {name:15s} {TASKS[name].description}")
    print("models (--model):")
    for name in list_models():
        print(f"  {name:15s} {describe_model(name)}")


def _task_options(args: argparse.Namespace) -> dict:
    """The task's options from ``-o`` and ``--text``, with ``--text`` and ``--tensorboard``
    checked before any work."""
    options = dict(args.option)
    if args.text is not None:
        _check_text(args.text)
        options["text_file"] = args.text
    if args.tensorboard is not None:
        if importlib.util.find_spec("tensorboardX") is None:
            raise UsageError(
                "--tensorboard needs tensorboardX: pip install 'gatenets[tensorboard]'."
            )
        check_output_dir("--tensorboard", args.tensorboard)
    return options


def _watch_options(args: argparse.Namespace, out: str) -> dict:
    """What ``fit`` watches: gate statistics, TensorBoard (in ``DIR/<run name>``), the loss."""
    return {
        "gate_stats_every": args.watch_gates,
        "tensorboard_dir": _tensorboard_dir(args.tensorboard, out),
        "log_every": args.log_every,
    }


def _tensorboard_dir(root: str | None, out: str) -> pathlib.Path | None:
    """``root/<run name>``: one TensorBoard run per run directory."""
    if root is None:
        return None
    from gatenets.train.watch import tensorboard_run_dir

    return tensorboard_run_dir(root, out)


def _tensorboard_hparams(logdir, config, summary: dict, log_every: int) -> None:
    """The run's configuration and test metrics as TensorBoard hparams (main process only)."""
    from gatenets.train.watch import write_hparams

    if logdir is None or not is_main_process():
        return
    hparams = {k: v for k, v in config._asdict().items() if k != "options"}
    hparams.update({f"option/{k}": v for k, v in config.options.items()})
    hparams["log_every"] = log_every
    metrics = {f"test/{k}": v for k, v in summary["test"].items() if isinstance(v, int | float)}
    every = "each step" if log_every == 1 else f"the mean of each {log_every} steps"
    write_hparams(logdir, hparams, metrics, notes={"about/train_loss": f"train/loss: {every}."})


def _check_text(path: str) -> None:
    """Raises :class:`~gatenets._usage.UsageError` naming ``--text`` when the file is not UTF-8
    text (a missing file is the task's to report)."""
    file = pathlib.Path(path)
    if not file.is_file():
        return
    try:
        file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"--text {path!r} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
            f"{err.start}); give a UTF-8 text file."
        ) from None


def describe_model(name: str) -> str:
    """One line about the model ``name`` of :func:`gatenets.tasks.list_models`."""
    if name in FAMILIES:
        return (
            f"recurrent stack of {FAMILIES[name].cell.__name__} ({FAMILIES[name].layer.__name__})"
        )
    return "causal transformer: pre-norm GatedAttention + GatedFeedForward blocks"


def _format_summary(summary: dict) -> str:
    verdict = "reached" if summary["reached_target"] else "did not reach"
    lines = [
        f"{summary['task']} ({summary['model']}, {summary['steps']} steps, "
        f"{summary['seconds']:.0f} s): test {summary['metric']} {summary['value']:.4g}; "
        f"baseline {summary['baseline']:.4g} ({summary['baseline_source']}); "
        f"{verdict} the target {summary['target']:.4g}",
        "test: " + json.dumps({k: round(v, 5) for k, v in summary["test"].items()}),
        "mean gate values:",
    ]
    lines += [f"  {name:28s} {value:.3f}" for name, value in summary["gate_means"].items()]
    if "sample" in summary:
        lines += ["sample (temperature 0.8):", summary["sample"]]
    return "\n".join(lines)
