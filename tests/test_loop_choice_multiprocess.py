"""Under ``jax.distributed`` every process takes process 0's measured loop choice, whatever
its own measurement or cache says (they must all compile the same program)."""

import contextlib
import json
import socket
import subprocess
import sys

from helpers import ROOT, cpu_process_env

WORKER = ROOT / "tests" / "loop_choice_worker.py"


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report_of(stdout: str) -> list:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("REPORT "))[7:])


def test_every_process_takes_process_zeros_choice(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    processes = []
    for process_id, winner in ((0, "fused"), (1, "scan")):
        env = {**cpu_process_env(), "GATENETS_CACHE_DIR": str(tmp_path / f"cache{process_id}")}
        with open(tmp_path / f"{process_id}.out", "w") as out:
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), str(process_id), coordinator, winner],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    env=env,
                )
            )
    try:
        for process in processes:
            process.wait(timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    outputs = [(tmp_path / f"{k}.out").read_text() for k in range(2)]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert [report_of(text) for text in outputs] == [["fused"], ["fused"]]
