"""Data parallelism through JAX's own sharding: the batch axis split over a device mesh,
parameters and optimizer state replicated.

On one host, every local device joins the mesh. On several hosts, start one process per host
and call ``jax.distributed.initialize()`` (coordinator address, process count and id; on
Cloud TPU and SLURM they are found automatically) in every process before any other JAX call.
``jax.devices()`` then lists the devices of all hosts and :func:`data_parallel_mesh` spans
them. Every process runs the same program: since a task's batch depends only on the seed and
the step, each process makes the same global batch and :func:`shard_batch` places the rows
that belong to its own devices (for data read per host instead, build the global array with
``jax.make_array_from_process_local_data``). Checkpoints are written by orbax cooperatively
from all processes to a directory they share. The train step itself does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gatenets.tasks.base import Batch


def data_parallel_mesh(devices: Sequence[Any] | None = None, *, axis_name: str = "data") -> Mesh:
    """A one-axis mesh over ``devices`` (all devices by default) for data parallelism.

    Example:
      >>> from gatenets.train import data_parallel_mesh
      >>> data_parallel_mesh().axis_names
      ('data',)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must hold at least one device; got an empty sequence.")
    return Mesh(np.array(devices), (axis_name,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` with every array copied to every device of ``mesh``.

    With several processes, each passes its own copy (the same values: the same seed made
    them) and fills the devices it can address.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda leaf: _replicated_across_processes(leaf, sharding), tree)


def _replicated_across_processes(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """One process's part of a replicated global array, from its local copy ``leaf``."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = _replicated_across_processes(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """``batch`` with its leading (batch) axis split over the mesh's first axis.

    Every process passes the same global batch (a task's batch depends only on the seed and the
    step); each copies only the rows of its own devices.

    Raises:
      ValueError: if the batch size does not divide evenly over the mesh's devices.
    """
    axis = mesh.axis_names[0]
    devices = mesh.shape[axis]
    size = int(np.shape(batch.inputs)[0])
    if size % devices:
        raise ValueError(
            f"batch_size must be a multiple of the {devices} devices of the mesh axis "
            f"{axis!r} for data parallelism; got {size}."
        )
    sharding = NamedSharding(mesh, PartitionSpec(axis))

    def place(leaf: Any) -> jax.Array:
        # Each process copies only the rows of its own devices: with several processes, each
        # feeds its share of the global batch.
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

    return jax.tree_util.tree_map(place, batch)


def batch_placer(mesh: Mesh | None, *, replicate_uneven: bool = False) -> Callable[[Batch], Batch]:
    """A function that places each batch on ``mesh`` (the identity when ``mesh`` is None).

    Args:
      mesh: the device mesh, or None for one device.
      replicate_uneven: a batch whose size does not divide over the devices is replicated
        (each device computing all of it) instead of refused: for the last batch of a finite
        evaluation split.

    Example:
      >>> import numpy as np
      >>> from gatenets.tasks import Batch
      >>> from gatenets.train import batch_placer, data_parallel_mesh
      >>> place = batch_placer(data_parallel_mesh(), replicate_uneven=True)
      >>> place(Batch(np.ones((3, 2)), np.zeros(3))).inputs.shape
      (3, 2)
    """
    if mesh is None:
        return lambda batch: batch
    devices = mesh.shape[mesh.axis_names[0]]

    def place(batch: Batch) -> Batch:
        if replicate_uneven and np.shape(batch.inputs)[0] % devices:
            return replicate(batch, mesh)
        return shard_batch(batch, mesh)

    return place
