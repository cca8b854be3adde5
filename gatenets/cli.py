"""The ``gatenets`` command.

Each subcommand lives with its feature and registers itself here through a module that
provides ``register(subparsers)``; the parser sets ``func`` to the function to run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import gatenets

# Feature modules that add subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "gatenets.train.cli",
    "gatenets.inspect.cli",
    "gatenets.train.plot_cli",
    "gatenets.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatenets",
        description=(
            "gatenets: LSTM, GRU and gated attention layers for JAX/Flax whose sigmoid gates "
            "you can return, summarise, plot and override."
        ),
    )
    parser.add_argument("--version", action="version", version=f"gatenets {gatenets.__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
