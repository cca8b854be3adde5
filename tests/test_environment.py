"""A misspelled GATENETS_* variable is warned about once, naming the close match; the list
of known variables is every one the code reads."""

import os
import pathlib
import re
import subprocess
import sys

from gatenets._environment import KNOWN

ROOT = pathlib.Path(__file__).parent.parent


def test_a_misspelled_variable_is_warned_once_naming_the_close_match():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GATENETS_NATIVE_THREAD": "4"}
    done = subprocess.run(
        [sys.executable, "-c", "import gatenets, importlib; importlib.reload(gatenets)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    said = [line for line in done.stderr.splitlines() if "GATENETS_NATIVE_THREAD " in line]
    assert len(said) == 1, done.stderr
    assert "did you mean GATENETS_NATIVE_THREADS?" in said[0]


def test_known_variables_are_the_ones_the_code_reads():
    read = set()
    for folder in ("gatenets", "tests", "benchmarks", "examples", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ""):
                text = path.read_text(errors="replace")
                read |= set(re.findall(r"[\"'](GATENETS_[A-Z0-9_]+)[\"']", text))
    read -= {"GATENETS_NATIVE_THREAD"}  # the misspelling of the test above
    assert read <= set(KNOWN), sorted(read - set(KNOWN))
    assert not set(KNOWN) - read, sorted(set(KNOWN) - read)
