"""Ctrl-C (a real SIGINT) at each phase of checkpointing: before a save, inside the save call,
while an asynchronous save is in flight, while waiting for it, and after it. Every time the
last completed step is saved once, verified, and a resumed run equals an uninterrupted one."""

import signal
import sys

import numpy as np
import pytest
from helpers import params_of, tiny_fit

from gatenets.tasks import AddingTask
from gatenets.train import Checkpointer

loop_module = sys.modules["gatenets.train.fit"]


def ctrl_c():
    signal.raise_signal(signal.SIGINT)


class Pressing(AddingTask):
    """Adding, with ``press(start + index)`` called as each training batch is made."""

    press = staticmethod(lambda index: None)

    def batches(self, split, batch_size, *, seed, start=0):
        for index, batch in enumerate(super().batches(split, batch_size, seed=seed, start=start)):
            if split == "train":
                self.press(start + index)
            yield batch


class Watched(Checkpointer):
    """A Checkpointer whose orbax save and wait can press Ctrl-C, and that notes whether a
    save was still in flight when the test pressed it."""

    during_save = None  # press Ctrl-C inside the save of this step
    during_wait = False  # press Ctrl-C on entering the next wait
    instances = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Watched.instances.append(self)
        save, wait = self.manager.save, self.manager.wait_until_finished

        def pressing_save(step, *a, **k):
            if step == Watched.during_save:
                ctrl_c()
            return save(step, *a, **k)

        def pressing_wait():
            if Watched.during_wait:
                Watched.during_wait = False
                ctrl_c()
            return wait()

        self.manager.save, self.manager.wait_until_finished = pressing_save, pressing_wait


def train(task, out_dir, **kwargs):
    return tiny_fit(task, out_dir, steps=6, checkpoint_every=2, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return params_of(train(AddingTask(length=6), tmp_path_factory.mktemp("whole")))


def in_flight_at(index, *, again_while_waiting=False):
    """Ctrl-C as batch ``index`` is made, right after the save of step ``index`` began; and,
    if asked, Ctrl-C again while the handler waits for that save."""

    def press(at):
        if at == index:
            assert Watched.instances[-1].manager.is_saving_in_progress()
            Watched.during_wait = again_while_waiting
            ctrl_c()

    return press


def after_save_at(index):
    def press(at):
        if at == index:
            Watched.instances[-1].manager.wait_until_finished()
            ctrl_c()

    return press


# phase: (press as batches are made, Ctrl-C inside the save of this step, the step saved)
PHASES = {
    "before a save": (lambda at: at == 3 and ctrl_c(), None, 3),
    "inside the save call": (lambda at: None, 4, 4),
    "during an in-flight save": (in_flight_at(4), None, 4),
    "again while waiting for the save": (in_flight_at(4, again_while_waiting=True), None, 4),
    "after the save": (after_save_at(5), None, 5),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_ctrl_c_at_each_phase_saves_the_last_step_once_and_resumes_exactly(
    phase, uninterrupted, tmp_path, monkeypatch, capsys
):
    press, during_save, saved_step = PHASES[phase]
    monkeypatch.setattr(loop_module, "Checkpointer", Watched)
    monkeypatch.setattr(Watched, "during_save", during_save)
    monkeypatch.setattr(Watched, "during_wait", False)
    task = Pressing(length=6)
    task.press = press
    with pytest.raises(KeyboardInterrupt):
        train(task, tmp_path)
    assert f"interrupted: saved step {saved_step} in" in capsys.readouterr().err
    with Checkpointer(tmp_path / "checkpoints") as checkpoints:
        assert checkpoints.latest_step() == saved_step
        for step in checkpoints.all_steps():
            checkpoints.verify(step)
    task.press = staticmethod(lambda at: None)
    monkeypatch.setattr(Watched, "during_save", None)
    resumed = train(task, tmp_path, resume=True)
    for a, b in zip(uninterrupted, params_of(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
