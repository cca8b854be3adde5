"""Several processes (hosts) training one model: JAX's own ``jax.distributed``, started from
flags or environment variables, and which process speaks.

Every process runs the same program. After :func:`initialize`, ``jax.devices()`` lists the
devices of all processes, :func:`~gatenets.train.data_parallel_mesh` spans them,
:func:`~gatenets.train.shard_batch` places only the rows of each process's own devices, the
gradient all-reduce crosses processes (gloo on CPU, NCCL on GPU, ICI/DCN on TPU), and orbax
writes checkpoints cooperatively (every process takes part, process 0 writes the metadata).
Only the main process (index 0) prints progress and writes ``metrics.jsonl`` and the run's JSON
files (:func:`is_main_process`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import NamedTuple

import jax

# The variables gatenets reads when a flag is not given. JAX itself reads
# JAX_COORDINATOR_ADDRESS, and detects SLURM, Open MPI, Kubernetes and Cloud TPU on its own.
ENVIRONMENT = {
    "coordinator_address": "GATENETS_COORDINATOR_ADDRESS",
    "num_processes": "GATENETS_NUM_PROCESSES",
    "process_id": "GATENETS_PROCESS_ID",
}


class DistributedSettings(NamedTuple):
    """What ``jax.distributed.initialize`` is given; None leaves a value to JAX's detection.

    Attributes:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: how many processes take part.
      process_id: this process's index, in ``[0, num_processes)``.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def distributed_settings(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> DistributedSettings:
    """The settings from the arguments, else from ``GATENETS_COORDINATOR_ADDRESS``,
    ``GATENETS_NUM_PROCESSES`` and ``GATENETS_PROCESS_ID``, checked.

    Example:
      >>> from gatenets.train.distributed import distributed_settings
      >>> distributed_settings(environ={"GATENETS_NUM_PROCESSES": "2",
      ...                               "GATENETS_PROCESS_ID": "1"}, coordinator_address="h:1234")
      DistributedSettings(coordinator_address='h:1234', num_processes=2, process_id=1)
    """
    environ = os.environ if environ is None else environ
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    values = {}
    for name, value in given.items():
        source = name
        if value is None and environ.get(ENVIRONMENT[name]):
            source, value = ENVIRONMENT[name], environ[ENVIRONMENT[name]]
            if name != "coordinator_address":
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(f"{source} must be an integer; got {value!r}.") from None
        if name != "coordinator_address" and value is not None:
            minimum = 1 if name == "num_processes" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{source} must be an int >= {minimum}; got {value!r}.")
        values[name] = value
    settings = DistributedSettings(**values)
    if None not in (settings.num_processes, settings.process_id):
        if settings.process_id >= settings.num_processes:
            raise ValueError(
                f"process_id must be below num_processes = {settings.num_processes}; got "
                f"{settings.process_id}."
            )
    return settings


def initialize(settings: DistributedSettings = DistributedSettings()) -> None:
    """Calls ``jax.distributed.initialize`` with ``settings``; JAX detects what they leave None
    (SLURM, Open MPI, Kubernetes, Cloud TPU pods). Call it in every process before any other
    JAX call that touches devices.
    """
    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address,
        num_processes=settings.num_processes,
        process_id=settings.process_id,
    )


def is_main_process() -> bool:
    """Whether this is process 0, the one that prints and writes logs.

    Example:
      >>> from gatenets.train.distributed import is_main_process
      >>> is_main_process()
      True
    """
    return jax.process_index() == 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--distributed``, ``--coordinator``, ``--num-processes`` and ``--process-id`` to a
    command's ``parser`` (read back by :func:`initialize_from_arguments`)."""
    group = parser.add_argument_group(
        "several processes or hosts",
        "Start the same command once per process. Any of these (or GATENETS_COORDINATOR_ADDRESS, "
        "GATENETS_NUM_PROCESSES, GATENETS_PROCESS_ID) joins a jax.distributed run; --distributed "
        "alone lets JAX detect them (SLURM, Open MPI, Kubernetes, Cloud TPU). Batches are split "
        "over the devices of all processes; only process 0 prints and writes logs.",
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="join a jax.distributed run (implies --data-parallel)",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")


def initialize_from_arguments(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> bool:
    """Initializes ``jax.distributed`` when ``args`` (from :func:`add_arguments`) or the
    environment ask for it; returns whether they did.

    Raises:
      ValueError: naming a bad flag or variable.
    """
    environ = os.environ if environ is None else environ
    flags = (args.coordinator, args.num_processes, args.process_id)
    asked = (
        args.distributed
        or any(value is not None for value in flags)
        or any(environ.get(name) for name in ENVIRONMENT.values())
    )
    if asked:
        initialize(distributed_settings(*flags, environ=environ))
    return bool(asked)
