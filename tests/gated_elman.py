"""A cell written only for the tests: what a new family needs, and nothing more.

One file (this one) and one row (``ROW``) give it every generic conformance check
(tests/test_conformance.py) without touching the library: the stacked layer, the loop table's
generic scan, padding, reverse, overrides, traces, nnx.RNN, jit, vmap and gradients.

.. math::
    z_t = \\sigma(W_z x_t + U_z h_{t-1} + b_z), \\qquad
    n_t = \\tanh(W_n x_t + U_n h_{t-1} + b_n), \\qquad
    h_t = (1 - z_t) \\odot h_{t-1} + z_t \\odot n_t
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gatenets.cells.base import GatedCell, fused_orthogonal, recurrent_input
from gatenets.gates import apply_override
from gatenets.registry import CellFamily


class GatedElmanCarry(NamedTuple):
    h: jax.Array


class GatedElmanGates(NamedTuple):
    retention = {"write": "write"}
    write: jax.Array


class GatedElmanCell(GatedCell):
    family = "gated_elman"
    gates_type = GatedElmanGates
    carry_type = GatedElmanCarry

    def __init__(self, in_features, hidden_features, *, dtype=None, param_dtype=jnp.float32, rngs):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (in_features, 2 * hidden_features)))
        self.recurrent_kernel = nnx.Param(
            fused_orthogonal(
                nnx.initializers.orthogonal(),
                rngs,
                hidden_features,
                hidden_features,
                2,
                param_dtype,
            )
        )
        self.use_bias = True
        self.bias = nnx.Param(jnp.zeros((2 * hidden_features,), param_dtype))

    def step(self, carry, projected, *, gate_overrides=None, recurrent_mask=None):
        h_in = recurrent_input(carry.h, recurrent_mask)
        z_pre, n_pre = jnp.split(projected + h_in @ self.recurrent_kernel[...], 2, axis=-1)
        z = apply_override(jax.nn.sigmoid(z_pre), (gate_overrides or {}).get("write"), "write")
        h = (1.0 - z) * carry.h + z * jnp.tanh(n_pre)
        return GatedElmanCarry(h=h), h, GatedElmanGates(write=z)


ROW = CellFamily.of(GatedElmanCell)
