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
import contextlib
import errno
import os
import socket
import time
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


CONNECT_TIMEOUT_SECONDS = 120.0
"""How long a process waits for the coordinator, and the coordinator for every process to join,
before the run fails."""


class CoordinatorUnreachableError(ConnectionError):
    """No coordinator answered at the address within the time allowed."""


def _host_and_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator_address must be HOST:PORT with a port in 1..65535; got {address!r}."
        )
    return host.strip("[]"), int(port)


def check_coordinator(settings: DistributedSettings, *, timeout: float) -> None:
    """Fails fast, naming the address, where ``jax.distributed`` would wait minutes or abort
    the process: process 0's port must be free to listen on; the other processes wait up to
    ``timeout`` seconds for process 0 to answer there.

    Raises:
      ValueError: when the address is malformed, or (process 0) its port is taken.
      CoordinatorUnreachableError: when (other processes) nothing answers within
        ``timeout`` seconds.
    """
    if settings.coordinator_address is None:
        return
    host, port = _host_and_port(settings.coordinator_address)
    if settings.process_id == 0:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", port))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise
                raise ValueError(
                    f"coordinator_address {settings.coordinator_address!r}: port {port} is "
                    "already in use on this machine (another run's coordinator, or another "
                    "program); choose a free port."
                ) from None
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise CoordinatorUnreachableError(
                    f"coordinator_address {settings.coordinator_address!r}: no coordinator "
                    f"answered within {timeout:g} s ({err.strerror or err}); start process 0 "
                    "with the same address, or check the address."
                ) from None
            time.sleep(0.25)


def initialize(
    settings: DistributedSettings = DistributedSettings(),
    *,
    timeout: float = CONNECT_TIMEOUT_SECONDS,
) -> None:
    """Calls ``jax.distributed.initialize`` with ``settings``; JAX detects what they leave None
    (SLURM, Open MPI, Kubernetes, Cloud TPU pods). Call it in every process before any other
    JAX call that touches devices.

    With an explicit coordinator address it first checks, in Python, that process 0 can
    listen on the port and that the others reach it within ``timeout`` seconds
    (:func:`check_coordinator`), so those mistakes are one clear error. A process that joins
    the coordinator but whose peers never come, or a peer killed during training, is
    detected by JAX itself: after ``timeout`` seconds (joining) or JAX's heartbeat timeout
    (100 s, training) JAX ends the process with its own message (exit status 134).
    """
    check_coordinator(settings, timeout=timeout)
    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address,
        num_processes=settings.num_processes,
        process_id=settings.process_id,
        initialization_timeout=max(1, int(timeout)),
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
    group.add_argument(
        "--distributed-timeout",
        type=float,
        default=CONNECT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"wait at most this long for the coordinator and the other processes (default "
        f"{CONNECT_TIMEOUT_SECONDS:g})",
    )


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
        timeout = getattr(args, "distributed_timeout", CONNECT_TIMEOUT_SECONDS)
        if not timeout > 0:
            raise ValueError(f"--distributed-timeout must be > 0 seconds; got {timeout}.")
        initialize(distributed_settings(*flags, environ=environ), timeout=timeout)
    return bool(asked)
