"""The memory-efficient paths compute what the materialised path computes: values and
gradients, every family, every kind of mask, grouped-query heads, float32 and bfloat16, with
several blocks (lengths that are and are not a multiple of the block)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_testing import BIAS_INIT, KERNEL_INIT, inputs
from flax import nnx

from gatenets import GatedAttention, GatedAttentionUnit, RoPE, SigmoidAttention
from gatenets.attention import _core

BLOCK = 16


@pytest.fixture(autouse=True)
def full_float32():
    """Comparisons that mean "the same function" run at full float32 (on NVIDIA GPUs JAX's
    default float32 matmul is TF32, about 1e-3 relative)."""
    with jax.default_matmul_precision("highest"):
        yield


def make(family, implementation, *, num_kv_heads=None, dtype=None, **extra):
    common = dict(
        kernel_init=KERNEL_INIT,
        bias_init=BIAS_INIT,
        implementation=implementation,
        block_size=BLOCK,
        dtype=dtype,
        rngs=nnx.Rngs(0),
    )
    if family == "gau":
        return GatedAttentionUnit(8, qk_features=8, expansion_features=12, **common, **extra)
    if family == "sigmoid":
        return SigmoidAttention(8, 4, num_kv_heads=num_kv_heads, **common, **extra)
    gate = {"gated": "elementwise", "headwise": "headwise", "plain": None}[family]
    return GatedAttention(8, 4, num_kv_heads=num_kv_heads, gate=gate, **common, **extra)


def run(layer, x, cotangent, call):
    graphdef, state = nnx.split(layer)

    def loss(state, x):
        out = nnx.merge(graphdef, state)(x, **call)
        return jnp.sum(out.astype(jnp.float32) * cotangent), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(state, x)
    return out, grads


def padding(kind, batch, time):
    if kind == "lengths":
        return {"seq_lengths": jnp.array([time, time - 11][:batch], jnp.int32)}
    if kind == "holes":
        mask = np.ones((batch, time), bool)
        mask[0, 3:7] = False
        mask[-1, time - 5 :] = False
        return {"mask": jnp.asarray(mask)}
    return {}


CASES = [
    # family, time, causal, padding, num_kv_heads, dtype, extra
    ("gated", 37, True, None, None, jnp.float32, {}),
    ("gated", 37, True, "lengths", 2, jnp.float32, {"rope": RoPE(rotary_dim=2)}),
    ("headwise", 32, False, "lengths", 2, jnp.float32, {}),
    ("plain", 37, True, "holes", None, jnp.float32, {}),
    ("gated", 37, False, "holes", 1, jnp.bfloat16, {}),
    ("sigmoid", 37, True, None, None, jnp.float32, {}),
    ("sigmoid", 37, False, "holes", 2, jnp.float32, {}),
    ("sigmoid", 32, True, "lengths", None, jnp.float32, {"attention_bias": -3.0}),
    ("sigmoid", 37, True, "lengths", 2, jnp.bfloat16, {}),
    ("gau", 37, True, None, None, jnp.float32, {"max_relative_distance": 5}),
    ("gau", 37, False, "holes", None, jnp.float32, {}),
    ("gau", 32, True, "lengths", None, jnp.bfloat16, {"max_relative_distance": 3}),
    ("gated", 9, True, None, None, jnp.float32, {}),  # one block, shorter than block_size
]


@pytest.mark.parametrize("family,time,causal,pad,num_kv_heads,dtype,extra", CASES)
def test_blockwise_equals_materialised(family, time, causal, pad, num_kv_heads, dtype, extra):
    kv = {} if family == "gau" else {"num_kv_heads": num_kv_heads}
    compute = None if dtype == jnp.float32 else dtype
    dense = make(family, "materialised", dtype=compute, **kv, **extra)
    blocks = make(family, "blockwise", dtype=compute, **kv, **extra)
    x = inputs(2, time, 8, seed=1)
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=(2, time, 8)), jnp.float32)
    call = {"causal": causal, **padding(pad, 2, time)}
    out_dense, grads_dense = run(dense, x, cotangent, call)
    out_blocks, grads_blocks = run(blocks, x, cotangent, call)
    if dtype == jnp.float32:
        rtol, atol = 2e-5, 2e-5
    else:
        rtol, atol = 3e-2, 3e-2
    scale = float(jnp.max(jnp.abs(out_dense.astype(jnp.float32))))
    np.testing.assert_allclose(
        np.asarray(out_blocks, np.float32), np.asarray(out_dense, np.float32), rtol, atol * scale
    )
    leaves_dense = jax.tree_util.tree_leaves(grads_dense)
    leaves_blocks = jax.tree_util.tree_leaves(grads_blocks)
    assert len(leaves_dense) == len(leaves_blocks) > 2
    # One scale for all gradients: some are zero in exact arithmetic (a key bias shifts a
    # softmax row by a constant), so their own size says nothing about the rounding.
    grad_scale = max(float(np.abs(np.asarray(b, np.float32)).max()) for b in leaves_dense)
    for a, b in zip(leaves_blocks, leaves_dense, strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol, atol * grad_scale)


def test_softmax_core_matches_jax_reference_with_multiple_blocks():
    """The online softmax against jax.nn.dot_product_attention (XLA), grouped heads, causal
    with right padding: an implementation that shares no code with gatenets."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 45, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 45, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 45, 2, 8)), jnp.float32)
    lengths = jnp.array([45, 30], jnp.int32)
    valid = jnp.arange(45)[None] < lengths[:, None]
    kernel = _core.BlockwiseKernel("softmax", 1 / np.sqrt(8))
    with jax.default_matmul_precision("highest"):
        ours = _core.blockwise_attention(
            q, k, v, kernel, key_valid=valid, causal=True, block_size=16
        )
        theirs = jax.nn.dot_product_attention(
            q, k, v, is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths
        )
    keep = np.asarray(valid)[:, :, None, None]
    np.testing.assert_allclose(np.where(keep, ours, 0), np.where(keep, theirs, 0), atol=2e-6)


def _shapes(jaxpr):
    """Every shape of every variable in ``jaxpr`` and the jaxprs nested in it."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _shapes(inner)
            elif isinstance(param, tuple | list):
                for item in param:
                    item = getattr(item, "jaxpr", item)
                    if hasattr(item, "eqns"):
                        yield from _shapes(item)


def _has_square(layer, time, **call):
    graphdef, state = nnx.split(layer)

    def f(state, x):
        out = nnx.merge(graphdef, state)(x, **call)
        return jax.tree_util.tree_leaves(out)[0].sum()

    jaxpr = jax.make_jaxpr(jax.grad(f))(state, inputs(1, time, 8))
    return any(sum(d == time for d in shape) >= 2 for shape in _shapes(jaxpr.jaxpr))


@pytest.mark.parametrize("family", ["gated", "sigmoid", "gau"])
def test_no_time_by_time_array_unless_weights_are_asked_for(family, monkeypatch):
    time = 48  # three blocks of 16
    layer = make(family, None)
    # Small logits are materialised by the rule (faster there); long sequences stream.
    assert _has_square(layer, time, causal=True)
    monkeypatch.setattr(_core, "MATERIALISE_BYTES", 0)
    call = {"causal": True}
    if family == "gated":  # the gate trace streams: asking for gates builds no [T, T] either
        call["return_gates"] = True
    assert not _has_square(layer, time, **call)
    if family == "gated":
        assert _has_square(layer, time, causal=True, return_attention_weights=True)
    if family == "sigmoid":  # its gates are the weights
        assert _has_square(layer, time, causal=True, return_gates=True)


def test_choose_path_rule():
    choose = _core.choose_path
    base = dict(implementation=None, dtype=jnp.float32, head_dim=64, has_holes=False, where="L")
    assert choose(kind="softmax", weights_needed=True, **base) == "materialised"
    expected = "cudnn" if jax.default_backend() == "gpu" else "blockwise"
    assert choose(kind="softmax", weights_needed=False, **{**base, "dtype": jnp.bfloat16}) == (
        expected
    )
    assert choose(kind="softmax", weights_needed=False, **base) == "blockwise"  # float32
    assert choose(kind="sigmoid", weights_needed=False, **base) == "blockwise"
    forced = {**base, "implementation": "materialised"}
    assert choose(kind="squared_relu", weights_needed=False, **forced) == "materialised"
    small, large = _core.MATERIALISE_BYTES, _core.MATERIALISE_BYTES + 1
    assert choose(kind="sigmoid", weights_needed=False, logits_bytes=small, **base) == (
        "materialised"
    )
    assert choose(kind="sigmoid", weights_needed=False, logits_bytes=large, **base) == "blockwise"
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="implementation='cudnn' cannot run this call: it "):
            choose(kind="softmax", weights_needed=False, **{**base, "implementation": "cudnn"})


def test_path_arguments_are_checked():
    with pytest.raises(ValueError, match=r"implementation must be None .* got 'flash'"):
        make("gated", "flash")
    with pytest.raises(ValueError, match="implementation='cudnn' runs softmax attention only"):
        make("sigmoid", "cudnn")
    with pytest.raises(ValueError, match="block_size must be a positive int; got 0"):
        GatedAttention(8, 2, block_size=0, rngs=nnx.Rngs(0))


@pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="cuDNN's fused attention needs an NVIDIA GPU"
)
@pytest.mark.parametrize("causal, lengths, num_kv_heads", [(True, True, 2), (False, False, None)])
def test_cudnn_equals_materialised(causal, lengths, num_kv_heads):
    def layer(implementation):
        return GatedAttention(
            32, 4, num_kv_heads=num_kv_heads, dtype=jnp.bfloat16, kernel_init=KERNEL_INIT,
            bias_init=BIAS_INIT, implementation=implementation, rngs=nnx.Rngs(0),
        )  # fmt: skip

    x = inputs(2, 40, 32, seed=4)
    cotangent = jnp.asarray(np.random.default_rng(5).normal(size=(2, 40, 32)), jnp.float32)
    call = {"causal": causal}
    if lengths:
        call["seq_lengths"] = jnp.array([40, 23], jnp.int32)
    out_dense, grads_dense = run(layer("materialised"), x, cotangent, call)
    out_cudnn, grads_cudnn = run(layer("cudnn"), x, cotangent, call)
    scale = float(jnp.max(jnp.abs(out_dense.astype(jnp.float32))))
    np.testing.assert_allclose(
        np.asarray(out_cudnn, np.float32), np.asarray(out_dense, np.float32), 3e-2, 3e-2 * scale
    )
    leaves = jax.tree_util.tree_leaves(grads_dense)
    grad_scale = max(float(np.abs(np.asarray(b, np.float32)).max()) for b in leaves)
    for a, b in zip(jax.tree_util.tree_leaves(grads_cudnn), leaves, strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), 3e-2, 3e-2 * grad_scale
        )
