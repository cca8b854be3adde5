r"""Native CPU LSTM and GRU sequence kernels: the whole time loop in one C++ call through
:mod:`jax.ffi`, with the matmuls from a BLAS (MKL or OpenBLAS).

Under XLA:CPU a ``lax.scan`` step of an LSTM spends about a third of its time dispatching ops
and running the gate arithmetic as separate loops, besides the matmul. The C++ loop here does,
per step, one GEMM per thread for :math:`h_{t-1} U` (each thread owns a slice of the hidden
units, see :func:`set_threads`) and one vectorised pass of gate math over its units; the input
projection (none when the inputs come pre-projected) runs a chunk of about 512 rows at a
time. Its backward loop computes only what is sequential, :math:`\delta z_t` and
:math:`\delta h_{t-1} = \delta z_t U^\top`, and the weight gradients are one large GEMM each
after the loop, exactly as in :mod:`gatenets.kernels.lstm` and :mod:`gatenets.kernels.gru`,
whose functions :func:`lstm_sequence_native` and :func:`gru_sequence_native` replace
argument for argument.

Build: the C++ source (``gatenets/kernels/csrc/recurrent.cc``) is compiled on first use with
the system C++ compiler against the XLA FFI headers of the *installed* jaxlib
(:func:`jax.ffi.include_dir`) and a BLAS: MKL when the ``mkl`` and ``mkl-include`` wheels are
installed (``pip install gatenets[mkl]``; its packed GEMM packs the recurrent kernel once per
loop instead of once per step, and is markedly faster at these shapes), else the OpenBLAS of the
``scipy-openblas32`` wheel (``GATENETS_NATIVE_BLAS=mkl|openblas|auto`` forces one), into a cache
directory (``$GATENETS_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/gatenets/native``, else
``~/.cache/gatenets/native``), keyed by a hash of the source, the compiler, its flags, jaxlib's
version and the BLAS. Compiling at install time instead would need jax and jaxlib (about
600 MB with their dependencies) in pip's isolated build environment of every fresh install, and
would tie the binary to the jaxlib present at build time; here the headers always match the
jaxlib that loads the handlers, the code is tuned to the CPU that runs it (AVX2/FMA when the CPU
has them), and an install never fails for want of a compiler. The compile takes a few seconds,
once per cache key. Without a compiler or the BLAS, :func:`available` is False and
:data:`unavailable_reason` says why; callers then use the pure-JAX kernels. Set
``GATENETS_NATIVE=0`` to turn the native kernels off.

Scope (see :func:`applies`): float32 and float64, constant gate overrides, no ``remat``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatenets._typing import Array

__all__ = [
    "applies",
    "available",
    "blas",
    "gru_sequence_native",
    "lstm_sequence_native",
    "set_threads",
    "threads",
    "unavailable_reason",
]

_SOURCE = Path(__file__).parent / "csrc" / "recurrent.cc"
# The FFI target names carry a hash of the source: a program that JAX's persistent compilation
# cache kept from an older version of the handlers (other arguments or attributes) then misses
# the cache instead of calling handlers that no longer match it.
_VERSION = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:12] if _SOURCE.exists() else "none"


def _target(name: str) -> str:
    return f"gatenets_{name}_{_VERSION}"


_TARGETS = {
    "lstm_forward": "GatenetsLstmForward",
    "lstm_backward": "GatenetsLstmBackward",
    "gru_forward": "GatenetsGruForward",
    "gru_backward": "GatenetsGruBackward",
}
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: Why the native kernels cannot be used (empty while :func:`available` is True or untried).
unavailable_reason: str = ""

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool once tried; "library": the loaded ctypes.CDLL


def _cache_dir() -> Path:
    if os.environ.get("GATENETS_NATIVE_CACHE"):
        return Path(os.environ["GATENETS_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gatenets" / "native"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compile_flags() -> list[str]:
    # -ffp-contract=fast only fuses a*b+c into FMAs (more accurate, not reassociated);
    # -fno-trapping-math lets GCC if-convert and so vectorise the activation selects (the code
    # never reads floating-point exception flags).
    flags = ["-std=c++17", "-O3", "-fPIC", "-shared"]
    flags += ["-ffp-contract=fast", "-fno-trapping-math"]
    # The binary is built on the machine that runs it (and the CPU's flags are part of the
    # cache key), so AVX2/FMA are used exactly when this CPU has them.
    if platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma"} <= _cpu_flags():
        flags += ["-mavx2", "-mfma"]
    return flags


def _find_mkl() -> tuple[str, str, str] | None:
    """``(include dir, lib dir, library file)`` of the pip ``mkl`` + ``mkl-include`` wheels in
    this environment, or None."""
    import sys

    for prefix in {sys.prefix, sys.base_prefix}:
        include, lib = Path(prefix) / "include", Path(prefix) / "lib"
        libraries = sorted(lib.glob("libmkl_rt.so*"))
        if (include / "mkl.h").exists() and libraries:
            return str(include), str(lib), libraries[-1].name
    return None


def _blas() -> dict:
    """The BLAS to link: MKL when ``GATENETS_NATIVE_BLAS`` is ``mkl``, or ``auto`` (the default)
    and the MKL wheels are installed (``pip install gatenets[mkl]``); else OpenBLAS."""
    choice = os.environ.get("GATENETS_NATIVE_BLAS", "auto").strip().lower()
    if choice not in ("auto", "mkl", "openblas"):
        raise RuntimeError(f"GATENETS_NATIVE_BLAS must be auto, mkl or openblas; got {choice!r}")
    mkl = _find_mkl() if choice in ("auto", "mkl") else None
    if mkl is not None:
        include, lib, library = mkl
        return {
            "name": "mkl",
            "flags": ["-DGATENETS_USE_MKL", f"-I{include}"],
            "link": [f"-L{lib}", f"-l:{library}", f"-Wl,-rpath,{lib}"],
            "key": f"mkl {lib}/{library}",
        }
    if choice == "mkl":
        raise RuntimeError("GATENETS_NATIVE_BLAS=mkl, but mkl.h and libmkl_rt were not found")
    try:
        import scipy_openblas32
    except ImportError as error:
        raise RuntimeError(
            "the BLAS package scipy-openblas32 is not installed (pip install scipy-openblas32)"
        ) from error
    lib = scipy_openblas32.get_lib_dir()
    return {
        "name": "openblas",
        "flags": [f"-I{scipy_openblas32.get_include_dir()}"],
        "link": [f"-L{lib}", f"-l{scipy_openblas32.get_library()}", f"-Wl,-rpath,{lib}"],
        "key": f"openblas {lib} {getattr(scipy_openblas32, '__version__', '')}",
    }


def _build() -> tuple[Path, str]:
    """Compiles the handlers (or finds them in the cache); returns the library and its BLAS."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (looked for $CXX, g++ and c++)")
    import jaxlib

    blas = _blas()
    flags = _compile_flags()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    key_parts = [
        _SOURCE.read_bytes(),
        compiler.encode(),
        version.encode(),
        " ".join(flags).encode(),
        jaxlib.__version__.encode(),
        jax.ffi.include_dir().encode(),
        blas["key"].encode(),
        " ".join(sorted(_cpu_flags())).encode(),
    ]
    key = hashlib.sha256(b"\0".join(key_parts)).hexdigest()[:20]
    directory = _cache_dir()
    target = directory / f"gatenets_native_{blas['name']}_{key}.so"
    if target.exists():
        return target, blas["name"]
    directory.mkdir(parents=True, exist_ok=True)
    # Compiled under a unique name and renamed: concurrent processes never load a partial file.
    fd, partial = tempfile.mkstemp(prefix=target.stem, suffix=".so.partial", dir=directory)
    os.close(fd)
    command = [
        compiler,
        *flags,
        f"-I{jax.ffi.include_dir()}",
        *blas["flags"],
        str(_SOURCE),
        "-o",
        partial,
        *blas["link"],
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(
                f"compiling {_SOURCE.name} failed ({' '.join(command)}):\n{result.stderr[-4000:]}"
            )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target, blas["name"]


def available() -> bool:
    """Whether the native kernels can run here; builds and registers them on the first call.

    On False, :data:`unavailable_reason` holds the reason (no compiler, no BLAS, a compile
    error, ``GATENETS_NATIVE=0``).
    """
    global unavailable_reason
    with _lock:
        if "ok" in _state:
            return bool(_state["ok"])
        ok = False
        if os.environ.get("GATENETS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            unavailable_reason = "disabled by the environment variable GATENETS_NATIVE"
        else:
            try:
                path, blas = _build()
                library = ctypes.CDLL(str(path))
                for name, symbol in _TARGETS.items():
                    handler = jax.ffi.pycapsule(getattr(library, symbol))
                    jax.ffi.register_ffi_target(_target(name), handler, platform="cpu")
                _state["library"] = library
                _state["blas"] = blas
                _configure_threads(library, blas)
                ok = True
                unavailable_reason = ""
            except Exception as error:  # any failure means: use the JAX kernels
                unavailable_reason = f"{type(error).__name__}: {error}"
        _state["ok"] = ok
        return ok


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
    _require_available()
    _set_threads(_state["library"], int(count))


def blas() -> str:
    """The BLAS the native kernels were built with: ``"mkl"`` or ``"openblas"``."""
    _require_available()
    return str(_state["blas"])


def threads() -> int:
    """How many threads the native loops use."""
    _require_available()
    return int(_state["library"].gatenets_native_threads())


def applies(
    dtype,
    remat: bool = False,
    overrides: tuple[float | None, ...] | None = None,
) -> bool:
    """Whether :func:`lstm_sequence_native` / :func:`gru_sequence_native` can replace the JAX
    kernels for these settings (else call :func:`~gatenets.kernels.lstm_sequence` /
    :func:`~gatenets.kernels.gru_sequence`).

    Args:
      dtype: the compute dtype (all arrays must share it): float32 or float64.
      remat: the JAX kernels' rematerialisation option; the native kernels do not recompute.
      overrides: per-gate constants (floats or None); anything else (a function, an array)
        needs the generic scan anyway.

    Returns:
      True when the extension is built and the settings are supported.
    """
    if remat or np.dtype(dtype) not in _DTYPES:
        return False
    if overrides is not None and not all(
        value is None or (isinstance(value, int | float) and not isinstance(value, bool))
        for value in overrides
    ):
        return False
    return available()


def _require_available() -> None:
    if not available():
        raise RuntimeError(f"the native gatenets kernels are unavailable: {unavailable_reason}")


def _check(name: str, array, shape: tuple, dtype) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(array.shape)}.")
    if dtype is not None and np.dtype(array.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}; got {array.dtype}.")


def _common_checks(
    xs, recurrent_kernel, gates, h0, valid, input_kernel, bias, recurrent_mask, remat, unroll
):
    """Validates the arguments shared by both kernels; returns (time, batch, hidden, dtype)."""
    if remat:
        raise ValueError(
            "remat=True is not supported by the native kernels (they save the gates); "
            "check gatenets.kernels.native.applies(...) and use the JAX kernel instead."
        )
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be a positive int; got {unroll!r}.")
    dtype = np.dtype(recurrent_kernel.dtype)
    if dtype not in _DTYPES:
        raise TypeError(
            f"recurrent_kernel must be float32 or float64 for the native kernels; got {dtype}."
        )
    if recurrent_kernel.ndim != 2:
        raise ValueError(
            f"recurrent_kernel must be [hidden, {gates} hidden]; got shape "
            f"{tuple(recurrent_kernel.shape)}."
        )
    hidden = recurrent_kernel.shape[0]
    _check("recurrent_kernel", recurrent_kernel, (hidden, gates * hidden), dtype)
    if xs.ndim != 3:
        raise ValueError(f"xs must be [time, batch, features]; got shape {tuple(xs.shape)}.")
    steps, batch = xs.shape[:2]
    _check("h0", h0, (batch, hidden), dtype)
    if input_kernel is None:
        if bias is not None:
            raise ValueError("bias is only used with input_kernel; got bias without it.")
        _check("xs", xs, (steps, batch, gates * hidden), dtype)
    else:
        if bias is None:
            raise ValueError("input_kernel needs bias ([gates * hidden]); got bias=None.")
        _check("xs", xs, (steps, batch, xs.shape[2]), dtype)
        _check("input_kernel", input_kernel, (xs.shape[2], gates * hidden), dtype)
        _check("bias", bias, (gates * hidden,), dtype)
    if valid is not None:
        _check("valid", valid, (steps, batch), None)
    if recurrent_mask is not None:
        _check("recurrent_mask", recurrent_mask, (batch, hidden), dtype)
    return steps, batch, hidden, dtype


def _override_attrs(overrides: tuple) -> dict:
    attrs = {
        "override_mask": np.int64(sum(1 << k for k, v in enumerate(overrides) if v is not None))
    }
    for k, value in enumerate(overrides):
        attrs[f"override_{k}"] = np.float64(0.0 if value is None else value)
    return attrs


def _empty(dtype) -> Array:
    return jnp.zeros((0,), dtype)


def _or_empty(array, dtype) -> Array:
    return _empty(dtype) if array is None else array


def _valid_bytes(valid) -> Array:
    return jnp.zeros((0,), jnp.uint8) if valid is None else valid.astype(jnp.uint8)


def _flags(reverse, input_kernel, valid, recurrent_mask) -> dict:
    return {
        "reverse": np.int64(reverse),
        "has_input": np.int64(input_kernel is not None),
        "has_valid": np.int64(valid is not None),
        "has_mask": np.int64(recurrent_mask is not None),
    }


def _shape(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


# ---------------------------------------------------------------------------------------------
# LSTM


class _LSTMConfig(NamedTuple):
    reverse: bool
    return_gates: bool
    overrides: tuple[float | None, float | None, float | None]


def _lstm_forward(config, xs, input_kernel, bias, u, c0, h0, valid, mask, for_backward):
    steps, batch = xs.shape[:2]
    hidden = u.shape[0]
    dtype = u.dtype
    keep_acts = config.return_gates or for_backward
    results = [
        _shape((batch, hidden), dtype),
        _shape((batch, hidden), dtype),
        _shape((steps, batch, hidden), dtype),
        _shape((steps, batch, 4 * hidden) if keep_acts else (0,), dtype),
        _shape((steps, batch, hidden) if for_backward else (0,), dtype),
    ]
    call = jax.ffi.ffi_call(_target("lstm_forward"), results, vmap_method="sequential")
    return call(
        xs,
        _or_empty(input_kernel, dtype),
        _or_empty(bias, dtype),
        u,
        c0,
        h0,
        _valid_bytes(valid),
        _or_empty(mask, dtype),
        **_flags(config.reverse, input_kernel, valid, mask),
        **_override_attrs(config.overrides),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm(config, xs, input_kernel, bias, u, c0, h0, valid, mask):
    # Not differentiated: the inference variant, which saves neither gates nor cell states.
    c, h, hs, acts, _ = _lstm_forward(config, xs, input_kernel, bias, u, c0, h0, valid, mask, False)
    return c, h, hs, acts if config.return_gates else None


def _lstm_fwd(config, xs, input_kernel, bias, u, c0, h0, valid, mask):
    c, h, hs, acts, cs = _lstm_forward(config, xs, input_kernel, bias, u, c0, h0, valid, mask, True)
    # Pre-projected inputs are not needed again: their gradient is dz itself.
    residuals = (
        xs if input_kernel is not None else None,
        input_kernel,
        bias,
        u,
        c0,
        h0,
        valid,
        mask,
        cs,
        hs,
        acts,
    )
    return (c, h, hs, acts if config.return_gates else None), residuals


def _lstm_bwd(config, residuals, cotangents):
    xs, input_kernel, bias, u, c0, h0, valid, mask, cs, hs, acts = residuals
    dc_last, dh_last, dhs, dacts = cotangents
    steps, batch, hidden = hs.shape
    dtype = u.dtype
    has_dacts = config.return_gates and dacts is not None
    inside = input_kernel is not None
    features = input_kernel.shape[0] if inside else 0
    results = [
        _shape((batch, hidden), dtype),
        _shape((batch, hidden), dtype),
        _shape((steps, batch, 4 * hidden), dtype),
        _shape((hidden, 4 * hidden), dtype),
        _shape((features, 4 * hidden) if inside else (0,), dtype),
        _shape((4 * hidden,) if inside else (0,), dtype),
        _shape((steps, batch, features) if inside else (0,), dtype),
    ]
    call = jax.ffi.ffi_call(_target("lstm_backward"), results, vmap_method="sequential")
    dc0, dh0, dz, d_recurrent, d_input, d_bias, dxs_raw = call(
        _or_empty(xs, dtype),
        _or_empty(input_kernel, dtype),
        u,
        c0,
        h0,
        _valid_bytes(valid),
        _or_empty(mask, dtype),
        cs,
        hs,
        acts,
        dc_last.astype(dtype),
        dh_last.astype(dtype),
        dhs.astype(dtype),
        dacts.astype(dtype) if has_dacts else _empty(dtype),
        **_flags(config.reverse, input_kernel, valid, mask),
        has_dacts=np.int64(has_dacts),
        **_override_attrs(config.overrides),
    )
    d_mask = None if mask is None else jnp.zeros_like(mask)
    if inside:
        return dxs_raw, d_input, d_bias, d_recurrent, dc0, dh0, None, d_mask
    return dz, None, None, d_recurrent, dc0, dh0, None, d_mask


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_sequence_native(
    xs: Array,
    recurrent_kernel: Array,
    c0: Array,
    h0: Array,
    valid: Array | None = None,
    *,
    input_kernel: Array | None = None,
    bias: Array | None = None,
    recurrent_mask: Array | None = None,
    reverse: bool = False,
    return_gates: bool = False,
    overrides: tuple[float | None, float | None, float | None] = (None, None, None),
    remat: bool = False,
    unroll: int = 1,
) -> tuple[Array, Array, Array, Array | None]:
    r"""The native-loop drop-in for :func:`gatenets.kernels.lstm_sequence` (same arguments,
    same results).

    .. math::
        [i_t, f_t, g_t, o_t] = [\sigma, \sigma, \tanh, \sigma](x_t + (h_{t-1} \odot m) U) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t, \quad h_t = o_t \odot \tanh(c_t)

    with :math:`x_t` = ``xs[t]`` or ``xs[t] @ input_kernel + bias`` and :math:`m` the
    recurrent mask; the carry is held where ``valid`` is False.

    Args:
      xs: ``[time, batch, 4 hidden]`` projected inputs, or ``[time, batch, features]`` with
        ``input_kernel``.
      recurrent_kernel: ``[hidden, 4 hidden]`` (gate order ``i, f, g, o``), float32 or float64;
        every other float array must have its dtype.
      c0: ``[batch, hidden]`` initial cell state.
      h0: ``[batch, hidden]`` initial hidden state.
      valid: ``[time, batch]`` booleans, or None.
      input_kernel: ``[features, 4 hidden]`` to project inside the loop, or None.
      bias: ``[4 hidden]``, required with ``input_kernel``.
      recurrent_mask: ``[batch, hidden]`` multiplier of :math:`h_{t-1}`; it gets a zero
        gradient, as in the JAX kernel.
      reverse: loop from the last step to the first.
      return_gates: also return the gates.
      overrides: constants replacing the input, forget and output gates, or None each.
      remat: must be False (see :func:`applies`).
      unroll: accepted for compatibility; the native loop is not unrolled.

    Returns:
      ``(c_last, h_last, hs, acts)`` as :func:`~gatenets.kernels.lstm_sequence`.

    Raises:
      RuntimeError: the extension is not available (:data:`unavailable_reason` says why).
      ValueError, TypeError: an argument has the wrong shape or dtype, or ``remat=True``.
    """
    _require_available()
    _, _, hidden, dtype = _common_checks(
        xs, recurrent_kernel, 4, h0, valid, input_kernel, bias, recurrent_mask, remat, unroll
    )
    _check("c0", c0, (xs.shape[1], hidden), dtype)
    overrides = tuple(None if v is None else float(v) for v in overrides)
    if len(overrides) != 3:
        raise ValueError(f"overrides must have 3 entries (input, forget, output); got {overrides}.")
    config = _LSTMConfig(bool(reverse), bool(return_gates), overrides)
    return _lstm(config, xs, input_kernel, bias, recurrent_kernel, c0, h0, valid, recurrent_mask)


# ---------------------------------------------------------------------------------------------
# GRU


class _GRUConfig(NamedTuple):
    reverse: bool
    return_gates: bool
    overrides: tuple[float | None, float | None]


def _gru_forward(config, xs, input_kernel, bias, u, b_hn, h0, valid, mask, for_backward):
    steps, batch = xs.shape[:2]
    hidden = u.shape[0]
    dtype = u.dtype
    # When training, the gates are the first half of the saved values: not written twice.
    gates = config.return_gates and not for_backward
    results = [
        _shape((batch, hidden), dtype),
        _shape((steps, batch, hidden), dtype),
        _shape((steps, batch, 4 * hidden) if for_backward else (0,), dtype),
        _shape((steps, batch, 2 * hidden) if gates else (0,), dtype),
    ]
    call = jax.ffi.ffi_call(_target("gru_forward"), results, vmap_method="sequential")
    h, hs, values, gate_values = call(
        xs,
        _or_empty(input_kernel, dtype),
        _or_empty(bias, dtype),
        u,
        _or_empty(b_hn, dtype),
        h0,
        _valid_bytes(valid),
        _or_empty(mask, dtype),
        **_flags(config.reverse, input_kernel, valid, mask),
        has_recurrent_bias=np.int64(b_hn is not None),
        **_override_attrs(config.overrides),
    )
    if not config.return_gates:
        gate_values = None
    elif for_backward:
        gate_values = values[..., : 2 * hidden]
    return h, hs, values, gate_values


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru(config, xs, input_kernel, bias, u, b_hn, h0, valid, mask):
    h, hs, _, gates = _gru_forward(config, xs, input_kernel, bias, u, b_hn, h0, valid, mask, False)
    return h, hs, gates


def _gru_fwd(config, xs, input_kernel, bias, u, b_hn, h0, valid, mask):
    h, hs, values, gates = _gru_forward(
        config, xs, input_kernel, bias, u, b_hn, h0, valid, mask, True
    )
    residuals = (
        xs if input_kernel is not None else None,
        input_kernel,
        bias,
        u,
        b_hn,
        h0,
        valid,
        mask,
        hs,
        values,
    )
    return (h, hs, gates), residuals


def _gru_bwd(config, residuals, cotangents):
    xs, input_kernel, bias, u, b_hn, h0, valid, mask, hs, values = residuals
    dh_last, dhs, dgates = cotangents
    steps, batch, hidden = hs.shape
    dtype = u.dtype
    has_dgates = config.return_gates and dgates is not None
    inside = input_kernel is not None
    features = input_kernel.shape[0] if inside else 0
    results = [
        _shape((batch, hidden), dtype),
        _shape((steps, batch, 3 * hidden), dtype),
        _shape((hidden, 3 * hidden), dtype),
        _shape((hidden,) if b_hn is not None else (0,), dtype),
        _shape((features, 3 * hidden) if inside else (0,), dtype),
        _shape((3 * hidden,) if inside else (0,), dtype),
        _shape((steps, batch, features) if inside else (0,), dtype),
    ]
    call = jax.ffi.ffi_call(_target("gru_backward"), results, vmap_method="sequential")
    dh0, dxp, d_recurrent, d_b_hn, d_input, d_bias, dxs_raw = call(
        _or_empty(xs, dtype),
        _or_empty(input_kernel, dtype),
        u,
        h0,
        _valid_bytes(valid),
        _or_empty(mask, dtype),
        hs,
        values,
        dh_last.astype(dtype),
        dhs.astype(dtype),
        dgates.astype(dtype) if has_dgates else _empty(dtype),
        **_flags(config.reverse, input_kernel, valid, mask),
        has_recurrent_bias=np.int64(b_hn is not None),
        has_dgates=np.int64(has_dgates),
        **_override_attrs(config.overrides),
    )
    d_mask = None if mask is None else jnp.zeros_like(mask)
    d_b_hn = None if b_hn is None else d_b_hn
    if inside:
        return dxs_raw, d_input, d_bias, d_recurrent, d_b_hn, dh0, None, d_mask
    return dxp, None, None, d_recurrent, d_b_hn, dh0, None, d_mask


_gru.defvjp(_gru_fwd, _gru_bwd)


def gru_sequence_native(
    xs: Array,
    recurrent_kernel: Array,
    h0: Array,
    valid: Array | None = None,
    *,
    recurrent_bias: Array | None = None,
    input_kernel: Array | None = None,
    bias: Array | None = None,
    recurrent_mask: Array | None = None,
    reverse: bool = False,
    return_gates: bool = False,
    overrides: tuple[float | None, float | None] = (None, None),
    remat: bool = False,
    unroll: int = 1,
) -> tuple[Array, Array, Array | None]:
    r"""The native-loop drop-in for :func:`gatenets.kernels.gru_sequence` (``reset_after=True``;
    same arguments, same results).

    .. math::
        r_t = \sigma(a^r_t), \quad z_t = \sigma(a^z_t), \quad
        n_t = \tanh(x^n_t + r_t \odot (U_n \tilde h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    with :math:`[a^r_t, a^z_t] = [x^r_t, x^z_t] + [U_r, U_z] \tilde h_{t-1}`,
    :math:`\tilde h_{t-1} = h_{t-1} \odot m` (the recurrent mask) and :math:`x_t` = ``xs[t]``
    or ``xs[t] @ input_kernel + bias``; the carry is held where ``valid`` is False.

    Args:
      xs: ``[time, batch, 3 hidden]`` projected inputs, or ``[time, batch, features]`` with
        ``input_kernel``.
      recurrent_kernel: ``[hidden, 3 hidden]``, float32 or float64; every other float array
        must have its dtype.
      h0: ``[batch, hidden]`` initial state.
      valid: ``[time, batch]`` booleans, or None.
      recurrent_bias: ``[hidden]``, the :math:`b_{hn}` inside the reset product, or None.
      input_kernel: ``[features, 3 hidden]`` to project inside the loop, or None.
      bias: ``[3 hidden]``, required with ``input_kernel``.
      recurrent_mask: ``[batch, hidden]`` multiplier of :math:`h_{t-1}` in the matmul.
      reverse: loop from the last step to the first.
      return_gates: also return ``[r, z]``.
      overrides: constants replacing the reset and update gates, or None each.
      remat: must be False (see :func:`applies`).
      unroll: accepted for compatibility; the native loop is not unrolled.

    Returns:
      ``(h_last, hs, gates)`` as :func:`~gatenets.kernels.gru_sequence`.

    Raises:
      RuntimeError: the extension is not available (:data:`unavailable_reason` says why).
      ValueError, TypeError: an argument has the wrong shape or dtype, or ``remat=True``.
    """
    _require_available()
    _, _, hidden, dtype = _common_checks(
        xs, recurrent_kernel, 3, h0, valid, input_kernel, bias, recurrent_mask, remat, unroll
    )
    if recurrent_bias is not None:
        _check("recurrent_bias", recurrent_bias, (hidden,), dtype)
    overrides = tuple(None if v is None else float(v) for v in overrides)
    if len(overrides) != 2:
        raise ValueError(f"overrides must have 2 entries (reset, update); got {overrides}.")
    config = _GRUConfig(bool(reverse), bool(return_gates), overrides)
    return _gru(
        config, xs, input_kernel, bias, recurrent_kernel, recurrent_bias, h0, valid, recurrent_mask
    )
