"""Two processes on this machine, two CPU devices each, joined by ``jax.distributed`` (gloo):
data-parallel training, checkpointed and resumed across them, equals one process over the same
global batches; every process writes its part of a checkpoint, process 0 the metadata and the
logs."""

import contextlib
import json
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import cpu_process_env

ROOT = pathlib.Path(__file__).parent.parent.parent
WORKER = ROOT / "tests" / "train" / "multiprocess_fit.py"
TIMEOUT_SECONDS = 45


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_all(commands: dict[str, list[str]], logs: pathlib.Path) -> dict[str, tuple[int, str, str]]:
    """Starts every command at once and waits for all of them, ``TIMEOUT_SECONDS`` in all;
    whatever still runs then, or after a failure, is killed. Returns ``{name: (returncode,
    stdout, stderr)}``."""
    env = cpu_process_env()
    processes = {}
    try:
        for name, command in commands.items():
            # Files, not pipes: a full pipe would block a worker the test is not reading.
            with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
                processes[name] = subprocess.Popen(
                    [sys.executable, str(WORKER), *command],
                    stdout=out,
                    stderr=err,
                    cwd=ROOT,
                    env=env,
                )
        deadline = time.monotonic() + TIMEOUT_SECONDS
        for process in processes.values():
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return {
        name: (
            process.returncode,
            (logs / f"{name}.out").read_text(),
            (logs / f"{name}.err").read_text(),
        )
        for name, process in processes.items()
    }


def report_of(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("REPORT "))[7:])


def test_two_processes_train_checkpoint_and_resume_like_one(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    shared, single = tmp_path / "two_processes", tmp_path / "one_process"
    results = run_all(
        {
            "process_0": [str(shared), "2", "0", coordinator, "resume"],
            "process_1": [str(shared), "2", "1", coordinator, "resume"],
            "reference": [str(single), "1", "0", "-", "straight"],
        },
        tmp_path,
    )
    for name, (returncode, _, stderr) in results.items():
        assert returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
    reports = {name: report_of(stdout) for name, (_, stdout, _) in results.items()}
    for index in (0, 1):
        report = reports[f"process_{index}"]
        assert report["process_index"] == index and report["process_count"] == 2
        assert report["devices"] == 4 and report["local_devices"] == 2
        assert report["batch_rows_here"] == 4 and report["step"] == 4
    assert reports["reference"]["devices"] == 4 and reports["reference"]["process_count"] == 1

    # Resumed at step 2 across two processes, equal to four uninterrupted steps in one.
    two, one = np.load(shared / "params.npz"), np.load(single / "params.npz")
    assert sorted(two) == sorted(one)
    assert max(float(np.max(np.abs(two[k] - one[k]))) for k in one) < 1e-6
    assert reports["process_0"]["moved"] > 1e-3

    # orbax's multi-process layout: each process wrote its part, one wrote the metadata.
    checkpoint = shared / "checkpoints" / "4"
    assert (checkpoint / "_CHECKPOINT_METADATA").is_file()
    for item in ("model", "optimizer"):
        assert (checkpoint / item / "_METADATA").is_file()
        assert {p.name for p in (checkpoint / item / "array_metadatas").iterdir()} == {
            "process_0",
            "process_1",
        }
    assert sorted(p.name for p in (shared / "checkpoints").iterdir()) == ["2", "4"]

    # Only process 0 logged: one record per step, not one per process; one progress bar.
    records = [json.loads(line) for line in (shared / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["loss"] == reports["process_0"]["train_loss"]
    assert "adding:" in results["process_0"][2] and "adding:" not in results["process_1"][2]


def test_settings_come_from_flags_then_environment_and_are_checked(monkeypatch):
    from gatenets.train.distributed import DistributedSettings, distributed_settings

    environ = {
        "GATENETS_COORDINATOR_ADDRESS": "host0:1234",
        "GATENETS_NUM_PROCESSES": "4",
        "GATENETS_PROCESS_ID": "3",
    }
    assert distributed_settings(environ=environ) == DistributedSettings("host0:1234", 4, 3)
    assert distributed_settings("other:1", None, 0, environ=environ) == DistributedSettings(
        "other:1", 4, 0
    )
    assert distributed_settings(environ={}) == DistributedSettings()
    with pytest.raises(ValueError, match="GATENETS_NUM_PROCESSES must be an integer; got 'two'"):
        distributed_settings(environ={"GATENETS_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match="process_id must be below num_processes = 2; got 2"):
        distributed_settings(num_processes=2, process_id=2, environ={})
    with pytest.raises(ValueError, match="num_processes must be an int >= 1; got 0"):
        distributed_settings(num_processes=0, environ={})


def test_cli_names_a_bad_process_flag_before_starting_anything(capsys, monkeypatch):
    from gatenets.cli import main

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    args = ["run", "adding", "--num-processes", "2", "--process-id", "2", "--no-progress"]
    assert main(args) == 2
    assert "process_id must be below num_processes = 2; got 2" in capsys.readouterr().err
    assert calls == []


def test_cli_passes_its_flags_to_jax_distributed(capsys, monkeypatch):
    from gatenets.cli import main
    from gatenets.train import distributed

    calls, checked = [], []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(
        distributed, "check_coordinator", lambda settings, timeout: checked.append(timeout)
    )
    # An unknown model stops the run right after initialisation, at the config check.
    args = ["run", "adding", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"]
    assert main([*args, "--model", "nope", "--distributed-timeout", "30"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert calls == [
        {
            "coordinator_address": "h:1",
            "num_processes": 2,
            "process_id": 1,
            "initialization_timeout": 30,
        }
    ]
    assert checked == [30.0]
    calls.clear()
    # --distributed alone leaves everything to JAX's detection (SLURM, TPU pods, …).
    assert main(["run", "adding", "--distributed", "--model", "nope"]) == 2
    assert calls == [
        {
            "coordinator_address": None,
            "num_processes": None,
            "process_id": None,
            "initialization_timeout": 120,
        }
    ]
