"""``gatenets run --tensorboard DIR`` as TensorBoard users expect: each run in its own folder
``DIR/<run name>`` (a second run into the same DIR no longer hides the first), its
configuration as hparams, the loss at the steps ``--log-every`` says, and the gate histogram
picture as an image at each watch step. The event files are read back here record by record."""

from __future__ import annotations

import contextlib
import io
import struct

import pytest

pytest.importorskip("tensorboardX")

from tensorboardX.proto import event_pb2  # noqa: E402

from gatenets.cli import main  # noqa: E402


def read_events(folder):
    """Every event in the TFRecord files of ``folder``."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents*")):
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


def summaries(events):
    """``{tag: [(step, value or kind)]}`` of the events' summary values."""
    found = {}
    for event in events:
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            item = value.simple_value if kind == "simple_value" else kind
            found.setdefault(value.tag, []).append((event.step, item))
    return found


def _run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    assert code == 0, out.getvalue() + err.getvalue()


def test_each_run_in_its_own_folder_with_hparams_loss_and_images(tmp_path):
    board = tmp_path / "tb"
    common = ["-o", "length=8", "--steps", "3", "--hidden", "4", "--batch-size", "4",
              "--eval-every", "0", "--no-progress", "--tensorboard", str(board)]  # fmt: skip
    _run("run", "adding", "--model", "lstm", "--out", str(tmp_path / "adding-lstm"),
         "--log-every", "1", "--watch-gates", "2", *common)  # fmt: skip
    _run("run", "adding", "--model", "gru", "--out", str(tmp_path / "adding-gru"), *common)
    assert sorted(p.name for p in board.iterdir()) == ["adding-gru", "adding-lstm"]
    assert not list(board.glob("events.out.tfevents*"))
    lstm = summaries(read_events(board / "adding-lstm"))
    # --log-every 1: the loss of every step, and the note saying so.
    assert [step for step, _ in lstm["train/loss"]] == [1, 2, 3]
    assert any(tag.startswith("about/train_loss") for tag in lstm)
    # The configuration as hparams, in the run's own folder.
    assert "_hparams_/experiment" in lstm and "_hparams_/session_start_info" in lstm
    experiment = next(
        e for e in read_events(board / "adding-lstm")
        if any(v.tag == "_hparams_/session_start_info" for v in e.summary.value)
    )  # fmt: skip
    content = experiment.summary.value[0].metadata.plugin_data.content
    assert b"lstm" in content and b"hidden" in content
    # The histogram picture at each watch step (every 2 steps, and the last).
    assert lstm["gates/histograms"] == [(2, "image"), (3, "image")]
    gru = summaries(read_events(board / "adding-gru"))
    # The default: the mean of each 50 steps, said; no picture without --watch-gates.
    assert "gates/histograms" not in gru and "train/loss" in gru
    # gatenets plot takes both runs: one loss axis with a line per run, then the watched
    # run's gate saturation.
    picture = tmp_path / "compare.png"
    _run("plot", str(tmp_path / "adding-lstm"), str(tmp_path / "adding-gru"), "--out", str(picture))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from gatenets.train.watch import plot_runs, read_metrics

    figure = plot_runs({n: read_metrics(tmp_path / n) for n in ("adding-lstm", "adding-gru")})
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["adding-lstm train loss", "adding-gru train loss"]
    assert len(figure.axes) == 2 and figure.axes[1].get_title().startswith("adding-lstm")
