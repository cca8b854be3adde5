"""A run directory belongs to one run at a time, and only to gatenets runs.

:func:`check_run_directory` refuses a directory that holds files but no gatenets run (so a
user's own ``config.json`` or ``metrics.jsonl`` is never overwritten), and :class:`RunLock`
keeps a second process from writing the same run at the same time. The lock is an advisory
``fcntl`` lock on ``.gatenets.lock``, which the operating system releases when its process
exits however it exits: a crashed run leaves the file, never the lock.
"""

from __future__ import annotations

import errno
import os
import pathlib
import warnings
from typing import Any

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}

LOCK_FILE = ".gatenets.lock"
"""The lock file in a run directory; it holds the pid of the process that last took it."""

RUN_FILES = frozenset(
    {
        LOCK_FILE,
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "checkpoints",
        "discarded-checkpoints",
    }
)
"""What ``gatenets run`` writes into a run directory."""


class RunDirectoryInUseError(RuntimeError):
    """Another process holds the lock of a run directory."""


def is_run_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a run written by ``gatenets run`` (a ``config.json`` that
    :func:`gatenets.train.run.read_config` accepts)."""
    from gatenets.train.run import read_config

    try:
        read_config(path)
    except (FileNotFoundError, ValueError):
        return False
    return True


def check_run_directory(path: str | os.PathLike, *, flag: str = "out_dir") -> None:
    """Raises unless ``path`` is missing, empty, or a gatenets run directory: a run never
    writes its files among someone else's.

    Raises:
      FileExistsError: naming ``flag``, the directory and a few of the files in it.

    Example:
      >>> import pathlib, tempfile
      >>> from gatenets.train.rundir import check_run_directory
      >>> mine = pathlib.Path(tempfile.mkdtemp())
      >>> check_run_directory(mine)  # empty: fine
      >>> _ = (mine / "config.json").write_text('{"learning": "mine"}')
      >>> check_run_directory(mine, flag="--out")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      FileExistsError: --out '...' holds files but no gatenets run (config.json); ...
    """
    path = pathlib.Path(path)
    if not path.is_dir():
        return
    present = sorted(entry.name for entry in path.iterdir())
    if not present or present == [LOCK_FILE] or is_run_directory(path):
        return
    shown = ", ".join(present[:5]) + (", …" if len(present) > 5 else "")
    raise FileExistsError(
        f"{flag} {str(path)!r} holds files but no gatenets run ({shown}); a run would "
        "overwrite them. Choose a new or empty directory."
    )


class RunLock:
    """Holds the lock of run directory ``path`` (created if missing) until :meth:`release`
    or the end of a ``with`` block.

    Args:
      path: the run directory.
      flag: how the error names the directory (``"--out"`` from the command line).

    Raises:
      RunDirectoryInUseError: at once, naming the directory and the pid of the process that
        holds it, when another process (or another :class:`RunLock` in this one) holds it.

    Example:
      >>> import tempfile
      >>> from gatenets.train.rundir import RunLock
      >>> d = tempfile.mkdtemp()
      >>> with RunLock(d):
      ...     RunLock(d)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      gatenets.train.rundir.RunDirectoryInUseError: out_dir '...' is in use by another gatenets run (pid ...); wait for it to finish, stop it, or choose another directory.
      >>> with RunLock(d):  # released: free again
      ...     pass
    """  # noqa: E501

    def __init__(self, path: str | os.PathLike, *, flag: str = "out_dir"):
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK_FILE
        self._fd: int | None = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (ImportError, OSError) as err:
            os.close(self._fd)
            self._fd = None
            if isinstance(err, ImportError) or err.errno in _NO_LOCKS:
                # Windows (no fcntl), or a file system without locks (some network ones).
                warnings.warn(
                    f"{flag} {str(self.path)!r} cannot be locked here "
                    f"({getattr(err, 'strerror', None) or 'no fcntl'}); nothing stops a second "
                    "run from writing into it at the same time.",
                    stacklevel=2,
                )
                return
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = _read_pid(lock)
            raise RunDirectoryInUseError(
                f"{flag} {str(self.path)!r} is in use by another gatenets run "
                f"(pid {holder if holder is not None else 'unknown'}); wait for it to finish, "
                "stop it, or choose another directory."
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Releases the lock (the file stays: removing it would race with the next taker)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _read_pid(lock: pathlib.Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None
