"""Training through optax: jitted steps, the :func:`fit` loop and the hooks it composes
(evaluation, checkpoints, logs, the non-finite guard), orbax checkpoints, data parallelism over
a device mesh, and whole runs of the example tasks (``gatenets run``).
"""

from __future__ import annotations

from gatenets.train.checkpoint import Checkpointer as Checkpointer
from gatenets.train.checkpoint import CheckpointMismatchError as CheckpointMismatchError
from gatenets.train.checkpoint import CheckpointWriteError as CheckpointWriteError
from gatenets.train.checkpoint import CorruptCheckpointError as CorruptCheckpointError
from gatenets.train.fit import FitHooks as FitHooks
from gatenets.train.fit import FitResult as FitResult
from gatenets.train.fit import fit as fit
from gatenets.train.fit import fit_hooks as fit_hooks
from gatenets.train.fit import train_loop as train_loop
from gatenets.train.hooks import FitContext as FitContext
from gatenets.train.hooks import Hook as Hook
from gatenets.train.hooks import LoopState as LoopState
from gatenets.train.hooks import NonFiniteGuard as NonFiniteGuard
from gatenets.train.hooks import NonFiniteLossError as NonFiniteLossError
from gatenets.train.hooks import PeriodicCheckpoint as PeriodicCheckpoint
from gatenets.train.hooks import PeriodicEvaluation as PeriodicEvaluation
from gatenets.train.hooks import Schedule as Schedule
from gatenets.train.hooks import restore_latest as restore_latest
from gatenets.train.logs import JsonLinesWriter as JsonLinesWriter
from gatenets.train.logs import ProgressBar as ProgressBar
from gatenets.train.logs import TrainLossLog as TrainLossLog
from gatenets.train.logs import fan_out as fan_out
from gatenets.train.run import LoadedRun as LoadedRun
from gatenets.train.run import RunConfig as RunConfig
from gatenets.train.run import TrainedModel as TrainedModel
from gatenets.train.run import load_run as load_run
from gatenets.train.run import make_optimizer as make_optimizer
from gatenets.train.run import run as run
from gatenets.train.run import train_model as train_model
from gatenets.train.sharding import batch_placer as batch_placer
from gatenets.train.sharding import data_parallel_mesh as data_parallel_mesh
from gatenets.train.sharding import replicate as replicate
from gatenets.train.sharding import shard_batch as shard_batch
from gatenets.train.steps import evaluate as evaluate
from gatenets.train.steps import gate_means as gate_means
from gatenets.train.steps import make_eval_step as make_eval_step
from gatenets.train.steps import make_train_step as make_train_step
from gatenets.train.watch import GateStatsHook as GateStatsHook
from gatenets.train.watch import TensorBoardWriter as TensorBoardWriter
from gatenets.train.watch import plot_training as plot_training
from gatenets.train.watch import read_metrics as read_metrics

__all__ = [
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "Checkpointer",
    "CorruptCheckpointError",
    "FitContext",
    "FitHooks",
    "FitResult",
    "GateStatsHook",
    "Hook",
    "JsonLinesWriter",
    "LoadedRun",
    "LoopState",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "PeriodicCheckpoint",
    "PeriodicEvaluation",
    "ProgressBar",
    "RunConfig",
    "Schedule",
    "TensorBoardWriter",
    "TrainLossLog",
    "TrainedModel",
    "batch_placer",
    "data_parallel_mesh",
    "evaluate",
    "fan_out",
    "fit",
    "fit_hooks",
    "gate_means",
    "load_run",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "plot_training",
    "read_metrics",
    "replicate",
    "restore_latest",
    "run",
    "shard_batch",
    "train_loop",
    "train_model",
]
