"""What the command line shares with the features that add its subcommands: the error that
means "the user gave something wrong" (exit status 2) and the check of an output directory.

A leaf module: the command line (:mod:`gatenets.cli`) imports the features, and the features
import this, never the command line.
"""

from __future__ import annotations

import os
import pathlib
import tempfile


class UsageError(Exception):
    """A bad argument, path or input file: the command exits with 2, printing the message."""


def check_output_dir(flag: str, path: str | os.PathLike) -> None:
    """Raises :class:`UsageError` unless ``path`` is a directory the command can write, or
    one it can create: checked before any work, by writing a probe file.

    Example:
      >>> import tempfile
      >>> from gatenets._usage import check_output_dir
      >>> with tempfile.NamedTemporaryFile() as f:
      ...     check_output_dir("--out", f.name)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      gatenets._usage.UsageError: --out '...' is a file, not a directory; choose a directory.
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
