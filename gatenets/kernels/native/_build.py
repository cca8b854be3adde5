"""Compiling the native kernels: the compiler and its flags, the BLAS, the cache of built
libraries and its integrity check.

A cached library is loaded only after its size and SHA-256 match the record written beside it
(``<library>.sha256``) when it was built: a truncated library would be mapped by the dynamic
loader and crash the process with a bus error at its first call, which no Python code can
catch, so a file that does not match is rebuilt, never loaded. Both files are written under a
temporary name and renamed into place, so that a crash or a concurrent build never leaves a
partial file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import jax

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "recurrent.cc"


class Library(NamedTuple):
    """A built library: its path, its BLAS (``"mkl"`` or ``"openblas"``), and whether it lies in
    a temporary directory (the cache could not be written) to remove once loaded."""

    path: Path
    blas: str
    temporary: bool


def cache_dir() -> Path:
    """``$GATENETS_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/gatenets/native``, else
    ``~/.cache/gatenets/native``."""
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
    for prefix in {sys.prefix, sys.base_prefix}:
        include, lib = Path(prefix) / "include", Path(prefix) / "lib"
        libraries = sorted(lib.glob("libmkl_rt.so*"))
        if (include / "mkl.h").exists() and libraries:
            return str(include), str(lib), libraries[-1].name
    return None


def find_blas() -> dict:
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


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (looked for $CXX, g++ and c++)")
    return compiler


def _cache_key(compiler: str, flags: list[str], blas: dict) -> str:
    import jaxlib

    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    parts = [
        SOURCE.read_bytes(),
        compiler.encode(),
        version.encode(),
        " ".join(flags).encode(),
        jaxlib.__version__.encode(),
        jax.ffi.include_dir().encode(),
        blas["key"].encode(),
        " ".join(sorted(_cpu_flags())).encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# Integrity of the cached library


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _digest(path: Path) -> dict:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def verified(library: Path) -> bool:
    """Whether ``library`` exists and matches the size and SHA-256 recorded when it was built
    (False for a truncated, emptied or overwritten file, or a missing or unreadable record)."""
    try:
        record = json.loads(_record_path(library).read_text())
        if not isinstance(record, dict) or library.stat().st_size != record.get("size"):
            return False
        return _digest(library) == {"sha256": record.get("sha256"), "size": record.get("size")}
    except (OSError, ValueError):
        return False


def _write_atomically(path: Path, data: bytes) -> None:
    fd, partial = tempfile.mkstemp(prefix=path.name, suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _compile(command: list[str]) -> None:
    """Runs the compiler; raises with its error output on failure."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(
            f"compiling {SOURCE.name} failed ({' '.join(command)}):\n{result.stderr[-4000:]}"
        )


def _build_into(directory: Path, target: Path, compiler: str, flags: list, blas: dict) -> None:
    """Compiles under a unique temporary name in ``directory``, records the result's size and
    SHA-256 beside ``target``, then renames the library into place."""
    fd, partial = tempfile.mkstemp(prefix=target.stem, suffix=".so.partial", dir=directory)
    os.close(fd)
    command = [compiler, *flags, f"-I{jax.ffi.include_dir()}", *blas["flags"], str(SOURCE)]
    command += ["-o", partial, *blas["link"]]
    try:
        _compile(command)
        record = _digest(Path(partial))
        if record["size"] == 0:
            raise RuntimeError(f"compiling {SOURCE.name} wrote an empty library")
        # The record first: a reader that finds the new library finds its record too.
        _write_atomically(_record_path(target), json.dumps(record).encode())
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def build() -> Library:
    """The handlers' library: from the cache when its record matches, else compiled (into the
    cache, or into a temporary directory with a warning when the cache cannot be written)."""
    compiler = _compiler()
    blas = find_blas()
    flags = _compile_flags()
    name = f"gatenets_native_{blas['name']}_{_cache_key(compiler, flags, blas)}.so"
    directory = cache_dir()
    target = directory / name
    if verified(target):
        return Library(target, blas["name"], False)
    problem = _unwritable(directory)
    if problem is None:
        _build_into(directory, target, compiler, flags, blas)
        return Library(target, blas["name"], False)
    warnings.warn(
        f"the native kernel cache {directory} cannot be written ({problem}); the kernels are "
        "compiled into a temporary directory, again in every process. Set "
        "GATENETS_NATIVE_CACHE to a writable directory.",
        RuntimeWarning,
        stacklevel=4,
    )
    scratch = Path(tempfile.mkdtemp(prefix="gatenets-native-"))
    try:
        _build_into(scratch, scratch / name, compiler, flags, blas)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return Library(scratch / name, blas["name"], True)


def _unwritable(directory: Path) -> OSError | None:
    """Why files cannot be created in ``directory`` (made if missing), or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        return error
    return None
