"""Training through optax: jitted steps, the :func:`fit` loop, orbax checkpoints, data
parallelism over a device mesh, and whole runs of the example tasks (``gatenets run``).
"""

from __future__ import annotations

from gatenets.train.checkpoint import Checkpointer as Checkpointer
from gatenets.train.loop import FitResult as FitResult
from gatenets.train.loop import NonFiniteLossError as NonFiniteLossError
from gatenets.train.loop import fit as fit
from gatenets.train.run import LoadedRun as LoadedRun
from gatenets.train.run import RunConfig as RunConfig
from gatenets.train.run import load_run as load_run
from gatenets.train.run import make_optimizer as make_optimizer
from gatenets.train.run import run as run
from gatenets.train.sharding import data_parallel_mesh as data_parallel_mesh
from gatenets.train.sharding import replicate as replicate
from gatenets.train.sharding import shard_batch as shard_batch
from gatenets.train.steps import evaluate as evaluate
from gatenets.train.steps import gate_means as gate_means
from gatenets.train.steps import make_eval_step as make_eval_step
from gatenets.train.steps import make_train_step as make_train_step

__all__ = [
    "Checkpointer",
    "FitResult",
    "LoadedRun",
    "NonFiniteLossError",
    "RunConfig",
    "data_parallel_mesh",
    "evaluate",
    "fit",
    "gate_means",
    "load_run",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "replicate",
    "run",
    "shard_batch",
]
