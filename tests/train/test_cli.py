"""``gatenets run`` at tiny settings, and its errors."""

import json

import pytest

from gatenets.cli import main
from gatenets.registry import FAMILIES
from gatenets.tasks import list_tasks
from gatenets.train import evaluate, load_run


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
        (["run", "adding", "--steps", "0"], "steps must be an int >= 1; got 0"),
        (["run", "adding", "-o", "length=0"], "length must be an int >= 2; got 0"),
        (["run", "charlm", "--text", "/no/such/file.txt"], "text_file: no such file"),
        (["run"], "give a TASK or --list"),
    ],
)
def test_run_errors_name_the_argument(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_run_with_an_empty_corpus(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["run", "charlm", "--text", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err


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
