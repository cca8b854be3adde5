"""Test configuration: a persistent compile cache, strict rank promotion, full float32.

Compiling dominates this suite, so jitted functions are cached on disk between runs, and shapes
are kept tiny. Implicit rank promotion raises, so a silent broadcast is a test failure. Float32
matmuls run at full float32 on every backend, JAX's and PyTorch's (``full_float32_matmuls``);
a test about the backend's own default takes ``@pytest.mark.backend_matmul_precision``.
"""

import os
import pathlib
import sys
import warnings

import jax
import pytest

_CACHE = pathlib.Path(
    os.environ.get("GATENETS_JAX_CACHE", pathlib.Path(__file__).parent.parent / ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_numpy_rank_promotion", "raise")
# The suite's comparisons mean "the same function", at tolerances that hold in float32. JAX's
# default float32 matmul is TF32 on NVIDIA GPUs (about 1e-3 relative) and bfloat16 passes on
# TPUs; CPUs compute float32. So every test runs its matmuls at full float32, on every backend
# and whatever JAX_DEFAULT_MATMUL_PRECISION says: the one place the suite sets precision.
# Set globally, not per test, so module-level code and module-scoped fixtures get it too.
# (Set in the root conftest.py, which the doctests under gatenets/ share; repeated here so
# that this file states the rule where the tests are.)
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backend_matmul_precision: run at JAX's default matmul precision of the backend (TF32 "
        "on NVIDIA GPUs) instead of the suite's full float32",
    )


@pytest.fixture(autouse=True)
def full_float32_matmuls(request):
    """PyTorch on CUDA without TF32, as JAX above; the marked tests at the backend's default."""
    # Only where a test module brought PyTorch in; the flags need no GPU to be set.
    torch = sys.modules.get("torch")
    if torch is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TF32 flags' API moves between releases
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
    if request.node.get_closest_marker("backend_matmul_precision") is None:
        yield
    else:
        with jax.default_matmul_precision(None):
            yield
