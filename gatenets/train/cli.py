"""``gatenets run``: train a task's default model and write checkpoints, metrics and a summary.

gatenets run --list
gatenets run adding
gatenets run mnist1d --model gru --steps 3000 --out runs/mnist1d-gru
gatenets run charlm --text my.txt --option seq_len=64
gatenets run copying --option delay=100 --resume --out runs/copying-lstm
"""

from __future__ import annotations

import argparse
import ast
import json
import sys

from gatenets.tasks import MODELS, TASKS, get_task, list_tasks


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option must be KEY=VALUE; got {text!r}.")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


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
    parser.add_argument("--list", action="store_true", help="list the tasks and exit")
    parser.add_argument(
        "--model", help=f"one of {', '.join(sorted(MODELS))} (task default if omitted)"
    )
    parser.add_argument("--steps", type=int, help="training steps (task default if omitted)")
    parser.add_argument("--hidden", type=int, help="recurrent state size")
    parser.add_argument("--layers", type=int, default=1, help="stacked recurrent layers")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int)
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
        "--data-parallel", action="store_true", help="split batches over all local devices"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--watch-gates",
        type=int,
        nargs="?",
        const=50,
        metavar="N",
        help="every N steps (default 50) write gate statistics to metrics.jsonl",
    )
    parser.add_argument(
        "--tensorboard", metavar="DIR", help="also write TensorBoard events (needs tensorboardX)"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from gatenets.train.run import RunConfig, run

    if args.list:
        for name in list_tasks():
            task_type = TASKS[name]
            print(f"{name:15s} {task_type.description}")
        return 0
    if args.task is None:
        print("gatenets run: give a TASK or --list", file=sys.stderr)
        return 2
    options = dict(args.option)
    if args.text is not None:
        options["text_file"] = args.text
    try:
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
            data_parallel=args.data_parallel,
        ).resolved(task)
    except (ValueError, FileNotFoundError) as err:
        print(f"gatenets run: {err}", file=sys.stderr)
        return 2
    out = args.out or f"runs/{args.task}-{config.model}"
    print(
        f"{task.name}: {config.model}, hidden {config.hidden}, {config.steps} steps of "
        f"{config.batch_size}; baseline {task.metric} {task.baseline:.4g} "
        f"({task.baseline_source}); writing {out}"
    )
    try:
        summary = run(
            config,
            out,
            resume=args.resume,
            progress=not args.no_progress,
            gate_stats_every=args.watch_gates,
            tensorboard_dir=args.tensorboard,
        )
    except (FileExistsError, ValueError, ImportError) as err:
        print(f"gatenets run: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(_format_summary(summary))
    return 0


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
