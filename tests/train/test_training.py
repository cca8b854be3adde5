"""Training: resume equals an uninterrupted run, NaN stops, Ctrl-C saves, sharded equals
unsharded, runs reload, and bad input is named (the loss falling on every task is tested in
tests/tasks/test_tasks.py)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import cpu_process_env, params_of, require_mnist1d, tiny_fit

from gatenets.tasks import AddingTask, get_task
from gatenets.train import (
    Checkpointer,
    CorruptCheckpointError,
    NonFiniteLossError,
    RunConfig,
    evaluate,
    fit,
    load_run,
    make_train_step,
    run,
)
from gatenets.train.run import _write_json as write_json

ROOT = pathlib.Path(__file__).parent.parent.parent


def test_evaluation_weighs_batches_by_their_sequences():
    require_mnist1d()
    task = get_task("mnist1d", num_samples=500)
    model = task.make_model("gru", 8, rngs=nnx.Rngs(0))
    # 100 test sequences in batches of 30: the last batch holds 10.
    metrics = evaluate(model, task, "test", batch_size=30)
    x, y = task.split_arrays("test")
    predictions = np.argmax(np.asarray(model(x)), axis=-1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predictions == y), abs=1e-6)


class Interrupted(AddingTask):
    """Adding, raising ``error`` (Ctrl-C by default) while the batch of index ``at`` is made."""

    def __init__(self, at, *, error=KeyboardInterrupt, **options):
        super().__init__(**options)
        self.at, self.error = at, error

    def batches(self, split, batch_size, *, seed, start=0):
        for index, batch in enumerate(super().batches(split, batch_size, seed=seed, start=start)):
            if split == "train" and start + index == self.at:
                raise self.error
            yield batch


class Poisoned(AddingTask):
    """Adding, with NaN inputs in the batch of index ``at``."""

    def __init__(self, at, **options):
        super().__init__(**options)
        self.at = at

    def batches(self, split, batch_size, *, seed, start=0):
        for index, batch in enumerate(super().batches(split, batch_size, seed=seed, start=start)):
            if split == "train" and start + index == self.at:
                batch = batch._replace(inputs=np.full_like(batch.inputs, np.nan))
            yield batch


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    whole = tiny_fit(
        AddingTask(length=6), tmp_path / "whole", checkpoint_every=2, keep_checkpoints=2
    )
    assert Checkpointer(tmp_path / "whole" / "checkpoints").all_steps() == [4, 6]

    task = Interrupted(4, length=6)
    with pytest.raises(KeyboardInterrupt):
        tiny_fit(task, tmp_path / "cut", checkpoint_every=10)
    # Ctrl-C saved the 4 completed steps although no periodic save was due.
    assert Checkpointer(tmp_path / "cut" / "checkpoints").latest_step() == 4
    task.at = None
    resumed = tiny_fit(task, tmp_path / "cut", resume=True, checkpoint_every=10)
    assert params_of(resumed) != [] and not np.array_equal(
        params_of(resumed)[0], params_of(task.make_model("lstm", 8, rngs=nnx.Rngs(1)))[0]
    )
    for a, b in zip(params_of(whole), params_of(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(
        NonFiniteLossError,
        match=r"loss is nan at step 5; the last good "
        r"checkpoint, step 4",
    ):
        tiny_fit(Poisoned(4, length=6), tmp_path, steps=8, checkpoint_every=2)
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    assert checkpoints.latest_step() == 4
    model = AddingTask(length=6).make_model("lstm", 8, rngs=nnx.Rngs(5))
    checkpoints.restore(model)
    assert all(np.isfinite(p).all() for p in params_of(model))


def nan_update_at(count):
    """An optax transformation that turns the updates of step ``count`` (counting from 1) NaN:
    that step's loss, computed before its update, is finite."""

    def update(updates, state, params=None):
        poison = jnp.where(state + 1 == count, jnp.nan, 1.0)
        return jax.tree.map(lambda u: u * poison, updates), state + 1

    return optax.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update)


def test_a_finite_loss_with_non_finite_updates_is_never_saved_as_good(tmp_path):
    task = AddingTask(length=6)
    model = task.make_model("lstm", 8, rngs=nnx.Rngs(1))
    with pytest.raises(
        NonFiniteLossError,
        match=r"the parameters are not finite after the update \(the "
        r"loss was [0-9.e-]+\) at step 4; the last good checkpoint, step 2",
    ):
        fit(
            model,
            optax.chain(optax.adam(1e-2), nan_update_at(4)),
            task,
            steps=6,
            batch_size=8,
            eval_every=0,
            out_dir=tmp_path,
            checkpoint_every=2,
            progress=False,
        )
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    assert checkpoints.all_steps() == [2]
    restored = task.make_model("lstm", 8, rngs=nnx.Rngs(5))
    checkpoints.restore(restored)
    assert all(np.isfinite(p).all() for p in params_of(restored))


def test_sharded_training_equals_single_device_training():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "train" / "sharded_fit.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cpu_process_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["devices"] == 4 and report["batch_devices"] == 4
    assert report["batch_shard_rows"] == [2, 2, 2, 2] and report["param_devices"] == 4
    assert report["sharded_loss"] == pytest.approx(report["single_loss"], rel=1e-5)
    assert report["max_param_difference"] < 1e-5 < report["params_moved"]


def test_run_writes_the_contract_files_and_load_run_restores_them(tmp_path):
    config = RunConfig(
        "temporal_order",
        {"min_length": 12, "max_length": 14},
        model="gru",
        hidden=4,
        steps=4,
        batch_size=8,
        eval_every=2,
        eval_batch_size=1024,
    )
    summary = run(config, tmp_path, progress=False)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "checkpoints",
    }
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["task"] == "temporal_order" and saved["model"] == "gru" and saved["steps"] == 4
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["metric"] == "accuracy" and summary["baseline"] == 0.5
    assert set(summary["gate_means"]) == {"layer0/forward/reset", "layer0/forward/update"}
    assert all(0 < m < 1 for m in summary["gate_means"].values())
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records if r["split"] == "valid"] == [
        (2, "valid"),
        (4, "valid"),
    ]
    loaded = load_run(tmp_path)
    assert loaded.config.hidden == 4 and loaded.task.name == "temporal_order"
    again = evaluate(loaded.model, loaded.task, "test", batch_size=1024)
    assert again == pytest.approx(summary["test"], rel=1e-6)
    _, trace = loaded.model(np.zeros((1, 5), np.int32), return_gates=True)
    assert sorted(trace.gates) == ["layer0/forward"]

    with pytest.raises(FileExistsError, match="already holds a run; pass resume=True"):
        run(config, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"differs from the saved run in \['hidden'\]"):
        run(config._replace(hidden=5), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "transformer"}, "model: unknown model 'transformer'; the models are"),
        ({"steps": 0}, "steps must be a positive int; got 0"),
        ({"hidden": -3}, "hidden must be a positive int; got -3"),
        ({"learning_rate": -1.0}, "learning_rate must be a positive number; got -1.0"),
        ({"batch_size": 2.0}, "batch_size must be a positive int; got 2.0"),
    ],
)
def test_bad_run_configs_are_named(changes, message):
    config = RunConfig("adding", {"length": 6}, **changes)
    with pytest.raises(ValueError, match=message):
        config.resolved(get_task("adding", length=6))


def test_bad_fit_arguments_are_named(tmp_path):
    task = get_task("adding", length=6)
    model = task.make_model("lstm", 4, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="tx must be an optax.GradientTransformation; got str"):
        fit(model, "adam", task, steps=1, batch_size=4)
    with pytest.raises(ValueError, match="steps must be a positive int; got 0"):
        fit(model, optax.sgd(0.1), task, steps=0, batch_size=4)
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        fit(model, optax.sgd(0.1), task, steps=1, batch_size=4, resume=True)
    with pytest.raises(FileNotFoundError, match="run_dir: no config.json"):
        load_run(tmp_path)
    assert make_train_step(task) is make_train_step(task)


def test_run_config_takes_the_task_defaults():
    copying = RunConfig("copying").resolved(get_task("copying"))
    assert (copying.model, copying.hidden, copying.options) == ("gru", 128, {"delay": 50})
    adding = RunConfig("adding", steps=7).resolved(get_task("adding"))
    assert (adding.model, adding.steps, adding.checkpoint_every) == ("lstm", 7, 250)


def records_of(out_dir):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["split"], r["loss"]) for r in map(json.loads, lines)]


def test_after_a_crash_and_resume_metrics_equal_the_uninterrupted_runs(tmp_path):
    settings = dict(steps=8, checkpoint_every=4, log_every=3)
    tiny_fit(AddingTask(length=6), tmp_path / "whole", **settings)
    # The process dies (an error, so no save on Ctrl-C) as batch 6 is made.
    task = Interrupted(6, error=RuntimeError("the machine went down"), length=6)
    with pytest.raises(RuntimeError, match="went down"):
        tiny_fit(task, tmp_path / "cut", **settings)
    # Step 6 was logged, step 4 is the last checkpoint: resuming takes steps 5 and 6 again.
    assert [r[0] for r in records_of(tmp_path / "cut")] == [3, 6]
    task.at = None
    tiny_fit(task, tmp_path / "cut", resume=True, **settings)
    whole, cut = records_of(tmp_path / "whole"), records_of(tmp_path / "cut")
    assert [r[:2] for r in cut] == [(3, "train"), (6, "train"), (8, "train")]
    # Step 6's window (steps 4-6) and step 8's (6-8) span the resume: the window was saved.
    np.testing.assert_allclose([r[2] for r in cut], [r[2] for r in whole], rtol=1e-6)


def test_resume_without_a_checkpoint_or_below_the_saved_step_is_an_error(tmp_path):
    task = AddingTask(length=6)
    with pytest.raises(FileNotFoundError, match="resume: no checkpoint in .*nothing to resume"):
        tiny_fit(task, tmp_path, resume=True)
    assert not (tmp_path / "metrics.jsonl").exists()
    tiny_fit(task, tmp_path, steps=4)
    with pytest.raises(ValueError, match=r"steps: 3 is below step 4 of the checkpoint being"):
        tiny_fit(task, tmp_path, steps=3, resume=True)
    assert [r[0] for r in records_of(tmp_path)] == [1, 2, 3, 4]


def test_resume_step_continues_from_an_earlier_step_when_the_latest_is_corrupt(tmp_path):
    task = AddingTask(length=6)
    whole = tiny_fit(task, tmp_path / "whole", steps=6, checkpoint_every=2)
    tiny_fit(task, tmp_path / "cut", steps=6, checkpoint_every=2)
    kernel_files = sorted((tmp_path / "cut" / "checkpoints" / "6").rglob("d/*"))
    kernel_files[0].write_bytes(kernel_files[0].read_bytes()[:-1] + b"\0")
    with pytest.raises(CorruptCheckpointError, match=r"step 6 .* the earlier steps are \[2, 4\]"):
        tiny_fit(task, tmp_path / "cut", steps=6, resume=True)
    resumed = tiny_fit(task, tmp_path / "cut", steps=6, resume_step=4, checkpoint_every=2)
    for a, b in zip(params_of(whole), params_of(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in (tmp_path / "cut" / "discarded-checkpoints").iterdir()] == ["6"]
    assert Checkpointer(tmp_path / "cut" / "checkpoints").all_steps() == [2, 4, 6]


def test_a_run_that_failed_before_its_first_step_can_be_run_again(tmp_path, monkeypatch):
    config = RunConfig("adding", {"length": 6}, hidden=4, steps=2, batch_size=4, eval_every=0)

    def fail(*args, **kwargs):
        raise ValueError("batch_size 4 is not divisible by the 3 devices")

    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["gatenets.train.run"], "train_model", fail)
        with pytest.raises(ValueError, match="not divisible"):
            run(config, tmp_path, progress=False)
    assert (tmp_path / "config.json").exists()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint to resume; run without"):
        run(config, tmp_path, resume=True, progress=False)
    fixed = config._replace(batch_size=6)
    assert run(fixed, tmp_path, progress=False)["steps"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 6


def test_a_refused_resume_leaves_config_json_and_summary_is_strict_json(tmp_path):
    config = RunConfig("adding", {"length": 6}, hidden=4, steps=3, batch_size=4, eval_every=0)
    run(config, tmp_path, progress=False)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="steps: 2 is below step 3"):
        run(config._replace(steps=2), tmp_path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 1 .* the steps are \[3\]"):
        run(config._replace(steps=5), tmp_path, resume_step=1, progress=False)
    assert (tmp_path / "config.json").read_text() == before
    write_json(tmp_path / "summary.json", {"loss": float("nan"), "valid": {"x": [float("inf")]}})
    text = (tmp_path / "summary.json").read_text()
    assert json.loads(text, parse_constant=pytest.fail) == {"loss": None, "valid": {"x": [None]}}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_the_library_writes_follow_the_umask(tmp_path, umask):
    config = RunConfig("adding", {"length": 6}, hidden=4, steps=1, batch_size=4, eval_every=0)
    previous = os.umask(umask)
    try:
        run(config, tmp_path, progress=False)
    finally:
        os.umask(previous)
    for path in [tmp_path / "config.json", tmp_path / "summary.json", tmp_path / "metrics.jsonl"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    manifest = next((tmp_path / "checkpoints").rglob("gatenets-manifest.json"))
    assert manifest.stat().st_mode & 0o777 == 0o666 & ~umask
