"""Writing files the way the whole library does: atomically, and with the permissions the
user's umask gives any new file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable


def _make_readable(path: str) -> None:
    # mkstemp creates files readable by their owner only; what the library writes (runs,
    # checkpoints' manifests, reports, exports) is meant to follow the umask like any file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str) -> None:
    """Runs ``write(tmp)`` on a temporary file beside ``path``, then renames it into place: a
    crash leaves the old file or the new one, never half of one.

    Example:
      >>> import os, pathlib, tempfile
      >>> from gatenets._files import atomic_write
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
      >>> atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text("hi"), ".txt.tmp")
      >>> mask = os.umask(0); _ = os.umask(mask)
      >>> path.read_text(), path.stat().st_mode & 0o777 == 0o666 & ~mask
      ('hi', True)
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
    os.close(handle)
    try:
        write(tmp)
        _make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
