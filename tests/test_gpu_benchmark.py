"""benchmarks/gpu.py off the GPU: its tolerance rule, its check run against the pure-JAX
stand-in for cuDNN, and its refusal, with a JSON note, where there is no GPU."""

import json
import subprocess

import jax
import numpy as np
import pytest
from helpers import ROOT, load_script

from gatenets.kernels import cudnn


@pytest.fixture(scope="module")
def gpu():
    return load_script(ROOT / "benchmarks" / "gpu.py", "gpu_benchmark")


def test_tolerance_follows_the_matmul_precision(gpu):
    # JAX's default on NVIDIA GPUs is TF32, whichever name says "default".
    for name in (None, "default", "bfloat16", "fastest", "high", "tensorfloat32"):
        assert gpu.check_tolerance(name) == ("tensorfloat32", 8 * 2.0**-11), name
    for name in ("highest", "float32", "F32_F32_F32"):
        assert gpu.check_tolerance(name) == ("float32", 64 * 2.0**-24), name
    assert gpu.check_tolerance("BF16_BF16_F32") == ("bfloat16", 8 * 2.0**-8)
    form, tolerance = gpu.check_tolerance("F8_F8_F32")
    assert "unknown precision 'F8_F8_F32'" in form and tolerance == 8 * 2.0**-8


def test_differences_are_relative_to_the_largest_magnitude(gpu):
    assert gpu.relative_difference([10.0, -20.0], [10.0, -20.002]) == pytest.approx(0.002 / 20.002)
    assert gpu.relative_difference([1e-3], [0.0]) == pytest.approx(1e-3)
    assert gpu.relative_difference(np.zeros((0,)), np.zeros((0,))) == 0.0


def test_check_against_the_stand_in_for_cudnn_meets_the_float32_bound(gpu, monkeypatch):
    monkeypatch.setattr(cudnn, "available", lambda: True)
    monkeypatch.setattr(cudnn, "lstm_call", cudnn.reference_lstm_call)
    difference = gpu.check_cudnn_equals_fused()
    assert 0.0 < difference <= gpu.check_tolerance("highest")[1]


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="a GPU is here: gpu.py runs for real")
def test_without_a_gpu_it_stops_and_says_why_in_the_json(gpu, tmp_path, capsys):
    path = tmp_path / "gpu.json"
    assert gpu.main(["--quick", "--precision", "highest", "--json", str(path)]) == 2
    assert "not a GPU" in capsys.readouterr().err
    written = json.loads(path.read_text())
    assert written["rows"] == []
    environment = written["environment"]
    assert environment["skipped"] == f"JAX's backend is {jax.default_backend()!r}, not a GPU"
    assert environment["matmul_precision"] == "highest"
    assert environment["check_tolerance"] == 64 * 2.0**-24


def test_gpu_check_script_parses_and_names_every_step():
    """The one GPU command is run where CI cannot go: at least its shell must parse, and each
    of its steps must be there (a syntax error would cost a whole GPU lease)."""
    script = ROOT / "benchmarks" / "gpu_check.sh"
    parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    text = script.read_text()
    steps = ("-m pytest", "--check-only", "bench lstm", "bench gru", "command-buffers", "--unroll")
    for step in steps:
        assert step in text, step
