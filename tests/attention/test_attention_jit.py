"""Every attention-family layer gives the same output and gates under nnx.jit as eagerly, and
its trace follows the shared GateTrace convention."""

import jax.numpy as jnp
import numpy as np
import pytest
from attention_testing import KERNEL_INIT, inputs
from flax import nnx

from gatenets import (
    BinaryHead,
    GatedAttention,
    GatedAttentionUnit,
    GatedFeedForward,
    GateTrace,
    SigmoidAttention,
    SigmoidMoE,
)


def inits():
    return {"kernel_init": KERNEL_INIT, "rngs": nnx.Rngs(0)}


LAYERS = {
    "gated_attention": (lambda: GatedAttention(6, 2, num_kv_heads=1, **inits()), True),
    "gau": (lambda: GatedAttentionUnit(6, qk_features=4, **inits()), True),
    "sigmoid_attention": (lambda: SigmoidAttention(6, 3, **inits()), True),
    "moe": (
        lambda: SigmoidMoE(6, 4, num_experts=3, top_k=2, router_kernel_init=KERNEL_INIT, **inits()),
        False,
    ),
    "feed_forward": (lambda: GatedFeedForward(6, 8, **inits()), False),
    "binary_head": (lambda: BinaryHead(6, **inits()), False),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_jit_matches_eager_with_gates_and_mask(name):
    build, takes_causal = LAYERS[name]
    layer = build()
    x = inputs(2, 4, 6)
    mask = jnp.array([[True, True, True, False], [True, True, True, True]])
    kwargs = {"causal": True} if takes_causal else {}

    def run(layer, x, mask):
        return layer(x, mask=mask, return_gates=True, **kwargs)

    y, trace = run(layer, x, mask)
    y_jit, trace_jit = nnx.jit(run)(layer, x, mask)
    np.testing.assert_allclose(y_jit, y, atol=1e-6)
    assert isinstance(trace, GateTrace)
    np.testing.assert_array_equal(trace.mask, mask)
    assert trace.flat(), "every gated layer has at least one gate"
    for path, gate in trace.flat().items():
        np.testing.assert_allclose(trace_jit.flat()[path], gate, atol=1e-6)
        assert gate.shape[:2] == (2, 4), path
        values = np.asarray(gate)[np.asarray(mask)]
        assert np.all((values >= 0) & (values <= 1)), path
