"""Traced gate overrides are range-checked under jit inside gatenets.with_checks + checkify."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify

import gatenets


@pytest.fixture(scope="module")
def run():
    layer = gatenets.GRU(2, 3, rngs=nnx.Rngs(0))
    return jax.jit(
        checkify.checkify(gatenets.with_checks(lambda x, z: layer(x, gate_overrides={"update": z})))
    )


def test_a_traced_override_outside_0_1_is_an_error(run):
    x = jnp.ones((2, 4, 2))
    for bad in (1.5, -0.1, np.nan):
        err, _ = run(x, jnp.float32(bad))
        assert "gate_overrides['update']" in err.get() and "must lie in [0, 1]" in err.get()
        with pytest.raises(checkify.JaxRuntimeError, match=r"must lie in \[0, 1\]"):
            err.throw()
    err, y = run(x, jnp.float32(1.0))
    assert err.get() is None
    # update = 1 keeps the initial state: zeros throughout.
    np.testing.assert_array_equal(y, np.zeros((2, 4, 3), np.float32))
