"""What every collected test shares, the tests under tests/ and the doctests under gatenets/.

* Matmuls run at full float32: the comparisons mean "the same function", and JAX's default
  float32 matmul is TF32 on NVIDIA GPUs (tests/conftest.py says more).
* ``loop="auto"`` takes the static order: a measured choice would make results depend on the
  machine's load (the measuring itself is tested in tests/test_loop_table.py).
* A doctest that needs an optional package is skipped, saying so, where it is missing.
"""

import importlib.util
import os

import jax
import pytest

os.environ.setdefault("GATENETS_LOOP_TUNING", "0")
jax.config.update("jax_default_matmul_precision", "highest")

# Doctest modules and the optional package each needs.
_DOCTEST_NEEDS = {
    "gatenets/tasks/mnist1d.py": "mnist1d",
    "gatenets/interop/keras.py": "keras",
    "gatenets/interop/torch.py": "torch",
    "gatenets/train/watch.py": "tensorboardX",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for path, package in _DOCTEST_NEEDS.items():
            if str(item.path).endswith(path) and importlib.util.find_spec(package) is None:
                item.add_marker(pytest.mark.skip(reason=f"needs the optional package {package}"))
