"""Checkpoints of a model and its optimizer with orbax-checkpoint: periodic, atomic (orbax
writes to a temporary directory and renames it when complete), keeping the last N."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx


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


class Checkpointer:
    """Saves and restores ``(model, optimizer)`` under ``directory/<step>/``.

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
      ...         checkpoints.restore(model, optimizer)
      7
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1; got {keep!r}.")
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def save(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer | None = None) -> None:
        """Writes checkpoint ``step`` (in the background; :meth:`wait` or :meth:`close` ends it)."""
        # Separate items, so that a model can be restored without its optimizer.
        items = {"model": ocp.args.StandardSave(_flat_state(model))}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardSave(_flat_state(optimizer))
        self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(
        self, model: nnx.Module, optimizer: nnx.Optimizer | None = None, *, step: int | None = None
    ) -> int:
        """Loads checkpoint ``step`` (the latest by default) into ``model`` and ``optimizer``.

        Returns:
          the step restored.
        """
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"checkpoint: no checkpoint in {str(self.directory)!r}.")
        items = {"model": ocp.args.StandardRestore(_flat_state(model))}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardRestore(_flat_state(optimizer))
        restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        _restore_into(model, restored["model"])
        if optimizer is not None:
            _restore_into(optimizer, restored["optimizer"])
        return int(step)

    def wait(self) -> None:
        """Blocks until background saves have finished."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
