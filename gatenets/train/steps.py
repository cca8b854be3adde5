"""Jit-compiled train and eval steps for any task model and any optax transformation."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from gatenets._typing import Array
from gatenets.tasks.base import Batch, Task


# One compiled step per task object: fits and evaluations of the same task reuse it.
@functools.lru_cache(maxsize=32)
def make_train_step(task: Task) -> Callable[[nnx.Module, nnx.Optimizer, Batch], Array]:
    """A jitted ``train_step(model, optimizer, batch) -> loss`` for ``task``.

    The step computes ``task.loss(model(inputs, mask=mask), batch)``, its gradient with
    respect to the model's ``nnx.Param`` s, and applies the optimizer's optax transformation
    in place. Arrays sharded over a mesh (see :func:`gatenets.train.shard_batch`) run as one
    SPMD program: JAX inserts the gradient all-reduce.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from gatenets.tasks import get_task
      >>> from gatenets.train import make_train_step
      >>> task = get_task("adding", length=6)
      >>> model = task.make_model("gru", 8, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
      >>> loss = make_train_step(task)(model, optimizer, next(task.batches("train", 4, seed=0)))
      >>> loss.shape
      ()
    """

    @nnx.jit
    def train_step(model, optimizer, batch):
        def loss_fn(model):
            return task.loss(model(batch.inputs, mask=batch.mask), batch)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return train_step


@functools.lru_cache(maxsize=32)
def make_eval_step(task: Task) -> Callable[[nnx.Module, Batch], tuple[Array, dict[str, Array]]]:
    """A jitted ``eval_step(model, batch) -> (loss, metrics)`` for ``task``."""

    @nnx.jit
    def eval_step(model, batch):
        outputs = model(batch.inputs, mask=batch.mask)
        return task.loss(outputs, batch), task.metrics(outputs, batch)

    return eval_step


def evaluate(
    model: nnx.Module,
    task: Task,
    split: str = "valid",
    *,
    batch_size: int = 256,
    seed: int = 0,
    eval_step: Callable | None = None,
    prepare: Callable[[Batch], Batch] | None = None,
) -> dict[str, float]:
    """Loss and metrics of ``model`` over a whole finite split, weighted by sequences per batch.

    Args:
      model: a model of ``task``.
      task: the task.
      split: ``"valid"`` or ``"test"``.
      batch_size: sequences per evaluation batch.
      seed: data seed (synthetic tasks draw their evaluation sets from it).
      eval_step: a step from :func:`make_eval_step` to reuse (one is made if None).
      prepare: applied to each batch before the step (e.g. sharding it).

    Returns:
      ``{"loss": …, **task.metrics}`` as Python floats.
    """
    if split == "train":
        raise ValueError(
            "split must be 'valid' or 'test' (the train split is endless); got 'train'."
        )
    eval_step = eval_step or make_eval_step(task)
    totals: dict[str, float] = {}
    count = 0
    model.eval()
    try:
        for batch in task.batches(split, batch_size, seed=seed):
            rows = int(np.shape(batch.inputs)[0])
            if prepare is not None:
                batch = prepare(batch)
            loss, metrics = eval_step(model, batch)
            values = jax.device_get({"loss": loss, **metrics})
            for name, value in values.items():
                totals[name] = totals.get(name, 0.0) + rows * float(value)
            count += rows
    finally:
        model.train()
    return {name: total / count for name, total in totals.items()}


def gate_means(model: nnx.Module, batch: Batch) -> dict[str, float]:
    """Mean of every gate of ``model`` over the valid steps of ``batch``.

    Returns:
      ``{"layer0/forward/forget": mean, …}`` as Python floats.
    """
    _, trace = model(batch.inputs, mask=batch.mask, return_gates=True)
    mask = np.asarray(trace.mask)
    return {name: float(np.asarray(gate)[mask].mean()) for name, gate in trace.items()}
