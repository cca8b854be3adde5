"""The ``gatenets`` command.

Each subcommand lives with its feature and registers itself here through a module that
provides ``register(subparsers)``; the parser sets ``func`` to the function to run.

Failures read as one line on stderr, naming the argument or file and what to do: a
:class:`~gatenets._usage.UsageError` (a bad argument, path or file given) exits with 2, any
other error (a run that failed: a non-finite loss, a corrupt checkpoint, a full disk) with 1,
Ctrl-C with 130.
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from collections.abc import Sequence

from gatenets._usage import UsageError as UsageError
from gatenets._usage import check_output_dir as check_output_dir
from gatenets._version import __version__

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
    parser.add_argument("--version", action="version", version=f"gatenets {__version__}")
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
    _show_loop_choices()
    quiet = None if args.debug else _QuietBackgroundErrors()
    if quiet is not None:
        logging.getLogger("absl").addFilter(quiet)
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
    finally:
        if quiet is not None:
            logging.getLogger("absl").removeFilter(quiet)


def _show_loop_choices() -> None:
    """Prints the one line ``loop="auto"`` logs when it measures a new request."""
    logger = logging.getLogger("gatenets.loop")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # once, whatever the root logger is set up to do


class _QuietBackgroundErrors(logging.Filter):
    """Holds back the tracebacks that orbax's background threads log when a save fails (a
    full disk gives hundreds of lines): the same failure reaches the command, which reports
    it in one line. ``--debug`` shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def _one_line(err: Exception) -> str:
    """The error's first line, with its type where the message alone would not say what
    failed (an OSError names its file)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {str(err.filename)!r}" if err.filename is not None else ""
        return f"no space left on the device{where}; make room, then continue with --resume"
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: {str(err.filename)!r}"
    return text if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
