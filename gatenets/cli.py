"""The ``gatenets`` command.

Each subcommand lives with its feature and registers itself here through a module that
provides ``register(subparsers)``; the parser sets ``func`` to the function to run.

Failures read as one line on stderr, naming the argument or file and what to do: a
:class:`UsageError` (a bad argument, path or file given) exits with 2, any other error (a run
that failed: a non-finite loss, a corrupt checkpoint, a full disk) with 1, Ctrl-C with 130.
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence

import gatenets

# Feature modules that add subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "gatenets.train.cli",
    "gatenets.inspect.cli",
    "gatenets.train.plot_cli",
    "gatenets.bench",
)


class UsageError(Exception):
    """A bad argument, path or input file: the command exits with 2, printing the message."""


def check_output_dir(flag: str, path: str | os.PathLike) -> None:
    """Raises :class:`UsageError` unless ``path`` is a directory the command can write, or
    one it can create: checked before any work, by writing a probe file.

    Example:
      >>> import tempfile
      >>> from gatenets.cli import check_output_dir
      >>> with tempfile.NamedTemporaryFile() as f:
      ...     check_output_dir("--out", f.name)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      gatenets.cli.UsageError: --out '...' is a file, not a directory; choose a directory.
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a file, not a directory; choose a directory.")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file; choose "
            "another directory."
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UsageError(
            f"{flag} {str(path)!r} is not writable ({err.strerror} in {str(existing)!r}); "
            "choose a directory you can write."
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatenets",
        description=(
            "gatenets: LSTM, GRU and gated attention layers for JAX/Flax whose sigmoid gates "
            "you can return, summarise, plot and override."
        ),
    )
    parser.add_argument("--version", action="version", version=f"gatenets {gatenets.__version__}")
    debug = "show the traceback of a failure instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    for name, subparser in subparsers.choices.items():
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=debug
        )
        subparser.set_defaults(command=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    prog = f"gatenets {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, UsageError):
            print(f"{prog}: {err}", file=sys.stderr)
            return 2
        print(f"{prog}: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 1


def _one_line(err: Exception) -> str:
    """The error's first line, with its type where the message alone would not say what
    failed (an OSError names its file)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: {str(err.filename)!r}"
    return text if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
