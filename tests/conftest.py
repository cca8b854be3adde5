"""Test configuration: a persistent compile cache and strict rank promotion.

Compiling dominates this suite, so jitted functions are cached on disk between runs, and shapes
are kept tiny. Implicit rank promotion raises, so a silent broadcast is a test failure.
"""

import os
import pathlib

import jax

_CACHE = pathlib.Path(
    os.environ.get("GATENETS_JAX_CACHE", pathlib.Path(__file__).parent.parent / ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_numpy_rank_promotion", "raise")
# loop="auto" takes the static order here: measured choices would make results depend on the
# machine's load. The measuring itself is tested in tests/test_loop_table.py.
os.environ.setdefault("GATENETS_LOOP_TUNING", "0")
