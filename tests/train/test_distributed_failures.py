"""Several processes: a busy coordinator port and an absent coordinator fail at once (or
within the stated timeout) with one line naming the address, instead of JAX's silent wait
of minutes or its abort."""

import contextlib
import socket
import time

from gatenets.cli import main

TINY = ["run", "adding", "-o", "length=6", "--hidden", "4", "--batch-size", "4", "--steps", "1"]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_busy_coordinator_port_is_refused_naming_it(tmp_path, capsys):
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id"]
        assert main([*TINY, *flags, "0", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"port {port} is already in use on this machine" in err
    assert not (tmp_path / "run").exists()


def test_an_absent_coordinator_fails_within_the_timeout_naming_it(tmp_path, capsys):
    address = f"127.0.0.1:{free_port()}"
    flags = ["--coordinator", address, "--num-processes", "2", "--process-id", "1"]
    began = time.monotonic()
    status = main([*TINY, *flags, "--distributed-timeout", "1", "--out", str(tmp_path / "r")])
    assert status == 1 and time.monotonic() - began < 10
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"coordinator_address {address!r}: no coordinator answered within 1 s" in err


def test_a_malformed_coordinator_address_names_it(capsys):
    flags = ["--coordinator", "host-without-port", "--num-processes", "2", "--process-id", "1"]
    assert main([*TINY, *flags]) == 2
    assert "coordinator_address must be HOST:PORT" in capsys.readouterr().err
