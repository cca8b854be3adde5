"""``precision=`` reaches every matrix product of the attention layers and blocks, on every
path (as ``flax.nnx.Linear`` passes it to its ``dot_general``)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from helpers import dot_precisions

from gatenets import (
    BinaryHead,
    GatedAttention,
    GatedAttentionUnit,
    GatedFeedForward,
    SigmoidAttention,
    SigmoidMoE,
    SigmoidRouter,
)

HIGHEST = jax.lax.Precision.HIGHEST


LAYERS = {
    "gated": lambda p: GatedAttention(8, 2, num_kv_heads=1, precision=p, rngs=nnx.Rngs(0)),
    "sigmoid": lambda p: SigmoidAttention(8, 2, precision=p, rngs=nnx.Rngs(0)),
    "gau": lambda p: GatedAttentionUnit(
        8, qk_features=4, max_relative_distance=2, precision=p, rngs=nnx.Rngs(0)
    ),
    "feed_forward": lambda p: GatedFeedForward(8, 16, precision=p, rngs=nnx.Rngs(0)),
    "head": lambda p: BinaryHead(8, precision=p, rngs=nnx.Rngs(0)),
    "router": lambda p: SigmoidRouter(8, 4, top_k=2, precision=p, rngs=nnx.Rngs(0)),
    "moe": lambda p: SigmoidMoE(8, 8, num_experts=4, top_k=2, precision=p, rngs=nnx.Rngs(0)),
}
CALLS = {
    "gated": [{"causal": True}, {"causal": True, "return_attention_weights": True}],
    "sigmoid": [{"causal": True}, {"return_gates": True}],
    "gau": [{"causal": True}],
    "feed_forward": [{}],
    "head": [{}],
    "router": [{}],
    "moe": [{}],
}


# At the backend's default precision: with precision=None the products must carry what the
# context says, which the suite's own full-float32 rule would otherwise be.
@pytest.mark.backend_matmul_precision
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_precision_reaches_every_matrix_product(name):
    x = jnp.ones((1, 5, 8))
    for precision in (HIGHEST, None):
        layer = LAYERS[name](precision)
        graphdef, state = nnx.split(layer)
        for call in CALLS[name]:

            def loss(state, x, call=call, graphdef=graphdef):
                out = nnx.merge(graphdef, state)(x, **call)
                return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(out))

            # Forward and backward: the products of the gradient inherit the precision too.
            jaxpr = jax.make_jaxpr(jax.grad(loss))(state, x)
            found = list(dot_precisions(jaxpr.jaxpr))
            assert len(found) >= 2, (name, call)
            want = (HIGHEST, HIGHEST) if precision is not None else None
            assert all(p == want for p in found), (name, call, precision, set(found))
