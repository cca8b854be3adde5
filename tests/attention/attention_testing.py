"""Test helpers: NumPy-drawn inputs and initialisers.

Drawing with ``jax.random`` compiles one small program per distinct shape, which on this CPU
costs more than the tests themselves; NumPy draws cost nothing to compile. The initialiser
still derives its values from the key it is given, so layers built from the same ``nnx.Rngs``
seed get the same weights.
"""

import jax
import jax.numpy as jnp
import numpy as np


def numpy_init(scale):
    """An initialiser drawing N(0, scale^2) with NumPy, seeded by the JAX key it receives."""

    def init(key, shape, dtype=jnp.float32):
        seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
        return jnp.asarray(np.random.default_rng(seed).normal(0.0, scale, shape), dtype)

    return init


KERNEL_INIT = numpy_init(0.4)
# Non-zero biases, so that the references check where every bias enters.
BIAS_INIT = numpy_init(0.5)


def inputs(batch=2, time=5, features=6, seed=0):
    """``[batch, time, features]`` float32 standard normal values."""
    return jnp.asarray(
        np.random.default_rng(seed).normal(size=(batch, time, features)), jnp.float32
    )
