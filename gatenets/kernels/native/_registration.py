"""Loading the built library, registering its handlers as XLA FFI targets, and its threads."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import threading

import jax

from gatenets.kernels.native import _build

# The FFI target names carry a hash of the source: a program that JAX's persistent compilation
# cache kept from an older version of the handlers (other arguments or attributes) then misses
# the cache instead of calling handlers that no longer match it.
_VERSION = (
    hashlib.sha256(_build.SOURCE.read_bytes()).hexdigest()[:12]
    if _build.SOURCE.exists()
    else "none"
)

_SYMBOLS = {
    "lstm_forward": "GatenetsLstmForward",
    "lstm_backward": "GatenetsLstmBackward",
    "gru_forward": "GatenetsGruForward",
    "gru_backward": "GatenetsGruBackward",
}

_lock = threading.Lock()
# "ok": bool once tried; "reason": why not; "library": the loaded ctypes.CDLL; "blas": its BLAS.
_state: dict[str, object] = {}


def target(name: str) -> str:
    """The registered FFI target name of handler ``name`` (``"lstm_forward"``, …)."""
    return f"gatenets_{name}_{_VERSION}"


def unavailable_reason() -> str:
    """Why the native kernels cannot be used (empty while available or untried)."""
    return str(_state.get("reason", ""))


def available() -> bool:
    """Whether the native kernels can run here; builds and registers them on the first call.

    On False, :func:`unavailable_reason` says why (no compiler, no BLAS, a compile error,
    ``GATENETS_NATIVE=0``).
    """
    with _lock:
        if "ok" not in _state:
            _state.update(_load())
        return bool(_state["ok"])


def _load() -> dict[str, object]:
    if os.environ.get("GATENETS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return {"ok": False, "reason": "disabled by the environment variable GATENETS_NATIVE"}
    try:
        built = _build.build()
        try:
            library = ctypes.CDLL(str(built.path))
        finally:
            # A loaded library stays mapped after its file is removed.
            if built.temporary:
                shutil.rmtree(built.path.parent, ignore_errors=True)
        for name, symbol in _SYMBOLS.items():
            handler = jax.ffi.pycapsule(getattr(library, symbol))
            jax.ffi.register_ffi_target(target(name), handler, platform="cpu")
        _configure_threads(library, built.blas)
    except Exception as error:  # any failure means: use the JAX kernels
        return {"ok": False, "reason": f"{type(error).__name__}: {error}"}
    return {"ok": True, "reason": "", "library": library, "blas": built.blas}


def require_available() -> None:
    """Raises RuntimeError, saying why, where the native kernels cannot run."""
    if not available():
        raise RuntimeError(f"the native gatenets kernels are unavailable: {unavailable_reason()}")


def _configure_threads(library, blas: str) -> None:
    """The BLAS single-threaded (the loops split the hidden units among their own threads; MKL
    is set sequential by the library itself); as many loop threads as
    ``GATENETS_NATIVE_THREADS`` says, else the usable cores (at most 8)."""
    if blas == "openblas":
        import scipy_openblas32

        openblas = ctypes.CDLL(
            os.path.join(scipy_openblas32.get_lib_dir(), f"lib{scipy_openblas32.get_library()}.so")
        )
        openblas.scipy_openblas_set_num_threads(ctypes.c_int(1))
    setting = os.environ.get("GATENETS_NATIVE_THREADS", "").strip()
    if setting:
        count = int(setting)
    else:
        cores = (
            os.sched_getaffinity(0)
            if hasattr(os, "sched_getaffinity")
            else range(os.cpu_count() or 1)
        )
        count = min(len(cores), 8)
    _set_threads(library, count)


def _set_threads(library, count: int) -> None:
    if count < 1:
        raise ValueError(f"the thread count must be at least 1; got {count}.")
    library.gatenets_native_set_threads(ctypes.c_int(count))


def set_threads(count: int) -> None:
    """Sets how many threads the native loops share each step among.

    Each thread multiplies by its own columns of the recurrent kernel and runs the gate math of
    its own hidden units, one fork-join per step (two in the backward loop); the matmuls after
    the loops are split by columns too. Shapes under about 1 MFLOP per step run on one thread.
    The default is ``GATENETS_NATIVE_THREADS`` if set, else the usable cores (at most 8).

    Args:
      count: threads, at least 1.
    """
    require_available()
    _set_threads(_state["library"], int(count))


def blas() -> str:
    """The BLAS the native kernels were built with: ``"mkl"`` or ``"openblas"``."""
    require_available()
    return str(_state["blas"])


def threads() -> int:
    """How many threads the native loops use."""
    require_available()
    return int(_state["library"].gatenets_native_threads())
