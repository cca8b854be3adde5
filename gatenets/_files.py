"""Writing files the way the whole library does: atomically, and with the permissions the
user's umask gives any new file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable


def _proc_umask() -> int | None:
    """The process's umask from Linux's ``/proc/self/status``, read without changing it;
    None where the system does not say it there."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    # Setting the umask to read it changes what other threads create meanwhile: done once,
    # at import, and only where /proc cannot say it.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK_AT_IMPORT = _umask_at_import() if _proc_umask() is None else None


def _process_umask() -> int:
    """The umask now (Linux), or as it was when gatenets was imported (elsewhere)."""
    umask = _proc_umask()
    return umask if umask is not None else _UMASK_AT_IMPORT


def _make_readable(path: str) -> None:
    # mkstemp creates files readable by their owner only; what the library writes (runs,
    # checkpoints' manifests, reports, exports) is meant to follow the umask like any file.
    # The umask is read, never set: setting it, even for a moment, would change the files
    # other threads create meanwhile.
    os.chmod(path, 0o666 & ~_process_umask())


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
