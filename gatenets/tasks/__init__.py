"""Sequence tasks with data made on the machine: their data, losses, metrics, baselines and
default models.

Example:
  >>> from gatenets.tasks import get_task, list_tasks
  >>> list_tasks()
  ['adding', 'charlm', 'copying', 'mnist1d', 'temporal_order']
  >>> get_task("adding", length=20).metric
  'mse'
"""

from __future__ import annotations

from gatenets.tasks.adding import AddingTask as AddingTask
from gatenets.tasks.base import MODELS as MODELS
from gatenets.tasks.base import Batch as Batch
from gatenets.tasks.base import SequenceModel as SequenceModel
from gatenets.tasks.base import Task as Task
from gatenets.tasks.charlm import CharLMTask as CharLMTask
from gatenets.tasks.copying import CopyingTask as CopyingTask
from gatenets.tasks.mnist1d import MNIST1DTask as MNIST1DTask
from gatenets.tasks.temporal_order import TemporalOrderTask as TemporalOrderTask
from gatenets.tasks.transformer import GatedTransformer as GatedTransformer

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (AddingTask, CharLMTask, CopyingTask, MNIST1DTask, TemporalOrderTask)
}


def list_models() -> list[str]:
    """Names a task model can be built on: the registered cell families, then ``"attention"``.

    Example:
      >>> from gatenets.tasks import list_models
      >>> list_models()[:2], list_models()[-1]
      (['lstm', 'gru'], 'attention')
    """
    return list(MODELS)


def list_tasks() -> list[str]:
    """Names of the tasks, sorted."""
    return sorted(TASKS)


def get_task(name: str, **options) -> Task:
    """Builds the task ``name`` with its options (e.g. ``length=100`` for ``"adding"``).

    Raises:
      ValueError: for an unknown task name or option, or a bad option value.
    """
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r}; the tasks are {list_tasks()}.")
    return TASKS[name](**options)


__all__ = [
    "MODELS",
    "TASKS",
    "AddingTask",
    "Batch",
    "CharLMTask",
    "CopyingTask",
    "GatedTransformer",
    "MNIST1DTask",
    "SequenceModel",
    "Task",
    "TemporalOrderTask",
    "get_task",
    "list_models",
    "list_tasks",
]
