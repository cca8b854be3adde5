"""Checkpoints of a model and its optimizer with orbax-checkpoint: periodic, atomic (orbax
writes to a temporary directory and renames it when complete), keeping the last N, and
verified: each step carries a checksum manifest written once its save is complete, and a
restore checks the manifest and the finiteness of what it loaded before using any of it."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from gatenets._files import atomic_write

MANIFEST = "gatenets-manifest.json"
"""The file, in each step's directory, that lists every other file with its size and SHA-256."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint failed verification: a file is missing, changed or unreadable, or it holds
    NaN or infinite values. The message names the step, the file and the intact steps."""


class CheckpointMismatchError(ValueError):
    """A checkpoint is intact but holds another model (other sizes, layers or cell): the
    message names the first entry that differs."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the disk is full, the directory became read-only):
    the message names the step and the directory and says which earlier steps are intact.
    ``errno`` is that of the failure (``errno.ENOSPC`` for a full disk)."""


def _write_failure(err: BaseException) -> int | None:
    """The errno of a failed write, found in ``err`` or its causes (orbax reports tensorstore's
    failures as ``ValueError("RESOURCE_EXHAUSTED: … No space left on device …")``), or None
    when ``err`` is not a failed write."""
    seen = 0
    while err is not None and seen < 16:
        if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
            return err.errno
        text = str(err)
        for number, words in _WRITE_ERRNOS.items():
            if words in text or f"os_error_code='{number}'" in text:
                return number
        err = err.__cause__ or err.__context__
        seen += 1
    return None


_WRITE_ERRNOS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
}


_deferring: list[bool] = []


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Holds back Ctrl-C (SIGINT) for the duration of the block and raises the
    ``KeyboardInterrupt`` when it ends, so that a save or a wait is never cut in half.

    Outside the main thread (where Python cannot install signal handlers) it does nothing;
    inside another such block it leaves the Ctrl-C to the outer one.

    Example:
      >>> import signal
      >>> from gatenets.train.checkpoint import deferred_interrupt
      >>> done = []
      >>> try:
      ...     with deferred_interrupt():
      ...         signal.raise_signal(signal.SIGINT)
      ...         done.append("the block ran to its end")
      ... except KeyboardInterrupt:
      ...     done.append("then Ctrl-C")
      >>> done
      ['the block ran to its end', 'then Ctrl-C']
    """
    # Nested blocks (a save inside the interrupt handler's block) defer to the outermost.
    if threading.current_thread() is not threading.main_thread() or _deferring:
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _step_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(step_dir: str | pathlib.Path) -> None:
    """Writes ``step_dir/gatenets-manifest.json``: the size and SHA-256 of every file under
    ``step_dir``, atomically (a crash leaves no manifest or a whole one)."""
    step_dir = pathlib.Path(step_dir)
    files = {
        path.relative_to(step_dir).as_posix(): {
            "size": path.stat().st_size,
            "sha256": _sha256(path),
        }
        for path in _step_files(step_dir)
    }
    atomic_write(
        step_dir / MANIFEST,
        lambda tmp: pathlib.Path(tmp).write_text(json.dumps({"files": files}, indent=1)),
        ".json.tmp",
    )


def verify_manifest(step_dir: str | pathlib.Path) -> str | None:
    """What is wrong with the files of ``step_dir`` against its manifest, naming the file; None
    when every file is there with its size and checksum, and no file was added.

    Example:
      >>> import pathlib, tempfile
      >>> from gatenets.train.checkpoint import verify_manifest, write_manifest
      >>> step = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (step / "weights").write_bytes(b"0123")
      >>> write_manifest(step); verify_manifest(step) is None
      True
      >>> _ = (step / "weights").write_bytes(b"0124")
      >>> verify_manifest(step)
      "file 'weights' does not match its checksum"
    """
    step_dir = pathlib.Path(step_dir)
    try:
        listed = _read_manifest(step_dir / MANIFEST)
    except FileNotFoundError:
        return (
            f"it has no {MANIFEST} (its save did not finish, or a gatenets without "
            "manifests wrote it)"
        )
    except (OSError, ValueError) as err:
        return f"its {MANIFEST} is unreadable ({err})"
    present = {path.relative_to(step_dir).as_posix() for path in _step_files(step_dir)}
    for name, entry in sorted(listed.items()):
        path = step_dir / name
        if name not in present:
            return f"file {name!r} is missing"
        if path.stat().st_size != entry["size"]:
            return f"file {name!r} has {path.stat().st_size} bytes; {entry['size']} were written"
        if _sha256(path) != entry["sha256"]:
            return f"file {name!r} does not match its checksum"
    extra = sorted(present - set(listed))
    if extra:
        return f"file {extra[0]!r} was not part of the save"
    return None


def _read_manifest(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    """The ``files`` of a manifest, checked to be ``{name: {"size": int, "sha256": str}}``.

    Raises:
      ValueError: saying what is malformed.
    """
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files:
        raise ValueError(f"no object of files, got {json.dumps(data)[:60]}")
    for name, entry in files.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise ValueError(f"the entry of {name!r} is not {{size, sha256}}")
    return files


def _flat_state(node: Any) -> dict[str, Any]:
    """``{"path/to/leaf": array}`` of a module's or optimizer's whole state; typed PRNG keys
    are stored as their raw key data."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(node)))
    flat = {}
    for path, leaf in leaves:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        flat[name] = leaf
    return flat


def _restore_into(node: Any, flat: dict[str, Any]) -> None:
    state = nnx.state(node)
    pure = nnx.to_pure_dict(state)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    new_leaves = []
    for path, leaf in leaves:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        if name not in flat:
            raise ValueError(f"checkpoint: no entry {name!r}; the model does not match it.")
        value = flat[name]
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
        elif value.shape != leaf.shape:
            raise ValueError(
                f"checkpoint: {name!r} has shape {value.shape}; the model expects {leaf.shape}."
            )
        new_leaves.append(value)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, new_leaves))
    nnx.update(node, state)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def saved_steps(directory: str | pathlib.Path) -> list[int]:
    """The steps of the finished saves in ``directory`` (orbax renames a save into its step's
    directory only once complete), without opening it with orbax or creating it.

    Example:
      >>> from gatenets.train.checkpoint import saved_steps
      >>> saved_steps("/no/such/directory")
      []
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


class Checkpointer:
    """Saves and restores ``(model, optimizer)`` under ``directory/<step>/``, verified.

    A save runs in the background; once orbax has finished it (seen by :meth:`poll`,
    :meth:`wait`, the next :meth:`save` or :meth:`close`), the step's checksum manifest is
    written (:func:`write_manifest`). :meth:`restore` refuses a step whose manifest is
    missing or does not match, or whose values are not finite, with a
    :class:`CorruptCheckpointError` that names the step, the file and the intact steps to
    choose from with ``step=``. Ctrl-C during a save or a wait is held back until it ends.

    Args:
      directory: where checkpoints live (created if missing).
      keep: how many of the latest checkpoints to keep.

    Example:
      >>> import tempfile, optax
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.train import Checkpointer
      >>> model = gatenets.GRU(2, 4, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     with Checkpointer(d, keep=2) as checkpoints:
      ...         checkpoints.save(7, model, optimizer)
      ...         checkpoints.save(9, model, optimizer, loop={"losses": [0.5]})
      ...         checkpoints.restore(model, optimizer, step=7), checkpoints.loop_state(9)
      (7, {'losses': [0.5]})
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1; got {keep!r}.")
        self.directory = pathlib.Path(directory).absolute()
        self._unverified: list[int] = []
        self._in_flight: int | None = None  # the step of the save last started
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def _write_manifests(self) -> None:
        """Writes the manifest of every save that orbax has finished and renamed into place;
        call it only when no save is in flight. Process 0 writes it: the step folder is
        shared, and two writers listing it while the other writes would race."""
        if jax.process_index() != 0:
            self._unverified.clear()
            return
        for step in self._unverified:
            step_dir = self.directory / str(step)
            if step_dir.is_dir():  # not deleted by keep= meanwhile
                write_manifest(step_dir)
        self._unverified.clear()

    def poll(self) -> None:
        """Writes the manifests of finished saves, without waiting for one in flight (the
        checkpoint hook calls it after every step, so a manifest follows its save closely)."""
        if self._unverified and not self.manager.is_saving_in_progress():
            self._write_manifests()

    def save(
        self,
        step: int,
        model: nnx.Module,
        optimizer: nnx.Optimizer | None = None,
        *,
        loop: dict[str, Any] | None = None,
    ) -> None:
        """Writes checkpoint ``step`` (in the background; :meth:`wait` or :meth:`close` ends it).

        Args:
          step: the step number.
          model: the model.
          optimizer: its optimizer, or None.
          loop: JSON-serialisable state of the loop itself (e.g. the latest losses), returned
            by :meth:`loop_state`.
        """
        # Separate items, so that a model can be restored without its optimizer.
        items = {"model": ocp.args.StandardSave(_flat_state(model))}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardSave(_flat_state(optimizer))
        if loop is not None:
            items["loop"] = ocp.args.JsonSave(loop)
        with deferred_interrupt():
            # Orbax would wait for the previous save anyway; waiting here writes its manifest.
            self._finish_saves()
            self._unverified.append(int(step))
            self._in_flight = int(step)
            with self._reporting_write_failures():
                self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    @contextlib.contextmanager
    def _reporting_write_failures(self) -> Iterator[None]:
        """Turns orbax's report of a failed write (many lines, often a ``ValueError``) into a
        one-line :class:`CheckpointWriteError` naming the step and the intact steps."""
        try:
            yield
        except Exception as err:
            number = _write_failure(err)
            if number is None:
                raise
            failed = self._in_flight
            self._unverified.clear()
            intact = [s for s in saved_steps(self.directory) if s != failed]
            what = {
                errno.ENOSPC: "no space left on the device",
                errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only",
            }[number]
            kept = (
                f"the earlier checkpoints (steps {intact}) are intact: make room, then continue "
                "with resume=True (gatenets run … --resume)"
                if intact
                else "no earlier checkpoint was saved"
            )
            raise CheckpointWriteError(
                f"checkpoint step {failed} could not be written in {str(self.directory)!r}: "
                f"{what}; {kept}."
            ) from err

    def _finish_saves(self) -> None:
        """Waits for the save in flight and writes the manifests of finished saves."""
        with self._reporting_write_failures():
            self.manager.wait_until_finished()
        self._in_flight = None
        self._write_manifests()
        if jax.process_count() > 1:
            # Process 0 wrote the manifests; no process goes on (to resume from them) before.
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("gatenets checkpoint manifests")

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def verify(self, step: int) -> None:
        """Raises :class:`CorruptCheckpointError` unless step ``step``'s files match its
        manifest."""
        problem = verify_manifest(self.directory / str(step))
        if problem is not None:
            self._refuse(step, problem)

    def _refuse(self, step: int, problem: str) -> None:
        earlier = [s for s in self.all_steps() if s < step]
        hint = (
            f"restore an earlier step with step=N (gatenets run … --resume-step N); the "
            f"earlier steps are {earlier}"
            if earlier
            else "there is no earlier step to restore; start the run again"
        )
        raise CorruptCheckpointError(
            f"checkpoint step {step} in {str(self.directory)!r} is corrupt: {problem}; {hint}."
        )

    def restore(
        self, model: nnx.Module, optimizer: nnx.Optimizer | None = None, *, step: int | None = None
    ) -> int:
        """Loads checkpoint ``step`` (the latest by default) into ``model`` and ``optimizer``,
        after verifying its checksums and the finiteness of every value it holds.

        Returns:
          the step restored.

        Raises:
          FileNotFoundError: when there is no checkpoint, or none of step ``step``.
          CorruptCheckpointError: when the step fails verification; nothing is loaded.
        """
        self.wait()
        step = self.step_to_restore(step)
        self.verify(step)
        items = {"model": ocp.args.StandardRestore(_flat_state(model))}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardRestore(_flat_state(optimizer))
        for item in items:
            self._check_matches(step, item, items[item].item)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax raises what its layers raise: OSError, KeyError, …
            self._refuse(step, f"orbax cannot read it ({_first_line(err)})")
        for item in items:
            for name, value in restored[item].items():
                value = np.asarray(value)
                if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
                    self._refuse(step, f"{item} entry {name!r} holds NaN or infinite values")
        _restore_into(model, restored["model"])
        if optimizer is not None:
            _restore_into(optimizer, restored["optimizer"])
        return step

    def _check_matches(self, step: int, item: str, target: dict[str, Any]) -> None:
        """Raises :class:`CheckpointMismatchError` unless ``item`` of step ``step`` holds the
        entries of ``target`` with their shapes (read from orbax's metadata, before any
        array is)."""
        try:
            metadata = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / item)
            saved = {name: tuple(entry.shape) for name, entry in dict(metadata).items()}
        except Exception as err:
            self._refuse(step, f"the metadata of its {item} is unreadable ({_first_line(err)})")
        where = f"checkpoint step {step} in {str(self.directory)!r} does not match this {item}"
        advice = "build it with the settings it was saved with (the run's config.json)"
        for name, leaf in target.items():
            if name not in saved:
                raise CheckpointMismatchError(
                    f"{where}: the {item} has {name!r}, the checkpoint does not; {advice}."
                )
            if saved[name] != tuple(np.shape(leaf)):
                raise CheckpointMismatchError(
                    f"{where}: {name!r} has shape {saved[name]} in the checkpoint, "
                    f"{tuple(np.shape(leaf))} in the {item}; {advice}."
                )
        extra = sorted(set(saved) - set(target))
        if extra:
            raise CheckpointMismatchError(
                f"{where}: the checkpoint has {extra[0]!r}, the {item} does not; {advice}."
            )

    def step_to_restore(self, step: int | None = None) -> int:
        """``step`` if a checkpoint of it exists, or the latest step when ``step`` is None.

        Raises:
          FileNotFoundError: naming the directory and the steps it holds.
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"checkpoint: no checkpoint in {str(self.directory)!r}.")
        if step is None:
            return steps[-1]
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step not in steps:
            raise FileNotFoundError(
                f"checkpoint: no step {step!r} in {str(self.directory)!r}; the steps are {steps}."
            )
        return int(step)

    def loop_state(self, step: int) -> dict[str, Any]:
        """The ``loop`` dictionary saved with step ``step`` (empty if none was)."""
        if not (self.directory / str(step) / "loop").is_dir():
            return {}
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(loop=ocp.args.JsonRestore())
            )
            return dict(restored["loop"])
        except Exception as err:
            self._refuse(step, f"its loop state is unreadable ({_first_line(err)})")

    def discard_after(self, step: int) -> list[int]:
        """Moves the checkpoints after ``step`` aside, into ``directory/../discarded-checkpoints/``
        (a run resumed from an earlier step saves those steps again); returns their steps."""
        later = [s for s in self.all_steps() if s > step]
        aside = self.directory.parent / "discarded-checkpoints"
        for later_step in later:
            aside.mkdir(exist_ok=True)
            target = aside / str(later_step)
            suffix = 0
            while target.exists():
                suffix += 1
                target = aside / f"{later_step}.{suffix}"
            os.replace(self.directory / str(later_step), target)
        if later:
            self.manager.reload()
        return later

    def wait(self) -> None:
        """Blocks until background saves have finished and their manifests are written."""
        with deferred_interrupt():
            self._finish_saves()

    def close(self) -> None:
        with deferred_interrupt():
            try:
                self._finish_saves()
            except BaseException:
                with contextlib.suppress(Exception):  # the first failure is the one to report
                    self.manager.close()
                raise
            self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
