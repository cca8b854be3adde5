"""The environment variables gatenets reads, in one list, and a warning for a misspelled one.

A ``GATENETS_*`` variable that is not in :data:`KNOWN` is almost always a typo
(``GATENETS_NATIVE_THREAD=4``) that would otherwise be ignored without a word: importing
gatenets warns once about each, naming the closest known name.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping

KNOWN: dict[str, str] = {
    "GATENETS_NATIVE": "0 turns the native CPU kernels off (gatenets.kernels.native)",
    "GATENETS_NATIVE_BLAS": "which BLAS the native kernels link (gatenets.kernels.native)",
    "GATENETS_NATIVE_CACHE": "where the compiled native kernels are cached",
    "GATENETS_NATIVE_THREADS": "threads of the native kernels",
    "GATENETS_LOOP_TUNING": "0/off switches the measured loop choice off (gatenets.loop)",
    "GATENETS_CACHE_DIR": "where measured loop choices are cached (gatenets.loop)",
    "GATENETS_COORDINATOR_ADDRESS": "host:port of process 0 (gatenets run, several processes)",
    "GATENETS_NUM_PROCESSES": "how many processes take part (gatenets run)",
    "GATENETS_PROCESS_ID": "this process's index (gatenets run)",
    "GATENETS_CHROMIUM": "the Chromium the explorer's browser test drives (tests)",
    "GATENETS_JAX_CACHE": "JAX's compilation cache of the test suite (tests)",
    "GATENETS_SCREENSHOTS": "where the explorer's browser test saves a screenshot (tests)",
}
"""Every variable gatenets (or its test suite) reads, with what it does."""

_warned: set[str] = set()


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``(name, closest known name or None)`` for each ``GATENETS_*`` variable set in
    ``environ`` (the process environment by default) that gatenets does not read.

    Example:
      >>> from gatenets._environment import unknown_variables
      >>> unknown_variables({"GATENETS_NATIVE_THREAD": "4", "GATENETS_NATIVE": "0", "HOME": "/"})
      [('GATENETS_NATIVE_THREAD', 'GATENETS_NATIVE_THREADS')]
    """
    environ = os.environ if environ is None else environ
    found = []
    for name in sorted(environ):
        if name.startswith("GATENETS_") and name not in KNOWN:
            close = difflib.get_close_matches(name, KNOWN, n=1, cutoff=0.6)
            found.append((name, close[0] if close else None))
    return found


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> None:
    """Warns once per process about each unknown ``GATENETS_*`` variable, naming the
    closest known one."""
    for name, close in unknown_variables(environ):
        if name in _warned:
            continue
        _warned.add(name)
        hint = f"did you mean {close}?" if close else f"the known ones are {sorted(KNOWN)}."
        warnings.warn(
            f"environment variable {name} is not one gatenets reads, so it has no effect; {hint}",
            UserWarning,
            stacklevel=3,
        )
