"""Gate statistics during training: the ``"gates"`` records of ``fit(gate_stats_every=N)``
equal the statistics of the trained model on the probe batch, TensorBoard receives the same
numbers, and ``gatenets run --watch-gates`` / ``gatenets plot`` work end to end."""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np
import optax
import pytest
from flax import nnx

from gatenets.cli import main
from gatenets.inspect import gate_statistics
from gatenets.inspect.statistics import run_with_gates
from gatenets.tasks import get_task
from gatenets.train import Schedule, fit, fit_hooks, plot_training, read_metrics
from gatenets.train.watch import PROBE_BATCH_SIZE


def read_events(logdir: pathlib.Path) -> list:
    """Every ``Event`` proto in the event files of ``logdir`` (TFRecord framing: length,
    its CRC, the record, its CRC)."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(record)
            events.append(event)
    return events


@pytest.fixture(scope="module")
def watched_fit(tmp_path_factory):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (.[dev])")
    out = tmp_path_factory.mktemp("watched")
    task = get_task("adding", length=8)
    model = task.make_model("lstm", 6, rngs=nnx.Rngs(0))
    fit(
        model,
        optax.adam(1e-2),
        task,
        steps=4,
        batch_size=8,
        eval_every=0,
        eval_batch_size=64,
        log_every=2,
        out_dir=out,
        gate_stats_every=2,
        tensorboard_dir=out / "tb",
        progress=False,
    )
    return out, task, model


def test_gate_records_equal_the_statistics_of_the_model(watched_fit):
    out, task, model = watched_fit
    records = read_metrics(out)
    gates = [r for r in records if r["split"] == "gates"]
    assert [r["step"] for r in gates] == [2, 4]
    # The last record describes the trained model on the first validation batch.
    probe = next(task.batches("valid", PROBE_BATCH_SIZE, seed=0))
    model.eval()
    _, trace = run_with_gates(model, probe.inputs, probe.mask)
    model.train()
    stats = gate_statistics(trace)
    mask = np.asarray(trace.mask)
    assert list(gates[-1]["gates"]) == list(stats)
    np.testing.assert_allclose(gates[-1]["bin_edges"], np.linspace(0, 1, 21))
    assert (gates[-1]["left"], gates[-1]["right"]) == (0.1, 0.9)
    for name, s in stats.items():
        got = gates[-1]["gates"][name]
        values = np.asarray(trace.flat()[name])[mask]
        np.testing.assert_allclose(got["mean"], values.mean(), rtol=1e-5)
        assert (got["min"], got["max"]) == (values.min(), values.max())
        np.testing.assert_allclose(got["left_saturated"], (values < 0.1).mean(), rtol=1e-12)
        np.testing.assert_allclose(got["right_saturated"], (values > 0.9).mean(), rtol=1e-12)
        assert got["histogram"] == s.histogram.sum(axis=0).tolist()
        assert got["count"] == values.size == sum(got["histogram"])
        np.testing.assert_allclose(
            got["sum_squares"], np.square(values.astype(np.float64)).sum(), rtol=1e-5
        )
    # The loss records are still there, unchanged in form.
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]


def test_tensorboard_holds_the_same_numbers(watched_fit):
    out, _, _ = watched_fit
    last = [r for r in read_metrics(out) if r["split"] == "gates"][-1]
    scalars, histograms = {}, {}
    for event in read_events(out / "tb"):
        for value in event.summary.value:
            if value.HasField("histo"):
                histograms[(value.tag, event.step)] = value.histo
            else:
                scalars[(value.tag, event.step)] = value.simple_value
    assert ("train/loss", 4) in scalars
    for name, gate in last["gates"].items():
        for field in ("mean", "left_saturated", "right_saturated"):
            assert scalars[(f"gates/{name}/{field}", 4)] == pytest.approx(gate[field], rel=1e-6)
        histo = histograms[(f"gates/{name}", 4)]
        assert list(histo.bucket) == gate["histogram"]
        assert histo.num == gate["count"]


def test_gate_stats_every_is_checked():
    task = get_task("adding", length=8)
    model = task.make_model("lstm", 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="gate_stats_every"):
        fit(model, optax.adam(1e-2), task, steps=1, batch_size=2, gate_stats_every=-1)


def test_plot_training_draws_the_records(watched_fit):
    out, _, _ = watched_fit
    records = read_metrics(out)
    fig = plot_training(records)
    loss_ax, gate_ax = fig.axes
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
    np.testing.assert_allclose(np.stack(loss_ax.lines[0].get_data(), 1), train)
    first = next(iter([r for r in records if r["split"] == "gates"][0]["gates"]))
    right = [r["gates"][first]["right_saturated"] for r in records if r["split"] == "gates"]
    np.testing.assert_allclose(gate_ax.lines[0].get_ydata(), right)


def test_run_watch_gates_then_plot(tmp_path, capsys):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (.[dev])")
    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            "adding",
            "--option",
            "length=6",
            "--hidden",
            "4",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--eval-every",
            "0",
            "--watch-gates",
            "1",
            "--tensorboard",
            str(tmp_path / "tb"),
            "--out",
            str(run_dir),
            "--no-progress",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "gates"] == [1, 2]
    # One folder per run, named as the run directory.
    assert list(tmp_path.joinpath("tb", run_dir.name).glob("events.out.tfevents.*"))
    assert main(["plot", str(run_dir)]) == 0
    assert f"wrote {run_dir / 'training.png'}" in capsys.readouterr().out
    import matplotlib.image

    image = matplotlib.image.imread(run_dir / "training.png")
    assert image.shape[0] > 300 and image[..., :3].std() > 0.01
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_fit_hooks_add_the_watch_last(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (.[dev])")
    task = get_task("adding", length=6)
    hooks = fit_hooks(
        "model",
        task,
        steps=10,
        eval_batch_size=8,
        gate_stats_every=5,
        tensorboard_dir=tmp_path / "tb",
        progress=False,
    )
    assert type(hooks.gate_stats).__name__ == "GateStatsHook"
    assert hooks.gate_stats.schedule == Schedule(5, 10)
    # The probe is the first validation batch, no larger than eval_batch_size.
    first = next(task.batches("valid", 8, seed=0))
    np.testing.assert_array_equal(hooks.gate_stats.batch.inputs, first.inputs)
    assert [type(h).__name__ for h in hooks.in_order()][-2:] == [
        "GateStatsHook",
        "TensorBoardWriter",
    ]
    for hook in hooks.in_order():
        hook.close()
