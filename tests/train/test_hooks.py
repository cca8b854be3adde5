"""The loop's pieces, each alone: schedule, guard, evaluation, checkpoint and interrupt save,
loss log, JSON lines, progress bar, the loop itself, and how fit composes them."""

import json
import math
from types import SimpleNamespace

import numpy as np
import optax
import pytest
from flax import nnx

import gatenets
from gatenets.tasks import get_task
from gatenets.train import (
    Hook,
    JsonLinesWriter,
    LoopState,
    NonFiniteGuard,
    NonFiniteLossError,
    PeriodicCheckpoint,
    PeriodicEvaluation,
    ProgressBar,
    Schedule,
    TrainLossLog,
    fan_out,
    fit,
    fit_hooks,
    restore_latest,
    train_loop,
)


def state(step, loss=1.0, *, seconds=1.0, start=0, steps=10, optimizer_step=None):
    optimizer = SimpleNamespace(step=np.array(step if optimizer_step is None else optimizer_step))
    return LoopState(step, loss, seconds, start, steps, "model", optimizer)


def guarded(step, loss):
    """A loop state with no model or optimizer for the guard to check, only the loss."""
    return LoopState(step, loss, 1.0, 0, 10, None, None)


class FakeCheckpointer:
    """Records what a PeriodicCheckpoint asks of a Checkpointer."""

    directory = "/runs/x/checkpoints"

    def __init__(self, latest=None):
        self.calls = []
        self.latest = latest

    def save(self, step, model, optimizer, *, loop=None):
        self.calls.append(("save", step, model))
        self.latest = step

    def poll(self):
        pass

    def latest_step(self):
        return self.latest

    def restore(self, model, optimizer, *, step=None):
        self.calls.append(("restore", model))
        return self.latest if step is None else step

    def wait(self):
        self.calls.append(("wait",))

    def close(self):
        self.calls.append(("close",))


@pytest.mark.parametrize(
    ("every", "last", "due"),
    [
        (3, 10, [3, 6, 9, 10]),
        (5, 10, [5, 10]),
        (None, 10, [10]),
        (None, None, []),
        (4, None, [4, 8]),
    ],
)
def test_schedule_is_due_every_period_and_at_the_end(every, last, due):
    assert [step for step in range(1, 11) if Schedule(every, last)(step)] == due


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf")])
def test_guard_raises_on_a_non_finite_loss_naming_the_last_checkpoint(loss):
    with pytest.raises(NonFiniteLossError, match=rf"loss is {loss} at step 7; no checkpoint"):
        NonFiniteGuard(None).after_step(guarded(7, loss))
    with pytest.raises(
        NonFiniteLossError,
        match=r"the last good checkpoint, step 4, is in '/runs/x/checkpoints'\. Try a lower",
    ):
        NonFiniteGuard(FakeCheckpointer(latest=4)).after_step(guarded(7, loss))
    # A checkpointer with nothing saved yet: the message says so.
    with pytest.raises(NonFiniteLossError, match="no checkpoint was saved"):
        NonFiniteGuard(FakeCheckpointer()).after_step(guarded(1, loss))


def test_guard_lets_finite_losses_pass():
    guard = NonFiniteGuard(FakeCheckpointer(latest=2))
    for loss in (0.0, -3.5, 1e30):
        guard.after_step(guarded(3, loss))
    assert guard.checkpointer.calls == []


@pytest.mark.parametrize(
    ("poison", "message"),
    [
        ("parameters", r"the parameters are not finite after the update \(the loss was 0.5\)"),
        ("optimizer state", r"the optimizer state is not finite after the update"),
        ("both", r"the parameters and the optimizer state are not finite"),
    ],
)
def test_guard_raises_when_a_finite_loss_left_non_finite_parameters_or_state(poison, message):
    model = gatenets.GRU(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
    guard = NonFiniteGuard(FakeCheckpointer(latest=2))
    guard.after_step(LoopState(3, 0.5, 1.0, 0, 10, model, optimizer))
    if poison in ("parameters", "both"):
        model.layers[0].cell.kernel[...] = model.layers[0].cell.kernel[...].at[0, 0].set(np.inf)
    if poison in ("optimizer state", "both"):
        nu = optimizer.opt_state[0].nu["layers"][0]["cell"]["bias"]
        nu[...] = nu[...].at[1].set(np.nan)
    with pytest.raises(NonFiniteLossError, match=message + r".* at step 3; the last good "):
        guard.after_step(LoopState(3, 0.5, 1.0, 0, 10, model, optimizer))


def test_checkpoint_saves_on_schedule_using_the_optimizer_step():
    checkpointer = FakeCheckpointer()
    hook = PeriodicCheckpoint(checkpointer, Schedule(3, 8), say=print)
    for step in range(1, 9):
        hook.after_step(state(step, steps=8, optimizer_step=100 + step))
    assert checkpointer.calls == [
        ("save", 103, "model"),
        ("save", 106, "model"),
        ("save", 108, "model"),
    ]
    hook.close()
    assert checkpointer.calls[-2:] == [("wait",), ("close",)]


def test_interrupt_waits_for_a_pending_save_then_saves_once_and_says_where(capsys):
    checkpointer = FakeCheckpointer()
    lines = []
    hook = PeriodicCheckpoint(checkpointer, Schedule(None, 10), say=lines.append)
    hook.after_step(state(1))
    hook.interrupted(state(1))
    assert checkpointer.calls == [("wait",), ("save", 1, "model"), ("wait",)]
    assert lines == [
        "interrupted: saved step 1 in '/runs/x/checkpoints'; continue with resume=True "
        "(gatenets run … --resume)."
    ]
    # The step a periodic save already wrote is not written twice.
    checkpointer.calls.clear()
    hook = PeriodicCheckpoint(checkpointer, Schedule(2, 10), say=lines.append)
    hook.after_step(state(2))
    hook.interrupted(state(2))
    assert checkpointer.calls == [("save", 2, "model"), ("wait",), ("wait",)]
    assert lines[-1].startswith("interrupted: saved step 2 in")


def test_interrupt_never_saves_a_step_that_left_non_finite_parameters():
    model = gatenets.GRU(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
    model.layers[0].cell.bias[...] = model.layers[0].cell.bias[...].at[0].set(np.nan)
    checkpointer, lines = FakeCheckpointer(latest=2), []
    hook = PeriodicCheckpoint(checkpointer, Schedule(2, 10), say=lines.append)
    hook.interrupted(LoopState(3, 0.5, 1.0, 0, 10, model, optimizer))
    assert checkpointer.calls == [("wait",)]
    assert lines == [
        "interrupted: the parameters of the last step are not finite, so it was not saved; "
        "the checkpoints are in '/runs/x/checkpoints'."
    ]


def test_restore_latest_resumes_from_the_newest_or_a_chosen_checkpoint_never_from_nothing():
    empty = FakeCheckpointer()
    with pytest.raises(FileNotFoundError, match="resume: no checkpoint in '/runs/x/checkpoints'"):
        restore_latest(empty, "model", "optimizer")
    assert empty.calls == []
    saved = FakeCheckpointer(latest=6)
    assert restore_latest(saved, "model", "optimizer") == 6
    assert restore_latest(saved, "model", "optimizer", step=4) == 4
    assert saved.calls == [("restore", "model"), ("restore", "model")]


def test_evaluation_runs_on_schedule_and_keeps_the_last_metrics():
    results = iter([{"loss": 2.0, "accuracy": 0.5}, {"loss": 1.0, "accuracy": 0.75}])
    records = []
    hook = PeriodicEvaluation(lambda: next(results), Schedule(4, 6), records.append)
    assert hook.metrics == {}
    for step in range(1, 7):
        hook.after_step(state(step, steps=6))
    assert records == [
        {"step": 4, "split": "valid", "loss": 2.0, "accuracy": 0.5},
        {"step": 6, "split": "valid", "loss": 1.0, "accuracy": 0.75},
    ]
    assert hook.metrics == {"loss": 1.0, "accuracy": 0.75}


def test_train_loss_log_writes_window_means_and_this_calls_rate():
    records = []
    log = TrainLossLog(3, Schedule(2, 15), records.append)
    assert math.isnan(log.mean)
    losses = [5.0, 4.0, 3.0, 2.0, 1.0]
    # A resumed call: it started at step 10 and has run (step - 10) steps in 0.5 s each.
    for offset, loss in enumerate(losses, start=1):
        log.after_step(state(10 + offset, loss, seconds=0.5 * offset, start=10, steps=15))
    assert records == [
        {"step": 12, "split": "train", "loss": 4.5, "steps_per_second": 2.0, "seconds": 1.0},
        {"step": 14, "split": "train", "loss": 3.0, "steps_per_second": 2.0, "seconds": 2.0},
        {"step": 15, "split": "train", "loss": 2.0, "steps_per_second": 2.0, "seconds": 2.5},
    ]
    assert log.mean == 2.0


def test_json_lines_writer_appends_one_record_per_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with JsonLinesWriter(path) as writer:
        writer.write({"step": 1, "split": "train", "loss": 0.25})
    with JsonLinesWriter(path) as writer:
        writer.write({"step": 2, "split": "valid", "loss": 0.5, "accuracy": 1.0})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "split": "train", "loss": 0.25},
        {"step": 2, "split": "valid", "loss": 0.5, "accuracy": 1.0},
    ]
    nowhere = JsonLinesWriter(None)
    nowhere.write({"step": 3})
    nowhere.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_progress_bar_prints_validation_lines_only(capsys):
    bar = ProgressBar(4, initial=1, desc="adding", window=2, enabled=False)
    for step, loss in ((2, 1.0), (3, 3.0)):
        bar.after_step(state(step, loss))
    assert list(bar.losses) == [1.0, 3.0]
    bar.write({"step": 3, "split": "train", "loss": 2.0})
    bar.write({"step": 3, "split": "valid", "loss": 0.123456, "bits_per_char": 2.0})
    bar.say("hello")
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "step 3: valid loss 0.1235, bits_per_char 2\nhello\n"


def test_progress_bar_counts_steps_and_shows_the_window_mean(capsys):
    bar = ProgressBar(5, initial=1, desc="adding", window=2, enabled=True)
    for step, loss in ((2, 1.0), (3, 3.0), (4, 6.0)):
        bar.after_step(state(step, loss))
    assert bar.bar.n == 4 and bar.bar.postfix == "loss=4.5000"
    bar.close()
    assert "adding" in capsys.readouterr().err


def test_fan_out_writes_every_record_to_every_writer_in_order():
    seen = []

    class Writer:
        def __init__(self, name):
            self.name = name

        def write(self, record):
            seen.append((self.name, record["step"]))

    emit = fan_out([Writer("a"), Writer("b")])
    emit({"step": 1})
    emit({"step": 2})
    assert seen == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


class Recorder(Hook):
    def __init__(self, name, events):
        self.name, self.events = name, events

    def after_step(self, state):
        self.events.append((self.name, "step", state.step, state.loss))

    def interrupted(self, state):
        self.events.append((self.name, "interrupted", state.step, state.loss))

    def close(self):
        self.events.append((self.name, "close"))


def test_train_loop_calls_hooks_in_order_and_closes_them():
    events = []
    hooks = [Recorder("a", events), Recorder("b", events)]
    final = train_loop(
        lambda model, optimizer, batch: batch * 10.0,
        iter([1, 2, 3, 4]),
        hooks,
        model=None,
        optimizer=None,
        start=2,
        steps=4,
    )
    assert events == [
        ("a", "step", 3, 10.0),
        ("b", "step", 3, 10.0),
        ("a", "step", 4, 20.0),
        ("b", "step", 4, 20.0),
        ("a", "close"),
        ("b", "close"),
    ]
    assert (final.step, final.start, final.loss) == (4, 2, 20.0) and final.seconds > 0


def test_train_loop_hands_ctrl_c_to_every_hook_with_the_last_completed_step():
    def batches():
        yield 1
        yield 2
        raise KeyboardInterrupt

    events = []
    with pytest.raises(KeyboardInterrupt):
        train_loop(
            lambda model, optimizer, batch: float(batch),
            batches(),
            [Recorder("a", events), Recorder("b", events)],
            model=None,
            optimizer=None,
            start=0,
            steps=5,
        )
    assert events[-4:] == [
        ("a", "interrupted", 2, 2.0),
        ("b", "interrupted", 2, 2.0),
        ("a", "close"),
        ("b", "close"),
    ]


def test_train_loop_closes_hooks_when_a_hook_raises():
    events = []
    with pytest.raises(NonFiniteLossError):
        train_loop(
            lambda model, optimizer, batch: batch,
            iter([1.0, float("nan"), 3.0]),
            [NonFiniteGuard(None), Recorder("a", events)],
            model=None,
            optimizer=None,
            start=0,
            steps=3,
        )
    # The bad step never reached the recorder, and nothing was called "interrupted".
    assert events == [("a", "step", 1, 1.0), ("a", "close")]


def test_fit_hooks_follow_fits_settings(tmp_path):
    task = get_task("adding", length=6)
    checkpointer = FakeCheckpointer()
    hooks = fit_hooks(
        "model",
        task,
        steps=10,
        eval_every=0,
        log_every=4,
        out_dir=tmp_path,
        checkpointer=checkpointer,
        checkpoint_every=3,
        progress=False,
    )
    # Optional pieces left out by the settings (gate statistics, TensorBoard) are None.
    assert hooks.gate_stats is None and hooks.tensorboard is None
    hooks = hooks.in_order()
    assert [type(hook).__name__ for hook in hooks] == [
        "NonFiniteGuard",
        "ProgressBar",
        "TrainLossLog",
        "PeriodicEvaluation",
        "JsonLinesWriter",
        "PeriodicCheckpoint",
    ]
    guard, _, train_log, evaluation, _, checkpoint = hooks
    assert evaluation.schedule == Schedule(None, None)
    assert train_log.schedule == Schedule(4, 10) and train_log.losses.maxlen == 4
    assert checkpoint.schedule == Schedule(3, 10)
    assert guard.checkpointer is checkpointer
    for hook in hooks:
        hook.close()
    assert (tmp_path / "metrics.jsonl").exists()
    bare = fit_hooks("model", task, steps=5, progress=False)
    assert bare.checkpoint is None and bare.evaluation.schedule == Schedule(None, 5)
    assert bare.writer.stream is None
    bare.progress.close()


class UserHook(Hook):
    """A hook written as a user would: one class, no keyword of fit."""

    def __init__(self):
        self.events = []

    def begin(self, context):
        self.events.append(("begin", context.steps, context.start, context.task.name))

    def write(self, record):
        self.events.append(("record", record["step"], record["split"]))

    def after_step(self, state):
        self.events.append(("step", state.step))

    def close(self):
        self.events.append(("close",))


def test_a_new_hook_is_one_class_passed_to_fit():
    task = get_task("adding", length=6)
    model = task.make_model("gru", 4, rngs=nnx.Rngs(0))
    recorder = UserHook()
    fit(model, optax.adam(1e-2), task, steps=3, batch_size=4, eval_every=2, eval_batch_size=8,
        log_every=2, progress=False, hooks=[recorder])  # fmt: skip
    assert recorder.events == [
        ("begin", 3, 0, "adding"),
        ("step", 1),
        ("record", 2, "train"),  # the built-in hooks' records reach it, then its own step
        ("record", 2, "valid"),
        ("step", 2),
        ("record", 3, "train"),
        ("record", 3, "valid"),
        ("step", 3),
        ("close",),
    ]


def test_hooks_must_be_hooks():
    task = get_task("adding", length=6)
    model = task.make_model("gru", 4, rngs=nnx.Rngs(0))
    args = (model, optax.adam(1e-2), task)
    with pytest.raises(TypeError, match=r"hooks\[1\] must be a gatenets.train.Hook .* got int"):
        fit(*args, steps=1, batch_size=4, progress=False, hooks=[UserHook(), 3])
    with pytest.raises(TypeError, match="hooks must be a list of gatenets.train.Hook"):
        fit(*args, steps=1, batch_size=4, progress=False, hooks=UserHook())


def test_every_hook_is_closed_when_one_fails_to_close():
    closed = []

    class Failing(Hook):
        def close(self):
            closed.append("failing")
            raise OSError(28, "No space left on device")

    class Closing(Hook):
        def close(self):
            closed.append("closing")

    with pytest.raises(OSError, match="No space"):
        train_loop(lambda m, o, b: 1.0, iter([1]), [Failing(), Closing()], model=None,
                   optimizer=None, start=0, steps=1)  # fmt: skip
    assert closed == ["failing", "closing"]
