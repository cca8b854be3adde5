"""The pieces a training loop calls after each step: the schedule, the non-finite guard,
periodic evaluation and checkpointing (with the save on Ctrl-C).

Every piece is a :class:`Hook`: an object with ``after_step(state)``, ``interrupted(state)``
and ``close()``, each a no-op unless the piece overrides it. :func:`~gatenets.train.train_loop`
calls them in order after every step, on Ctrl-C, and at the end; pieces that produce records
(``{"step": 10, "split": "valid", "loss": …}``) hand them to an ``emit`` callable, which
:func:`gatenets.train.fit` points at its log (:mod:`gatenets.train.logs`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gatenets.train.checkpoint import deferred_interrupt

Record = dict[str, Any]
"""One line of ``metrics.jsonl``: ``{"step": int, "split": str, name: float, …}``."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss, parameters or optimizer state; the last good
    checkpoint is left in place."""


@jax.jit
def _finite(leaves: list[Any]) -> Any:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def non_finite_parts(model: nnx.Module | None, optimizer: nnx.Optimizer | None) -> list[str]:
    """Which of ``"parameters"`` (the model's whole floating-point state) and ``"optimizer
    state"`` hold a NaN or an infinity; ``[]`` when both are finite. What is not an NNX object
    (None, a test double) is not checked.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.train.hooks import non_finite_parts
      >>> model = gatenets.GRU(2, 3, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
      >>> non_finite_parts(model, optimizer)
      []
      >>> model.layers[0].cell.bias[...] = jnp.full((9,), jnp.nan)
      >>> non_finite_parts(model, optimizer)
      ['parameters']
    """
    parts = []
    for name, node in (("parameters", model), ("optimizer state", optimizer)):
        if not nnx.graph.is_graph_node(node):
            continue
        leaves = [
            leaf
            for leaf in jax.tree_util.tree_leaves(nnx.to_pure_dict(nnx.state(node)))
            if jnp.issubdtype(leaf.dtype, jnp.inexact)
        ]
        if leaves and not bool(_finite(leaves)):
            parts.append(name)
    return parts


class LoopState(NamedTuple):
    """Where the loop stands after a step; what every hook receives.

    Attributes:
      step: steps completed, counting those before a resume.
      loss: the loss of the step just taken (NaN before the first step of this call).
      seconds: wall time since this call's loop began.
      start: the step this call began at (0, or the step a resume restored).
      steps: the step the loop ends at.
      model: the model being trained.
      optimizer: its ``nnx.Optimizer``.
    """

    step: int
    loss: float
    seconds: float
    start: int
    steps: int
    model: nnx.Module
    optimizer: nnx.Optimizer


class FitContext(NamedTuple):
    """What :func:`~gatenets.train.fit` tells each hook before the first step
    (:meth:`Hook.begin`): the run's settings, and where records and messages go.

    Attributes:
      model: the model being trained.
      task: its task.
      steps: the step the loop ends at.
      start: the step it starts from (0, or the step a resume restored).
      seed: the data seed.
      eval_batch_size: sequences per evaluation batch.
      mesh: the data-parallel device mesh, or None.
      out_dir: the run's directory, or None when nothing is written.
      emit: hands a record (``{"step", "split", …}``) to every hook's :meth:`Hook.write`
        (on process 0; elsewhere it drops it).
      say: prints a line for the user without breaking the progress bar.
    """

    model: Any
    task: Any
    steps: int
    start: int
    seed: int
    eval_batch_size: int
    mesh: Any
    out_dir: Any
    emit: Callable[[Record], None]
    say: Callable[[str], None]


class Hook:
    """Base of the loop's pieces: every method does nothing until a piece overrides it.

    A new feature (gate statistics every N steps, checksums after each save, a TensorBoard
    writer) is one more subclass, passed to :func:`~gatenets.train.fit` in ``hooks=[…]``;
    neither the loop nor :func:`~gatenets.train.fit` changes. A hook that needs the run's
    settings (the task, the number of steps, where to emit records) takes them in
    :meth:`begin`; one that logs receives every record in :meth:`write`.

    Example:
      >>> import optax
      >>> from flax import nnx
      >>> from gatenets.tasks import get_task
      >>> from gatenets.train import Hook, fit
      >>> class BestValid(Hook):
      ...     best = float("inf")
      ...     def begin(self, context): self.steps = context.steps
      ...     def write(self, record):
      ...         if record["split"] == "valid": self.best = min(self.best, record["loss"])
      ...     def close(self): print(f"best valid loss {self.best:.3f} in {self.steps} steps")
      >>> task = get_task("adding", length=6)
      >>> model = task.make_model("gru", 4, rngs=nnx.Rngs(0))
      >>> result = fit(model, optax.adam(1e-2), task, steps=2, batch_size=4, eval_every=1,
      ...              eval_batch_size=8, progress=False, hooks=[BestValid()])
      ... # doctest: +ELLIPSIS
      best valid loss 0... in 2 steps
    """

    def begin(self, context: FitContext) -> None:
        """Called once before the first step with the run's :class:`FitContext`."""

    def write(self, record: Record) -> None:
        """Receives every record the other hooks emit (training loss, validation, gates)."""

    def after_step(self, state: LoopState) -> None:
        """Called after every completed step, in the order of the hooks."""

    def interrupted(self, state: LoopState) -> None:
        """Called on Ctrl-C with the state of the last completed step, before it propagates."""

    def close(self) -> None:
        """Called once when the loop ends, however it ends."""


class Schedule(NamedTuple):
    """When a periodic piece is due: every ``every`` steps and at step ``last``.

    Attributes:
      every: period in steps; None: only at ``last``.
      last: the final step, always due; None: never due by itself.

    Example:
      >>> from gatenets.train import Schedule
      >>> due = Schedule(every=4, last=10)
      >>> [step for step in range(1, 11) if due(step)]
      [4, 8, 10]
      >>> [step for step in range(1, 11) if Schedule(None, None)(step)]
      []
    """

    every: int | None
    last: int | None

    def __call__(self, step: int) -> bool:
        return step == self.last or (self.every is not None and step % self.every == 0)


class NonFiniteGuard(Hook):
    """Stops training at the first step that leaves a NaN or an infinity in the loss, the
    updated parameters or the optimizer state, naming the last good checkpoint.

    The loss is computed before the update, so a finite loss can come with NaN gradients and
    NaN parameters; checking what the step left behind is what makes every saved step good.
    Put the guard first among the hooks, so that nothing logs or saves the step that went bad.

    Args:
      checkpointer: the :class:`~gatenets.train.Checkpointer` whose latest step the error
        names, or None when nothing is saved.

    Example:
      >>> from gatenets.train import LoopState, NonFiniteGuard
      >>> state = LoopState(3, float("nan"), 0.1, 0, 10, None, None)
      >>> NonFiniteGuard(None).after_step(state)
      Traceback (most recent call last):
      ...
      gatenets.train.hooks.NonFiniteLossError: training stopped: the loss is nan at step 3; no checkpoint was saved. Try a lower learning rate or gradient clipping.
    """  # noqa: E501

    def __init__(self, checkpointer: Any = None):
        self.checkpointer = checkpointer

    def after_step(self, state: LoopState) -> None:
        if not math.isfinite(state.loss):
            what = f"the loss is {state.loss}"
        else:
            parts = non_finite_parts(state.model, state.optimizer)
            if not parts:
                return
            verb = "is" if parts == ["optimizer state"] else "are"
            what = (
                f"the {' and the '.join(parts)} {verb} not finite after the update (the loss "
                f"was {state.loss})"
            )
        kept = None if self.checkpointer is None else self.checkpointer.latest_step()
        where = (
            f"the last good checkpoint, step {kept}, is in {str(self.checkpointer.directory)!r}"
            if kept is not None
            else "no checkpoint was saved"
        )
        raise NonFiniteLossError(
            f"training stopped: {what} at step {state.step}; {where}. "
            "Try a lower learning rate or gradient clipping."
        )


class PeriodicEvaluation(Hook):
    """Evaluates when ``schedule`` is due and emits ``{"step", "split": "valid", **metrics}``.

    Args:
      evaluate: called with no arguments, returns ``{name: float}`` (e.g. a
        ``functools.partial`` of :func:`gatenets.train.evaluate`).
      schedule: when to evaluate.
      emit: receives each record.

    Attributes:
      metrics: the last evaluation's metrics (empty until one ran).

    Example:
      >>> from gatenets.train import LoopState, PeriodicEvaluation, Schedule
      >>> records = []
      >>> hook = PeriodicEvaluation(lambda: {"loss": 0.5}, Schedule(2, 3), records.append)
      >>> for step in (1, 2, 3):
      ...     hook.after_step(LoopState(step, 1.0, 0.1, 0, 3, None, None))
      >>> records
      [{'step': 2, 'split': 'valid', 'loss': 0.5}, {'step': 3, 'split': 'valid', 'loss': 0.5}]
    """

    def __init__(
        self,
        evaluate: Callable[[], dict[str, float]],
        schedule: Schedule,
        emit: Callable[[Record], None],
    ):
        self.evaluate = evaluate
        self.schedule = schedule
        self.emit = emit
        self.metrics: dict[str, float] = {}

    def after_step(self, state: LoopState) -> None:
        if self.schedule(state.step):
            self.metrics = self.evaluate()
            self.emit({"step": state.step, "split": "valid", **self.metrics})


class PeriodicCheckpoint(Hook):
    """Saves ``(model, optimizer)`` when ``schedule`` is due, and once more on Ctrl-C.

    The step saved is the optimizer's own counter, not the loop's: Ctrl-C usually lands while
    the loop waits for a step's loss, after that step's parameters were already written back.
    A step already saved is not saved again. On Ctrl-C the hook first waits for a save in
    flight to finish, then saves the last step once (unless its parameters or optimizer state
    are not finite: such a step is never saved) and waits for that save, with further Ctrl-C
    held back meanwhile. After every step it lets the checkpointer write the checksums of a
    finished save (``poll``). :meth:`close` waits for background writes and closes the
    checkpointer.

    Args:
      checkpointer: a :class:`~gatenets.train.Checkpointer` (or anything with its ``save``,
        ``poll``, ``wait``, ``close`` and ``directory``).
      schedule: when to save.
      say: prints a line for the user (the message after Ctrl-C).
      loop: returns JSON-serialisable state of the loop to save with each step (e.g. the
        losses of the current logging window), or None.

    Example:
      >>> import numpy as np
      >>> from types import SimpleNamespace
      >>> from gatenets.train import LoopState, PeriodicCheckpoint, Schedule
      >>> class Saves(list):
      ...     directory = "ckpt"
      ...     def save(self, step, model, optimizer, *, loop=None): self.append(step)
      ...     def poll(self): pass
      ...     def wait(self): pass
      ...     def close(self): pass
      >>> saves = Saves()
      >>> hook = PeriodicCheckpoint(saves, Schedule(2, 5), say=print)
      >>> for step in range(1, 4):
      ...     hook.after_step(LoopState(step, 1.0, 0.1, 0, 5, None, SimpleNamespace(
      ...         step=np.array(step))))
      >>> hook.interrupted(LoopState(3, 1.0, 0.1, 0, 5, None, SimpleNamespace(step=np.array(3))))
      interrupted: saved step 3 in 'ckpt'; continue with resume=True (gatenets run … --resume).
      >>> saves
      [2, 3]
    """

    def __init__(
        self,
        checkpointer: Any,
        schedule: Schedule,
        *,
        say: Callable[[str], None],
        loop: Callable[[], dict[str, Any]] | None = None,
    ):
        self.checkpointer = checkpointer
        self.schedule = schedule
        self.say = say
        self.loop = loop
        self.saved: int | None = None

    def save(self, state: LoopState) -> int:
        """Saves the optimizer's step (unless it is saved already) and returns it."""
        done = int(state.optimizer.step[...])
        if done != self.saved:
            loop = None if self.loop is None else self.loop()
            try:
                self.checkpointer.save(done, state.model, state.optimizer, loop=loop)
            finally:
                # Ctrl-C held back during the save surfaces once it returned: it is saved.
                self.saved = done
        return done

    def after_step(self, state: LoopState) -> None:
        if self.schedule(state.step):
            self.save(state)
        else:
            self.checkpointer.poll()

    def interrupted(self, state: LoopState) -> None:
        with deferred_interrupt():
            self.checkpointer.wait()
            bad = non_finite_parts(state.model, state.optimizer)
            if bad:
                self.say(
                    f"interrupted: the {' and the '.join(bad)} of the last step are not "
                    f"finite, so it was not saved; the checkpoints are in "
                    f"{str(self.checkpointer.directory)!r}."
                )
                return
            done = self.save(state)
            self.checkpointer.wait()
            self.say(
                f"interrupted: saved step {done} in {str(self.checkpointer.directory)!r}; "
                "continue with resume=True (gatenets run … --resume)."
            )

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()


def restore_latest(
    checkpointer: Any, model: nnx.Module, optimizer: nnx.Optimizer, *, step: int | None = None
) -> int:
    """Loads the newest checkpoint (or that of ``step``) into ``model`` and ``optimizer`` and
    returns its step.

    Raises:
      FileNotFoundError: when there is no checkpoint to resume from (or none of ``step``),
        rather than silently starting again from step 0.
    """
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(
            f"resume: no checkpoint in {str(checkpointer.directory)!r}, so there is nothing to "
            "resume; start the run without resume (--resume)."
        )
    return checkpointer.restore(model, optimizer, step=step)
