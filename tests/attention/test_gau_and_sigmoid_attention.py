"""GatedAttentionUnit and SigmoidAttention against NumPy, with their gates and overrides."""

import math

import attention_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_testing import BIAS_INIT, KERNEL_INIT, inputs
from flax import nnx
from jax.test_util import check_grads

from gatenets import GatedAttentionUnit, SigmoidAttention


def make_gau(u_gate="silu", max_relative_distance=None, **kw):
    gau = GatedAttentionUnit(
        6,
        expansion_features=8,
        qk_features=4,
        out_features=5,
        u_gate=u_gate,
        max_relative_distance=max_relative_distance,
        kernel_init=KERNEL_INIT,
        bias_init=BIAS_INIT,
        rngs=nnx.Rngs(0),
        **kw,
    )
    # The paper's init (gamma ~ N(0, 0.02), beta = 0) makes a near-zero kernel; larger values
    # make the reference comparison exercise every term.
    gau.gamma[...] = inputs(1, 2, 4, seed=1)[0]
    gau.beta[...] = 0.5 * inputs(1, 2, 4, seed=2)[0]
    if max_relative_distance is not None:
        gau.relative_bias[...] = inputs(1, 1, 2 * max_relative_distance + 1, seed=3)[0, 0]
    return gau


def gau_params(gau):
    p = {
        "w": gau.uvz.kernel[...],
        "b": gau.uvz.bias[...],
        "gamma": gau.gamma[...],
        "beta": gau.beta[...],
        "wo": gau.out.kernel[...],
        "bo": gau.out.bias[...],
    }
    if gau.relative_bias is not None:
        p["rel"] = gau.relative_bias[...]
    return {k: ref.f64(v) for k, v in p.items()}


def make_sigmoid(num_heads=2, num_kv_heads=None, attention_bias=None, **kw):
    kw.setdefault("bias_init", BIAS_INIT)
    kw.setdefault("kernel_init", KERNEL_INIT)
    return SigmoidAttention(
        6,
        num_heads,
        num_kv_heads=num_kv_heads,
        attention_bias=attention_bias,
        rngs=nnx.Rngs(0),
        **kw,
    )


def sigmoid_params(layer):
    p = {}
    for name, module in [
        ("q", layer.query),
        ("k", layer.key),
        ("v", layer.value),
        ("o", layer.out),
    ]:
        p["w" + name] = ref.f64(module.kernel[...])
        p["b" + name] = ref.f64(module.bias[...])
    return p


def valid_of(lengths, time=5):
    if lengths is None:
        return np.ones((2, time), bool)
    return np.arange(time) < np.array(lengths)[:, None]


@pytest.mark.parametrize(
    "u_gate, distance, causal, lengths",
    [("silu", None, False, None), ("silu", 2, True, [3, 5]), ("sigmoid", 3, False, [5, 2])],
)
def test_gau_matches_numpy_reference(u_gate, distance, causal, lengths):
    gau = make_gau(u_gate, distance)
    x = inputs()
    seq_lengths = None if lengths is None else jnp.array(lengths)
    y, trace = gau(x, seq_lengths=seq_lengths, causal=causal, return_gates=True)
    want, want_gate = ref.gau(
        x, gau_params(gau), ref.allowed_keys(2, 5, lengths, causal), u_gate, None, distance
    )
    valid = valid_of(lengths)
    np.testing.assert_allclose(np.asarray(y)[valid], want[valid], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(y)[~valid], 0.0)
    gate = np.asarray(trace.gates["gau"].output)
    assert gate.shape == (2, 5, 8)
    np.testing.assert_allclose(gate[valid], want_gate[valid], atol=1e-6)
    assert np.all((gate > 0) & (gate < 1))


@pytest.mark.parametrize("u_gate", ["silu", "sigmoid"])
def test_gau_gate_override_replaces_the_sigmoid_factor(u_gate):
    gau = make_gau(u_gate)
    x = inputs()
    y, trace = gau(x, causal=True, return_gates=True, gate_overrides={"output": 0.25})
    want, _ = ref.gau(x, gau_params(gau), ref.allowed_keys(2, 5, None, True), u_gate, 0.25)
    np.testing.assert_allclose(y, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(trace.gates["gau"].output, 0.25)


def test_gau_is_causal_and_padding_matches_truncated_runs():
    gau = make_gau("silu", 2)
    x = inputs(time=6)
    y = gau(x, causal=True)
    for t in range(5):
        changed = x.at[:, t + 1 :].multiply(-3.0)
        np.testing.assert_allclose(gau(changed, causal=True)[:, : t + 1], y[:, : t + 1], atol=1e-6)
    lengths = jnp.array([4, 6])
    padded = jnp.where(jnp.arange(6)[None, :, None] < lengths[:, None, None], x, jnp.inf)
    for causal in (False, True):
        out = gau(padded, seq_lengths=lengths, causal=causal)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out[0, :4], gau(x[:1, :4], causal=causal)[0], atol=1e-6)
        np.testing.assert_allclose(out[1], gau(x[1:], causal=causal)[0], atol=1e-6)


@pytest.mark.parametrize(
    "num_heads, num_kv_heads, attention_bias, causal, lengths",
    [
        (2, None, None, False, None),
        (2, 1, None, True, [3, 5]),
        (3, None, -1.5, False, [5, 2]),
    ],
)
def test_sigmoid_attention_matches_numpy_reference(
    num_heads, num_kv_heads, attention_bias, causal, lengths
):
    layer = make_sigmoid(num_heads, num_kv_heads, attention_bias)
    x = inputs()
    seq_lengths = None if lengths is None else jnp.array(lengths)
    y, trace, weights = layer(
        x, seq_lengths=seq_lengths, causal=causal, return_gates=True, return_attention_weights=True
    )
    allowed = ref.allowed_keys(2, 5, lengths, causal)
    want, want_weights = ref.sigmoid_attention(x, sigmoid_params(layer), allowed, attention_bias)
    valid = valid_of(lengths)
    np.testing.assert_allclose(np.asarray(y)[valid], want[valid], atol=1e-5, rtol=1e-5)
    gates = np.asarray(trace.gates["attention"].weights)
    np.testing.assert_allclose(gates[valid], want_weights[valid], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(weights), gates.transpose(0, 2, 1, 3))
    # The weights are gates: strictly inside (0, 1) where attended, exactly 0 elsewhere.
    attended = np.broadcast_to((allowed & valid[:, :, None])[:, :, None, :], gates.shape)
    assert np.all((gates[attended] > 0) & (gates[attended] < 1))
    np.testing.assert_array_equal(gates[~attended], 0.0)


def test_sigmoid_attention_default_bias_is_minus_log_n_without_padding():
    # With q = k = 0 every logit is the bias alone, so each weight is sigmoid(-log n) = 1/(n+1).
    layer = make_sigmoid(bias_init=nnx.initializers.zeros_init())
    _, trace = layer(jnp.zeros((1, 4, 6)), return_gates=True)
    np.testing.assert_allclose(trace.gates["attention"].weights, 1.0 / 5.0, atol=1e-7)
    fixed = make_sigmoid(attention_bias=-math.log(10.0), bias_init=nnx.initializers.zeros_init())
    _, trace = fixed(jnp.zeros((1, 4, 6)), causal=True, return_gates=True)
    np.testing.assert_allclose(trace.gates["attention"].weights[0, 0, 0, 0], 1.0 / 11.0, rtol=1e-6)


def test_sigmoid_attention_override_keeps_masked_keys_at_zero():
    layer = make_sigmoid()
    x = inputs()
    y, trace = layer(
        x,
        causal=True,
        seq_lengths=jnp.array([4, 5]),
        return_gates=True,
        gate_overrides={"weights": 0.5},
    )
    allowed = ref.allowed_keys(2, 5, [4, 5], True)
    want, want_weights = ref.sigmoid_attention(
        x, sigmoid_params(layer), allowed, weights_override=0.5
    )
    valid = valid_of([4, 5])
    np.testing.assert_allclose(np.asarray(y)[valid], want[valid], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(trace.gates["attention"].weights)[valid], want_weights[valid]
    )


def test_sigmoid_attention_is_causal_and_ignores_padding_garbage():
    layer = make_sigmoid(num_kv_heads=1)
    x = inputs(time=6)
    y = layer(x, causal=True)
    for t in range(5):
        changed = x.at[:, t + 1 :].add(5.0)
        np.testing.assert_allclose(
            layer(changed, causal=True)[:, : t + 1], y[:, : t + 1], atol=1e-6
        )
    lengths = jnp.array([3, 6])
    padded = jnp.where(jnp.arange(6)[None, :, None] < lengths[:, None, None], x, jnp.nan)
    out = layer(padded, seq_lengths=lengths)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, :3], layer(x[:1, :3])[0], atol=1e-6)


@pytest.mark.parametrize("which", ["gau", "sigmoid"])
def test_gradients_match_finite_differences(which):
    if which == "gau":
        layer = GatedAttentionUnit(
            4,
            expansion_features=4,
            qk_features=2,
            max_relative_distance=1,
            kernel_init=KERNEL_INIT,
            rngs=nnx.Rngs(0),
        )
        layer.gamma[...] = jnp.array([[1.0, -0.7], [0.8, 1.2]])
        layer.beta[...] = jnp.array([[0.3, 0.1], [0.2, 0.4]])
        gate_path, field = "gau", "output"
    else:
        layer = SigmoidAttention(4, 2, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))
        gate_path, field = "attention", "weights"
    graphdef, params = nnx.split(layer)
    x = inputs(batch=1, time=3, features=4)

    def f(params, x):
        y, trace = nnx.merge(graphdef, params)(
            x, causal=True, seq_lengths=jnp.array([2]), return_gates=True
        )
        return jnp.sum(y**2) + jnp.sum(getattr(trace.gates[gate_path], field))

    check_grads(jax.jit(f), (params, x), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("which", ["gau", "sigmoid"])
def test_bfloat16_runs_under_jit_and_agrees_with_float32(which):
    def build(dtype):
        if which == "gau":
            return make_gau("silu", 2, dtype=dtype)
        return make_sigmoid(dtype=dtype)

    x = inputs()
    y16 = nnx.jit(lambda m, x: m(x, causal=True))(build(jnp.bfloat16), x)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(y16, np.float32), build(None)(x, causal=True), atol=1e-1, rtol=5e-2
    )
