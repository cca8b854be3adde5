"""Rotary positions against Hugging Face Llama's formula in NumPy, and KV-cache decoding
against the full computation of the same window."""

import attention_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_testing import BIAS_INIT, KERNEL_INIT, inputs
from flax import nnx

from gatenets import GatedAttention, RoPE, SigmoidAttention
from gatenets.attention import _core


@pytest.fixture(autouse=True)
def full_float32():
    """Comparisons that mean "the same function" run at full float32 (on NVIDIA GPUs JAX's
    default float32 matmul is TF32, about 1e-3 relative)."""
    with jax.default_matmul_precision("highest"):
        yield


def params_of(layer):
    p = {}
    for name in ("query", "key", "value", "out", "gate"):
        module = getattr(layer, name, None)
        if module is not None:
            p["w" + name[0]] = ref.f64(module.kernel[...])
            p["b" + name[0]] = ref.f64(module.bias[...])
    return p


@pytest.mark.parametrize("rotary_dim, base", [(None, 10000.0), (4, 500.0)])
def test_rope_matches_llama_rotate_half(rotary_dim, base):
    x = np.random.default_rng(0).normal(size=(2, 7, 3, 8)).astype(np.float32)
    positions = np.arange(3, 10)
    got = np.asarray(RoPE(rotary_dim, base).apply(jnp.asarray(x), jnp.asarray(positions)))
    for b in range(2):
        for h in range(3):
            want = ref.rope(x[b, :, h], positions, rotary_dim, base)
            np.testing.assert_allclose(got[b, :, h], want, atol=2e-6, rtol=1e-5)


def test_rope_dot_products_depend_on_distance_only():
    rng = np.random.default_rng(1)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 6)), jnp.float32) for _ in range(2))
    rope = RoPE()

    def score(i, j):
        qi = rope.apply(q, jnp.array([i]))
        kj = rope.apply(k, jnp.array([j]))
        return float(jnp.sum(qi * kj))

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


@pytest.mark.parametrize("family", ["gated", "sigmoid"])
def test_attention_with_rope_matches_numpy(family, monkeypatch):
    # Short sequences would take the materialised path: the blockwise one is what is checked.
    monkeypatch.setattr(_core, "MATERIALISE_BYTES", 0)
    rope = RoPE(rotary_dim=2, base=100.0)
    common = dict(kernel_init=KERNEL_INIT, bias_init=BIAS_INIT, rope=rope, rngs=nnx.Rngs(0))
    if family == "gated":
        layer = GatedAttention(8, 2, num_kv_heads=1, **common)
    else:
        layer = SigmoidAttention(8, 2, num_kv_heads=1, **common)
    x = inputs(2, 6, 8)
    lengths = [6, 4]
    allowed = ref.allowed_keys(2, 6, lengths, causal=True)
    rope_args = {"rotary_dim": 2, "base": 100.0}
    if family == "gated":
        want, *_ = ref.multi_head_attention(
            x, params_of(layer), allowed, gate_kind="elementwise", rope_args=rope_args
        )
    else:
        want, _ = ref.sigmoid_attention(x, params_of(layer), allowed, rope_args=rope_args)
    valid = np.arange(6) < np.array(lengths)[:, None]
    for weights in (False, True):  # the blockwise and the materialised path
        y = layer(x, seq_lengths=jnp.array(lengths), causal=True, return_attention_weights=weights)
        y = np.asarray(y[0] if weights else y)
        np.testing.assert_allclose(y[valid], want[valid], atol=1e-5, rtol=1e-5)


def test_rope_arguments_are_checked():
    with pytest.raises(ValueError, match="rope.rotary_dim must be None or an even int >= 2; got 3"):
        GatedAttention(8, 2, rope=RoPE(rotary_dim=3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"rope.rotary_dim must be at most head_dim = 4; got 6"):
        GatedAttention(8, 2, rope=RoPE(rotary_dim=6), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="head_dim = 3 is odd"):
        SigmoidAttention(6, 2, rope=RoPE(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"rope.base must be a number > 1; got 0.5"):
        GatedAttention(8, 2, rope=RoPE(base=0.5), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"rope must be None or a gatenets.RoPE.*got dict"):
        GatedAttention(8, 2, rope={"base": 10.0}, rngs=nnx.Rngs(0))


def _sliding(time, max_length):
    """``[1, query, key]``: each step sees itself and the max_length - 1 steps before it."""
    offsets = np.arange(time)[:, None] - np.arange(time)[None, :]
    return ((offsets >= 0) & (offsets < max_length))[None]


@pytest.mark.parametrize("family", ["gated", "sigmoid"])
@pytest.mark.parametrize("max_length", [4, 11, 16])  # shorter than, equal to, longer than
def test_decoding_equals_the_full_computation(family, max_length):
    rope = RoPE(rotary_dim=2, base=50.0)
    common = dict(kernel_init=KERNEL_INIT, bias_init=BIAS_INIT, rope=rope, rngs=nnx.Rngs(0))
    cls = GatedAttention if family == "gated" else SigmoidAttention
    layer = cls(8, 2, num_kv_heads=1, **common)
    time = 11
    x = inputs(1, time, 8, seed=3)
    rope_args = {"rotary_dim": 2, "base": 50.0}
    allowed = _sliding(time, max_length)
    if family == "gated":
        want, want_weights, want_gate = ref.multi_head_attention(
            x, params_of(layer), allowed, gate_kind="elementwise", rope_args=rope_args
        )
    else:
        want, want_weights = ref.sigmoid_attention(
            x, params_of(layer), allowed, rope_args=rope_args
        )
        want_weights = want_weights.transpose(0, 2, 1, 3)  # [batch, heads, query, key]
    layer.init_cache((1, max_length, 8))
    step = nnx.jit(
        lambda layer, x: layer(x, decode=True, return_gates=True, return_attention_weights=True)
    )
    for t in range(time):
        y, trace, weights = step(layer, x[:, t : t + 1])
        np.testing.assert_allclose(np.asarray(y)[0, 0], want[0, t], atol=1e-5, rtol=1e-5)
        # Slot s holds the step p = s (mod max_length) of the window ending at t.
        window = np.arange(max(0, t - max_length + 1), t + 1)
        slots = np.asarray(weights)[0, :, 0]
        np.testing.assert_allclose(
            slots[:, window % max_length], want_weights[0][:, t][:, window], atol=1e-6
        )
        if t < max_length - 1:
            np.testing.assert_array_equal(slots[:, t + 1 :], 0.0)
        if family == "gated":
            got_gate = np.asarray(trace.gates["attention"].output)[0, 0]
            np.testing.assert_allclose(got_gate, want_gate[0, t], atol=1e-6)
        else:
            # Sigmoid attention's gates are its weights: [batch, 1, heads, slots].
            got = np.asarray(trace.gates["attention"].weights)[0, 0]
            np.testing.assert_array_equal(got, slots)
    assert int(layer.cache_index[...]) == time
    # The same layer recomputing the last window from scratch: the prompt a cache replaces.
    start = max(0, time - max_length)
    full = layer(x[:, start:], causal=True)
    np.testing.assert_allclose(np.asarray(y)[0, 0], np.asarray(full)[0, -1], atol=1e-5, rtol=1e-5)


def test_decoding_errors():
    layer = GatedAttention(8, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"decode=True needs a cache; call init_cache"):
        layer(jnp.ones((1, 1, 8)), decode=True)
    layer.init_cache((2, 5, 8))
    with pytest.raises(ValueError, match=r"one step per call.*\[2, 1, 8\].*got \(2, 3, 8\)"):
        layer(jnp.ones((2, 3, 8)), decode=True)
    with pytest.raises(ValueError, match="decode=True takes no mask or seq_lengths"):
        layer(jnp.ones((2, 1, 8)), decode=True, seq_lengths=jnp.array([1, 1]))
    with pytest.raises(ValueError, match=r"input_shape must be \(batch, max_length, in_features\)"):
        layer.init_cache((2, 5))
    with pytest.raises(ValueError, match=r"input_shape\[2\] must be in_features = 8; got 6"):
        layer.init_cache((2, 5, 6))
    with pytest.raises(TypeError, match="decode must be a Python bool"):
        layer(jnp.ones((2, 1, 8)), decode=1)
