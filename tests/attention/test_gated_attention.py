"""GatedAttention against NumPy and Flax, its gate, overrides, gradients and dtypes."""

import attention_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_testing import BIAS_INIT, KERNEL_INIT, inputs
from flax import nnx
from jax.test_util import check_grads

from gatenets import GatedAttention, GateTrace


def make(gate="elementwise", num_heads=2, num_kv_heads=None, in_features=6, **kw):
    return GatedAttention(
        in_features,
        num_heads,
        num_kv_heads=num_kv_heads,
        gate=gate,
        kernel_init=KERNEL_INIT,
        bias_init=BIAS_INIT,
        rngs=nnx.Rngs(0),
        **kw,
    )


def params_of(layer):
    p = {}
    for name, module in [
        ("q", layer.query),
        ("k", layer.key),
        ("v", layer.value),
        ("o", layer.out),
    ]:
        p["w" + name] = ref.f64(module.kernel[...])
        p["b" + name] = ref.f64(module.bias[...])
    if layer.gate is not None:
        p["wg"] = ref.f64(layer.gate.kernel[...])
        p["bg"] = ref.f64(layer.gate.bias[...])
    return p


@pytest.mark.parametrize(
    "gate, num_heads, num_kv_heads, head_dim, causal, lengths",
    [
        ("elementwise", 2, None, None, False, None),
        ("headwise", 4, 2, 2, True, None),
        ("elementwise", 2, 1, 5, True, [3, 5]),
        (None, 2, None, None, False, [5, 2]),
    ],
)
def test_matches_numpy_reference(gate, num_heads, num_kv_heads, head_dim, causal, lengths):
    layer = make(gate, num_heads, num_kv_heads, head_dim=head_dim)
    x = inputs()
    seq_lengths = None if lengths is None else jnp.array(lengths)
    y, trace, weights = layer(
        x,
        seq_lengths=seq_lengths,
        causal=causal,
        return_gates=True,
        return_attention_weights=True,
    )
    allowed = ref.allowed_keys(2, 5, lengths, causal)
    want, want_weights, want_gate = ref.multi_head_attention(
        x, params_of(layer), allowed, gate_kind=gate
    )
    valid = np.ones((2, 5), bool) if lengths is None else np.arange(5) < np.array(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(y)[valid], want[valid], atol=1e-5, rtol=1e-5)
    rows, steps = valid.nonzero()
    np.testing.assert_allclose(
        np.asarray(weights)[rows, :, steps], want_weights[rows, :, steps], atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(y)[~valid], 0.0)
    np.testing.assert_array_equal(trace.mask, valid)
    if gate is None:
        assert trace.gates == {}
    else:
        np.testing.assert_allclose(
            np.asarray(trace.gates["attention"].output)[valid], want_gate[valid], atol=1e-6
        )


def test_gate_none_equals_flax_multi_head_attention():
    flax_mha = nnx.MultiHeadAttention(
        num_heads=2,
        in_features=6,
        out_features=5,
        decode=False,
        kernel_init=KERNEL_INIT,
        bias_init=BIAS_INIT,
        rngs=nnx.Rngs(1),
    )
    layer = GatedAttention(
        6, 2, gate=None, out_features=5, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(2)
    )
    for name in ("query", "key", "value", "out"):
        ours, theirs = getattr(layer, name), getattr(flax_mha, name)
        ours.kernel[...] = theirs.kernel[...]
        ours.bias[...] = theirs.bias[...]
    x = inputs()
    np.testing.assert_allclose(layer(x), flax_mha(x), atol=1e-6)
    causal = nnx.make_causal_mask(jnp.ones((2, 5)))
    np.testing.assert_allclose(layer(x, causal=True), flax_mha(x, mask=causal), atol=1e-6)


def test_gates_lie_in_open_unit_interval():
    for gate, shape in [("elementwise", (2, 5, 2, 3)), ("headwise", (2, 5, 2))]:
        _, trace = make(gate)(inputs(), causal=True, return_gates=True)
        assert isinstance(trace, GateTrace)
        g = np.asarray(trace.gates["attention"].output)
        assert g.shape == shape
        assert np.all((g > 0) & (g < 1))


@pytest.mark.parametrize("c", [0.0, 0.3, 1.0])
def test_headwise_gate_overridden_to_constant_scales_pre_projection_output(c):
    layer = make("headwise")
    x = inputs()
    bias = np.asarray(layer.out.bias[...])
    ungated = np.asarray(layer(x, gate_overrides={"output": 1.0})) - bias
    scaled = np.asarray(layer(x, gate_overrides={"output": c})) - bias
    np.testing.assert_allclose(scaled, c * ungated, atol=1e-6)
    # A gate held at 1 is no gate: the plain layer with the same projections.
    plain = make(None)
    for name in ("query", "key", "value", "out"):
        getattr(plain, name).kernel[...] = getattr(layer, name).kernel[...]
        getattr(plain, name).bias[...] = getattr(layer, name).bias[...]
    np.testing.assert_allclose(ungated + bias, plain(x), atol=1e-6)


def test_function_override_replaces_gate_in_the_computation():
    layer = make("elementwise")
    x = inputs()
    y, trace = layer(x, return_gates=True, gate_overrides={"output": lambda g: 1.0 - g})
    p = params_of(layer)
    gate = 1.0 - ref.sigmoid(np.tensordot(ref.f64(x), p["wg"], axes=([2], [0])) + p["bg"])
    want, _, _ = ref.multi_head_attention(
        x, p, ref.allowed_keys(2, 5), gate=gate, gate_kind="elementwise"
    )
    np.testing.assert_allclose(y, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(trace.gates["attention"].output, gate, atol=1e-6)


def test_causal_output_ignores_the_future():
    layer = make("elementwise")
    x = inputs(time=6)
    y = layer(x, causal=True)
    for t in range(5):
        changed = x.at[:, t + 1 :].set(inputs(2, 5 - t, 6, seed=t + 7))
        np.testing.assert_allclose(
            layer(changed, causal=True)[:, : t + 1], y[:, : t + 1], atol=1e-6
        )
        assert not np.allclose(layer(changed, causal=True)[:, t + 1 :], y[:, t + 1 :])


def test_padding_garbage_does_not_reach_valid_steps_and_matches_truncated_runs():
    layer = make("elementwise", num_kv_heads=1)
    x = inputs(time=6)
    lengths = jnp.array([4, 6])
    padded = jnp.where(jnp.arange(6)[None, :, None] < lengths[:, None, None], x, jnp.nan)
    for causal in (False, True):
        y = layer(padded, seq_lengths=lengths, causal=causal)
        assert np.all(np.isfinite(y))
        np.testing.assert_allclose(y[0, :4], layer(x[:1, :4], causal=causal)[0], atol=1e-6)
        np.testing.assert_allclose(y[1], layer(x[1:], causal=causal)[0], atol=1e-6)
        np.testing.assert_array_equal(y[0, 4:], 0.0)
    mask = jnp.array([[True, True, False, True, False, True]] * 2)
    y_mask = layer(x, mask=mask)
    junk = x.at[:, jnp.array([2, 4])].set(1e6)
    np.testing.assert_allclose(layer(junk, mask=mask), y_mask, atol=1e-6)


def test_jit_matches_eager_and_switches_are_static():
    layer = make("headwise")
    x = inputs()

    @nnx.jit(static_argnames=("return_gates",))
    def run(layer, x, return_gates):
        return layer(x, causal=True, return_gates=return_gates)

    y_eager, trace_eager = layer(x, causal=True, return_gates=True)
    y_jit, trace_jit = run(layer, x, True)
    np.testing.assert_allclose(y_jit, y_eager, atol=1e-6)
    np.testing.assert_allclose(
        trace_jit.gates["attention"].output, trace_eager.gates["attention"].output, atol=1e-6
    )
    np.testing.assert_allclose(run(layer, x, False), y_eager, atol=1e-6)


def test_gradients_match_finite_differences():
    layer = make("elementwise", num_heads=2, in_features=4)
    graphdef, params = nnx.split(layer)
    x = inputs(batch=1, time=3, features=4)
    lengths = jnp.array([2])

    def f(params, x):
        y, trace = nnx.merge(graphdef, params)(
            x, causal=True, seq_lengths=lengths, return_gates=True
        )
        return jnp.sum(y**2) + jnp.sum(trace.gates["attention"].output)

    check_grads(jax.jit(f), (params, x), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_bfloat16_runs_and_agrees_with_float32():
    layer32 = make("elementwise")
    layer16 = make("elementwise", dtype=jnp.bfloat16)
    x = inputs()
    y16, trace16 = nnx.jit(lambda m, x: m(x, causal=True, return_gates=True))(layer16, x)
    assert y16.dtype == jnp.bfloat16
    assert trace16.gates["attention"].output.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(y16, np.float32), layer32(x, causal=True), atol=6e-2, rtol=6e-2
    )
    params16 = make("elementwise", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    y = params16(x.astype(jnp.bfloat16), causal=True)
    assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))
