"""The README's example and the command line, at tiny sizes."""

import pathlib
import subprocess
import sys

import pytest
from helpers import load_example

import gatenets
from gatenets.cli import main

ROOT = pathlib.Path(__file__).parent.parent


def test_quickstart_loss_falls_and_gates_are_summarised(capsys):
    first, last, gate_means = load_example("quickstart").main(
        steps=40, length=8, batch=16, hidden=8
    )
    assert last < first
    assert set(gate_means) == {
        "layer0/forward/input",
        "layer0/forward/forget",
        "layer0/forward/output",
    }
    assert all(0.0 < m < 1.0 for m in gate_means.values())
    assert "gate summary" in capsys.readouterr().out


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gatenets {gatenets.__version__}"
    assert main([]) == 0
    assert "usage: gatenets" in capsys.readouterr().out


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "gatenets", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: gatenets" in out.stdout and "--version" in out.stdout


def test_readme_code_runs():
    """Every ```python block of the README, in order, as one script: the tour stays true."""
    import importlib.util
    import re

    for package in ("torch", "keras", "equinox"):  # the tour moves models in from them
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"the README's tour uses {package}, which is not installed")

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    exec(compile("\n".join(blocks), "README.md", "exec"), {})


def test_readme_run_commands_parse_and_name_registered_models():
    """Every `gatenets run …` command the README shows is one the CLI accepts, on a real task
    and a real model: the results table's commands keep reproducing their rows."""
    import re
    import shlex

    from gatenets.cli import build_parser
    from gatenets.tasks import list_models, list_tasks

    # Lower-case task names only: `gatenets run TASK` is a template, not a command.
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"`(gatenets run (?:--list|[a-z][a-z0-9_]*)[^`]*)`", text)
    assert len(commands) >= 2 * len(list_models())
    models = set()
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert args.list or args.task in list_tasks(), command
        assert args.model is None or args.model in list_models(), command
        models.add(args.model or "lstm")
    assert models >= set(list_models()), sorted(set(list_models()) - models)
