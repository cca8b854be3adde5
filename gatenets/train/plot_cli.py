"""``gatenets plot RUN``: the loss and the gates' saturation over training, as a PNG.

gatenets run adding --watch-gates 50 --out runs/adding
gatenets plot runs/adding            # writes runs/adding/training.png
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a run's loss and gate saturation over training",
        description=(
            "Draw the loss and, for runs trained with --watch-gates, each gate's left and "
            "right saturation over training, from RUN/metrics.jsonl, as a PNG."
        ),
    )
    parser.add_argument("run", help="a run directory written by `gatenets run`")
    parser.add_argument("--out", help="the PNG to write (default RUN/training.png)")
    parser.add_argument("--dpi", type=int, default=110)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from gatenets.inspect.plots import save_figure
    from gatenets.train.watch import plot_training, read_metrics

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = read_metrics(args.run)
        for warning in caught:
            print(f"gatenets plot: warning: {warning.message}", file=sys.stderr)
    except (FileNotFoundError, ValueError) as err:
        print(f"gatenets plot: {err}", file=sys.stderr)
        return 2
    if not any(r.get("split") == "train" for r in records):
        print(f"gatenets plot: {args.run!r} holds no training records yet.", file=sys.stderr)
        return 2
    if args.dpi < 1:
        print(f"gatenets plot: --dpi must be >= 1; got {args.dpi}.", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run, "training.png")
    save_figure(
        plot_training(records, title=os.path.basename(os.path.normpath(args.run))),
        out,
        dpi=args.dpi,
    )
    watched = sum(r.get("split") == "gates" for r in records)
    print(f"wrote {out} ({len(records)} records, {watched} with gate statistics)")
    return 0
