"""Every file in examples/ runs the way a user runs it: ``python examples/NAME.py`` from
another directory, as a script (its folder first on ``sys.path``, so a script named like a
package it imports would shadow that package), at tiny settings given as flags."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).parent.parent
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))

# Tiny settings for each example, through its own flags; a new example adds a row here.
TINY = {
    "adding.py": ["--length", "6", "--hidden", "4", "--steps", "2", "--batch", "8"],
    "attention_sink.py": [
        "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--d-model", "8",
        "--num-heads", "2", "--num-layers", "1", "--warmup-steps", "1", "--eval-batches", "1",
        "--log-every", "1", "--data-chars", "20000", "--gates", "none",
    ],
    "charlm.py": ["--seq-len", "16", "--hidden", "8", "--steps", "2", "--batch", "4"],
    "copying.py": ["--delay", "3", "--hidden", "8", "--steps", "2", "--batch", "8"],
    "inspect_gates.py": [
        "--steps", "2", "--hidden", "4", "--length", "16", "--batch", "2", "--batches", "1",
        "--out", "report",
    ],
    "min_rnn_adding.py": [
        "--steps", "2", "--length", "6", "--batch", "4", "--hidden", "4", "--layers", "1",
        "--models", "mingru",
    ],
    "mnist1d_classify.py": [
        "--hidden", "4", "--steps", "2", "--batch", "8", "--num-samples", "500",
    ],
    "quickstart.py": ["--steps", "2", "--length", "6", "--batch", "4", "--hidden", "4"],
    "temporal_order.py": [
        "--min-length", "12", "--max-length", "14", "--hidden", "4", "--steps", "2",
        "--batch", "8",
    ],
}  # fmt: skip


# What each prints that shows it did its job (its metric against the task's baseline).
PRINTS = {
    "adding.py": "test MSE",
    "attention_sink.py": "",
    "charlm.py": "--- sample, temperature",
    "copying.py": "memoryless baseline",
    "inspect_gates.py": "",
    "min_rnn_adding.py": "",
    "mnist1d_classify.py": "published GRU 0.91",
    "quickstart.py": "gate summary",
    "temporal_order.py": "Brier",
}


def test_every_example_has_tiny_settings():
    assert sorted(TINY) == sorted(PRINTS) == EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_as_a_script(name, tmp_path):
    if name == "mnist1d_classify.py":
        pytest.importorskip("mnist1d")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        # The suite's compile cache: a rerun does not compile the examples again.
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *TINY[name]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"python examples/{name} failed:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"python examples/{name} printed nothing"
    assert PRINTS[name] in done.stdout, done.stdout[-2000:]
