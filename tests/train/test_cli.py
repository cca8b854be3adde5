"""``gatenets run`` at tiny settings, and its errors."""

import json
import os
import re

import pytest

from gatenets.cli import main
from gatenets.registry import FAMILIES
from gatenets.tasks import list_tasks
from gatenets.train import NonFiniteLossError, evaluate, load_run


def test_run_list(capsys):
    assert main(["run", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    tasks, models = lines.index("tasks:"), lines.index("models (--model):")
    assert [line.split()[0] for line in lines[tasks + 1 : models]] == list_tasks()
    assert [line.split()[0] for line in lines[models + 1 :]] == [*FAMILIES, "attention"]
    assert "LSTMCell" in lines[models + 1] and "GatedAttention" in lines[-1]


def test_run_help_names_every_model(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"one of {', '.join([*FAMILIES, 'attention'])}" in help_text


def test_run_writes_a_run_and_resumes_it(tmp_path, capsys):
    args = [
        "run",
        "adding",
        "-o",
        "length=6",
        "--hidden",
        "4",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main([*args, "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "baseline mse 0.1667" in out and "layer0/forward/forget" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["options"] == {"length": 6}

    assert main([*args, "--steps", "3"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*args, "--steps", "3", "--resume"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 2, 3, 3]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "sorting"], "unknown task 'sorting'"),
        (
            ["run", "adding", "--model", "transformer"],
            "unknown model 'transformer'; the models are ['lstm', 'gru'",
        ),
        (["run", "adding", "--steps", "0"], "argument --steps: expected an integer >= 1; got 0"),
        (["run", "adding", "--lr", "inf"], "argument --lr: expected a finite number > 0"),
        (["run", "adding", "--lr", "nan"], "argument --lr: expected a finite number > 0"),
        (["run", "adding", "-o", "length=0"], "length must be an int >= 2; got 0"),
        (["run", "charlm", "--text", "/no/such/file.txt"], "text_file: no such file"),
        (["run"], "give a TASK or --list"),
    ],
)
def test_run_errors_name_the_argument(argv, message, capsys):
    try:
        status = main(argv)
    except SystemExit as exit_info:  # argparse's own refusal of a flag's value
        status = exit_info.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_run_with_an_empty_corpus(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["run", "charlm", "--text", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err


TINY = ["adding", "-o", "length=6", "--hidden", "4", "--batch-size", "4", "--no-progress"]


def one_line_error(capsys, prefix="gatenets run: "):
    """The single line a failed command printed on stderr."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    return lines[0]


def test_a_diverging_run_fails_with_one_line_and_exit_1(tmp_path, capsys):
    argv = ["run", *TINY, "--steps", "3", "--lr", "1e30", "--out", str(tmp_path / "run")]
    assert main(argv) == 1
    err = one_line_error(capsys)
    assert err.startswith("gatenets run: training stopped: the ")
    assert err.endswith(
        "Try a lower learning rate or gradient clipping. (--debug shows the traceback)"
    )
    with pytest.raises(NonFiniteLossError):
        main([*argv[:-1], str(tmp_path / "again"), "--debug"])


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_out_that_cannot_be_a_directory_is_refused_before_any_work(tmp_path, capsys, where):
    file = tmp_path / "file"
    file.write_text("x")
    out = file if where == "a file" else file / "run"
    assert main(["run", *TINY, "--steps", "1", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"--out {str(out)!r}" in err and "choose" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write a read-only directory")
def test_a_read_only_out_is_refused_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["run", *TINY, "--steps", "1", "--out", str(locked / "run")]) == 2
    assert "is not writable" in one_line_error(capsys)


def test_a_binary_text_file_is_named(tmp_path, capsys):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"abc\xff\xfe\x00")
    assert main(["run", "charlm", "--text", str(binary), "--out", str(tmp_path / "r")]) == 2
    err = one_line_error(capsys)
    assert f"--text {str(binary)!r} is not UTF-8 text (byte 0xff at offset 3)" in err


def test_a_corrupt_checkpoint_fails_naming_it_and_resume_step_recovers(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", *TINY, "--eval-every", "1", "--out", str(out)]
    assert main([*argv, "--steps", "2"]) == 0
    victim = max((out / "checkpoints" / "2").rglob("d/*"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-7])
    capsys.readouterr()
    assert main([*argv, "--steps", "3", "--resume"]) == 1
    err = one_line_error(capsys)
    assert re.search(r"checkpoint step 2 in .* is corrupt: file '(model|optimizer)/[^']+' ", err)
    assert "--resume-step N); the earlier steps are [1]" in err
    assert main(["inspect", "--run", str(out), "--out", str(tmp_path / "report")]) == 1
    assert "checkpoint step 2 in" in one_line_error(capsys, "gatenets inspect: ")
    assert main([*argv, "--steps", "3", "--resume-step", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_resume_with_nothing_to_resume_is_a_usage_error(tmp_path, capsys):
    assert main(["run", *TINY, "--steps", "1", "--out", str(tmp_path), "--resume"]) == 2
    err = one_line_error(capsys)
    assert "holds no checkpoint to resume; run without resume (--resume)" in err


def test_run_trains_the_attention_model(tmp_path, capsys):
    argv = ["run", "temporal_order", "--model", "attention", "--steps", "2", "--hidden", "4"]
    argv += ["-o", "min_length=10", "-o", "max_length=11", "--batch-size", "4", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert "block0/attention/output" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert summary["model"] == config["model"] == "attention" and summary["steps"] == 2
    assert set(summary["gate_means"]) == {"block0/attention/output", "block0/feed_forward/hidden"}
    assert all(0.0 < value < 1.0 for value in summary["gate_means"].values())
    # The checkpoint reloads into the same model: its test metric is the summary's.
    loaded = load_run(tmp_path)
    assert loaded.model.transformer is not None and loaded.model.rnn is None
    test = evaluate(loaded.model, loaded.task, "test", batch_size=config["eval_batch_size"])
    assert test[summary["metric"]] == pytest.approx(summary["value"], rel=1e-5)
