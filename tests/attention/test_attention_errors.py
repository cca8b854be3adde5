"""Bad input raises in Python, at trace time, naming the argument, what came and what was
expected. Call-time cases also run under ``nnx.jit`` to show nothing reaches the compiler."""

import re

import jax.numpy as jnp
import pytest
from attention_testing import KERNEL_INIT
from flax import nnx

from gatenets import (
    BinaryHead,
    GatedAttention,
    GatedAttentionUnit,
    GatedFeedForward,
    SigmoidAttention,
    SigmoidMoE,
    SigmoidRouter,
)

X = jnp.ones((2, 5, 6))


def rngs():
    return nnx.Rngs(0)


def inits():
    return {"kernel_init": KERNEL_INIT, "rngs": rngs()}


CONSTRUCTION_ERRORS = {
    "heads_do_not_divide_features": (
        lambda: GatedAttention(6, 4, rngs=rngs()),
        ValueError,
        "num_heads must divide in_features when head_dim is not given; got num_heads=4 and "
        "in_features=6",
    ),
    "kv_heads_do_not_divide_heads": (
        lambda: GatedAttention(6, 2, head_dim=3, num_kv_heads=3, rngs=rngs()),
        ValueError,
        "num_kv_heads must divide num_heads (each key/value head serves a group of query "
        "heads); got num_kv_heads=3 and num_heads=2",
    ),
    "sigmoid_attention_heads_do_not_divide": (
        lambda: SigmoidAttention(6, 5, rngs=rngs()),
        ValueError,
        "SigmoidAttention: num_heads must divide in_features when head_dim is not given; got "
        "num_heads=5 and in_features=6",
    ),
    "unknown_gate_kind": (
        lambda: GatedAttention(6, 2, gate="channelwise", rngs=rngs()),
        ValueError,
        "gate must be one of ('elementwise', 'headwise') or None; got 'channelwise'",
    ),
    "zero_heads": (
        lambda: GatedAttention(6, 0, rngs=rngs()),
        ValueError,
        "num_heads must be a positive int; got 0",
    ),
    "unknown_u_gate": (
        lambda: GatedAttentionUnit(6, u_gate="tanh", rngs=rngs()),
        ValueError,
        "u_gate must be one of ('silu', 'sigmoid'); got 'tanh'",
    ),
    "non_finite_attention_bias": (
        lambda: SigmoidAttention(6, 2, attention_bias=float("-inf"), rngs=rngs()),
        ValueError,
        "attention_bias must be None (for -log of the number of attended keys) or a finite "
        "float; got -inf",
    ),
    "top_k_above_num_experts": (
        lambda: SigmoidRouter(6, 4, top_k=5, rngs=rngs()),
        ValueError,
        "top_k must be at most num_experts = 4; got top_k=5",
    ),
    "negative_bias_update_rate": (
        lambda: SigmoidRouter(6, 4, top_k=2, bias_update_rate=-0.1, rngs=rngs()),
        ValueError,
        "bias_update_rate must be finite and >= 0; got -0.1",
    ),
    "unknown_activation": (
        lambda: GatedFeedForward(6, 8, activation="relu", rngs=rngs()),
        ValueError,
        "activation must be one of ('silu', 'sigmoid'); got 'relu'",
    ),
}


@pytest.mark.parametrize("case", sorted(CONSTRUCTION_ERRORS))
def test_construction_error(case):
    build, error, message = CONSTRUCTION_ERRORS[case]
    with pytest.raises(error, match=re.escape(message)):
        build()


def attention():
    return GatedAttention(6, 2, **inits())


CALL_ERRORS = {
    "wrong_feature_size": (
        attention,
        lambda m, x: m(jnp.ones((2, 5, 7))),
        ValueError,
        "GatedAttention: inputs must have shape [batch, time, in_features] = "
        "[batch, time, 6]; got (2, 5, 7)",
    ),
    "inputs_without_time_axis": (
        lambda: GatedAttentionUnit(6, qk_features=4, **inits()),
        lambda m, x: m(x[:, 0]),
        ValueError,
        "GatedAttentionUnit: inputs must have shape [batch, time, in_features] = "
        "[batch, time, 6]; got (2, 6)",
    ),
    "mask_of_wrong_shape": (
        attention,
        lambda m, x: m(x, mask=jnp.ones((2, 4), bool)),
        ValueError,
        "mask must have shape [batch, time] = (2, 5); got (2, 4)",
    ),
    "mask_not_boolean": (
        lambda: SigmoidAttention(6, 2, **inits()),
        lambda m, x: m(x, mask=jnp.ones((2, 5), jnp.int32)),
        TypeError,
        "mask must be boolean (True at valid steps); got dtype int32",
    ),
    "seq_lengths_of_wrong_shape": (
        attention,
        lambda m, x: m(x, seq_lengths=jnp.array([5, 5, 5])),
        ValueError,
        "seq_lengths must have shape [batch] = (2,); got (3,)",
    ),
    "unknown_gate_override": (
        attention,
        lambda m, x: m(x, gate_overrides={"forget": 1.0}),
        ValueError,
        "gate_overrides for GatedAttention: unknown gate 'forget'; this layer's gates are "
        "('output',)",
    ),
    "override_on_ungated_attention": (
        lambda: GatedAttention(6, 2, gate=None, **inits()),
        lambda m, x: m(x, gate_overrides={"output": 0.0}),
        ValueError,
        "gate_overrides for GatedAttention: unknown gate 'output'; this layer's gates are ()",
    ),
    "unknown_gau_override": (
        lambda: GatedAttentionUnit(6, qk_features=4, **inits()),
        lambda m, x: m(x, gate_overrides={"u": 0.0}),
        ValueError,
        "gate_overrides for GatedAttentionUnit: unknown gate 'u'; this layer's gates are "
        "('output',)",
    ),
    "unknown_moe_override": (
        lambda: SigmoidMoE(6, 4, num_experts=3, top_k=1, router_kernel_init=KERNEL_INIT, **inits()),
        lambda m, x: m(x, gate_overrides={"weights": 0.0}),
        ValueError,
        "gate_overrides for SigmoidRouter: unknown gate 'weights'; this layer's gates are "
        "('scores',)",
    ),
    "overrides_not_a_mapping": (
        lambda: SigmoidAttention(6, 2, **inits()),
        lambda m, x: m(x, gate_overrides=[("weights", 0.0)]),
        TypeError,
        "gate_overrides for SigmoidAttention must be a mapping from gate name to a constant or "
        "a function; got list",
    ),
    "traced_return_gates": (
        attention,
        lambda m, x: m(x, return_gates=jnp.array(True)),
        TypeError,
        "GatedAttention: return_gates must be a Python bool (a static switch, fixed at trace "
        "time); got",
    ),
    "integer_inputs": (
        attention,
        lambda m, x: m(x.astype(jnp.int32)),
        TypeError,
        "GatedAttention: inputs must hold floats; got dtype int32",
    ),
    "update_bias_wrong_shape": (
        lambda: SigmoidRouter(6, 4, top_k=2, **inits()),
        lambda m, x: m.update_bias(jnp.ones((3,))),
        ValueError,
        "SigmoidRouter.update_bias: load must have shape [num_experts] = (4,); got (3,)",
    ),
    "feed_forward_gates_without_time_axis": (
        lambda: GatedFeedForward(6, 8, **inits()),
        lambda m, x: m(x[:, 0], return_gates=True),
        ValueError,
        "GatedFeedForward: return_gates, mask and seq_lengths need inputs of shape [batch, "
        "time, in_features]; got (2, 6)",
    ),
    "binary_head_wrong_feature_size": (
        lambda: BinaryHead(6, **inits()),
        lambda m, x: m(x[..., :4]),
        ValueError,
        "BinaryHead: inputs must have shape [..., in_features] = [..., 6]; got (2, 5, 4)",
    ),
    "binary_head_labels_wrong_shape": (
        lambda: BinaryHead(6, **inits()),
        lambda m, x: m.loss(x, jnp.ones((2, 5, 1))),
        ValueError,
        "BinaryHead.loss: labels must have the shape of the logits, inputs.shape[:-1] = "
        "(2, 5); got (2, 5, 1)",
    ),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", sorted(CALL_ERRORS))
def test_call_error(case, jit):
    build, call, error, message = CALL_ERRORS[case]
    module = build()
    run = nnx.jit(call) if jit else call
    with pytest.raises(error, match=re.escape(message)):
        run(module, X)
