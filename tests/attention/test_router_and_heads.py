"""SigmoidRouter, SigmoidMoE, GatedFeedForward and BinaryHead against NumPy."""

import attention_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from attention_testing import BIAS_INIT, KERNEL_INIT, inputs
from flax import nnx
from jax.test_util import check_grads

from gatenets import BinaryHead, ExpertBias, GatedFeedForward, SigmoidMoE, SigmoidRouter


def moe_inits():
    return dict(kernel_init=KERNEL_INIT, router_kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("scale, normalize", [(1.0, True), (2.5, True), (1.0, False)])
def test_router_chooses_by_biased_scores_and_weighs_by_unbiased_ones(scale, normalize):
    router = SigmoidRouter(
        6,
        6,
        top_k=2,
        routed_scaling_factor=scale,
        normalize=normalize,
        kernel_init=KERNEL_INIT,
        rngs=nnx.Rngs(0),
    )
    expert_bias = np.array([0.0, 0.3, -0.2, 0.0, 0.15, -0.4], np.float32)
    router.expert_bias[...] = jnp.asarray(expert_bias)
    x = inputs()
    routing = router(x)
    experts, weights, scores = ref.route(
        x, router.kernel[...], expert_bias, 2, scale=scale, normalize=normalize
    )
    np.testing.assert_array_equal(routing.experts, experts)
    np.testing.assert_allclose(routing.weights, weights, atol=1e-6)
    np.testing.assert_allclose(routing.scores, scores, atol=1e-6)
    if normalize:
        np.testing.assert_allclose(np.sum(routing.weights, -1), scale, rtol=1e-6)
    # The bias must matter here, or this test could not tell biased from unbiased choice.
    unbiased_choice, _, _ = ref.route(x, router.kernel[...], np.zeros(6), 2)
    assert np.any(np.sort(unbiased_choice, -1) != np.sort(experts, -1))
    counts = np.bincount(experts.ravel(), minlength=6) / experts.size
    np.testing.assert_allclose(routing.load, counts, atol=1e-7)


def test_router_bias_is_state_not_a_trainable_parameter():
    router = SigmoidRouter(4, 5, top_k=2, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))
    assert isinstance(router.expert_bias, ExpertBias)
    assert not isinstance(router.expert_bias, nnx.Param)
    assert "expert_bias" not in nnx.state(router, nnx.Param)
    grads = nnx.grad(lambda r: jnp.sum(r(inputs(features=4)).weights ** 2))(router)
    assert set(grads.keys()) == {"kernel"}


def test_bias_update_moves_a_skewed_load_towards_balance():
    router = SigmoidRouter(4, 4, top_k=1, bias_update_rate=0.02, rngs=nnx.Rngs(0))
    # Expert i scores sigmoid(x_i), and every token leans towards expert 0.
    router.kernel[...] = jnp.eye(4)
    x = jnp.array([2.0, 1.0, 0.5, 0.0])[None, None, :] + 0.3 * inputs(4, 16, 4, seed=1)

    @nnx.jit
    def step(router, x):
        load = router(x).load
        router.update_bias(load)
        return load

    first = np.asarray(step(router, x))
    loads = [np.asarray(step(router, x)) for _ in range(100)]
    last = np.mean(loads[-20:], axis=0)
    assert first[0] > 0.9, first
    assert last.max() < 0.35 and last.min() > 0.15, (first, last)
    # Overloaded experts were pushed down and idle ones up.
    bias = np.asarray(router.expert_bias[...])
    assert bias[0] < 0 < bias[3], bias


def test_router_padding_gets_no_weight_and_no_load():
    router = SigmoidRouter(6, 4, top_k=2, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))
    x = inputs()
    lengths = jnp.array([3, 5])
    routing, trace = router(x.at[0, 3:].set(jnp.nan), seq_lengths=lengths, return_gates=True)
    np.testing.assert_array_equal(routing.weights[0, 3:], 0.0)
    valid = np.asarray(trace.mask)
    experts = np.asarray(routing.experts)[valid]
    np.testing.assert_allclose(
        routing.load, np.bincount(experts.ravel(), minlength=4) / experts.size, atol=1e-7
    )
    scores = np.asarray(trace.gates["router"].scores)
    assert np.all((scores > 0) & (scores < 1))


def test_router_score_override_changes_the_choice():
    router = SigmoidRouter(6, 4, top_k=1, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))
    favour_three = lambda s: s.at[..., 3].set(0.999)  # noqa: E731
    routing = router(inputs(), gate_overrides={"scores": favour_three})
    np.testing.assert_array_equal(routing.experts, 3)
    np.testing.assert_allclose(routing.weights, 1.0, rtol=1e-6)


def test_moe_matches_numpy_reference_and_zeroes_padding():
    moe = SigmoidMoE(6, 5, num_experts=4, top_k=2, out_features=3, **moe_inits())
    moe.router.expert_bias[...] = jnp.array([0.1, -0.1, 0.0, 0.2])
    x = inputs()
    lengths = jnp.array([5, 3])
    y, trace, routing = moe(x, seq_lengths=lengths, return_gates=True, return_routing=True)
    experts, weights, _ = ref.route(x, moe.router.kernel[...], np.array([0.1, -0.1, 0.0, 0.2]), 2)
    w_gate, w_up, w_down = (
        ref.f64(k[...]) for k in (moe.gate_kernel, moe.up_kernel, moe.down_kernel)
    )
    want = np.zeros((2, 5, 3))
    for b, t in np.ndindex(2, 5):
        for slot in range(2):
            e = experts[b, t, slot]
            expert_out = ref.swiglu_expert(ref.f64(x[b, t]), w_gate[e], w_up[e], w_down[e])
            want[b, t] += weights[b, t, slot] * expert_out
    valid = np.asarray(trace.mask)
    np.testing.assert_allclose(np.asarray(y)[valid], want[valid], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(y)[~valid], 0.0)
    np.testing.assert_array_equal(np.asarray(routing.experts)[valid], experts[valid])


def test_moe_gradients_and_bfloat16():
    moe = SigmoidMoE(4, 3, num_experts=3, top_k=2, **moe_inits())
    graphdef, params, rest = nnx.split(moe, nnx.Param, ...)
    x = inputs(batch=1, time=2, features=4)

    def f(params, x):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x) ** 2)

    check_grads(jax.jit(f), (params, x), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
    moe16 = SigmoidMoE(4, 3, num_experts=3, top_k=2, dtype=jnp.bfloat16, **moe_inits())
    y16 = nnx.jit(lambda m, x: m(x))(moe16, x)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), moe(x), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
def test_gated_feed_forward_matches_numpy_and_its_gate_can_be_overridden(activation):
    ffn = GatedFeedForward(
        6,
        7,
        out_features=4,
        activation=activation,
        use_bias=True,
        bias_init=BIAS_INIT,
        kernel_init=KERNEL_INIT,
        rngs=nnx.Rngs(0),
    )
    x = inputs()
    p = {
        name: (ref.f64(m.kernel[...]), ref.f64(m.bias[...]))
        for name, m in (("gate", ffn.gate), ("up", ffn.up), ("down", ffn.down))
    }
    xs = ref.f64(x)
    pre = xs @ p["gate"][0] + p["gate"][1]
    up = xs @ p["up"][0] + p["up"][1]

    def reference(gate):
        hidden = (pre * gate if activation == "silu" else gate * np.ones_like(pre)) * up
        return hidden @ p["down"][0] + p["down"][1]

    y, trace = ffn(x, return_gates=True)
    np.testing.assert_allclose(y, reference(ref.sigmoid(pre)), atol=1e-5, rtol=1e-5)
    gate = np.asarray(trace.gates["feed_forward"].hidden)
    np.testing.assert_allclose(gate, ref.sigmoid(pre), atol=1e-6)
    assert np.all((gate > 0) & (gate < 1))
    y_half = ffn(x, gate_overrides={"hidden": 0.5})
    np.testing.assert_allclose(y_half, reference(0.5), atol=1e-5, rtol=1e-5)


def test_gated_feed_forward_gradients():
    ffn = GatedFeedForward(3, 4, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(ffn)
    x = inputs(batch=1, time=2, features=3)

    def f(params, x):
        y, trace = nnx.merge(graphdef, params)(x, return_gates=True)
        return jnp.sum(y**2) + jnp.sum(trace.gates["feed_forward"].hidden)

    check_grads(jax.jit(f), (params, x), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_binary_head_logit_probability_and_optax_loss():
    head = BinaryHead(6, bias_init=BIAS_INIT, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))
    x = inputs()
    w, b = ref.f64(head.linear.kernel[...])[:, 0], ref.f64(head.linear.bias[...])[0]
    logits = ref.f64(x) @ w + b
    np.testing.assert_allclose(head(x), logits, atol=1e-5)
    np.testing.assert_allclose(head.probability(x), ref.sigmoid(logits), atol=1e-6)
    labels = (inputs(1, 2, 5, seed=5)[0] > 0).astype(jnp.float32)
    y = ref.f64(labels)
    bce = -(y * np.log(ref.sigmoid(logits)) + (1 - y) * np.log(1 - ref.sigmoid(logits)))
    np.testing.assert_allclose(head.loss(x, labels), bce.mean(), rtol=1e-5)
    lengths = jnp.array([2, 4])
    valid = np.arange(5) < np.array([2, 4])[:, None]
    np.testing.assert_allclose(
        head.loss(x, labels, seq_lengths=lengths), bce[valid].mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        head.loss(x, labels), optax.sigmoid_binary_cross_entropy(head(x), labels).mean(), rtol=1e-6
    )
    logits_pooled = head(x[:, 0])
    assert logits_pooled.shape == (2,)


def test_binary_head_probability_override_sets_the_logit():
    head = BinaryHead(6, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))
    x = inputs()
    logits, trace = head(x, return_gates=True, gate_overrides={"probability": 0.8})
    np.testing.assert_allclose(logits, np.log(0.8 / 0.2), rtol=1e-5)
    np.testing.assert_allclose(trace.gates["head"].probability, 0.8, rtol=1e-6)
    np.testing.assert_allclose(
        head.probability(x, gate_overrides={"probability": lambda p: 1 - p}),
        1 - head.probability(x),
        atol=1e-5,
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_load_is_refused_or_under_jit_leaves_the_bias_unchanged(bad):
    moe = SigmoidMoE(6, 5, num_experts=4, top_k=2, **moe_inits())
    load = jnp.array([0.5, bad, 0.25, 0.25])
    with pytest.raises(ValueError, match=r"SigmoidMoE.update_bias: load must be finite; got"):
        moe.update_bias(load)
    with pytest.raises(ValueError, match=r"SigmoidRouter.update_bias: load must be finite"):
        moe.router.update_bias(load)
    before = np.asarray(moe.router.expert_bias[...])
    nnx.jit(lambda m, x: m.update_bias(x))(moe, load)
    np.testing.assert_array_equal(moe.router.expert_bias[...], before)
    nnx.jit(lambda m, x: m.update_bias(x))(moe, jnp.array([0.7, 0.1, 0.1, 0.1]))
    assert np.all(np.isfinite(moe.router.expert_bias[...]))
    assert not np.array_equal(moe.router.expert_bias[...], before)


def test_binary_head_loss_ignores_nan_inputs_and_any_labels_in_padding():
    head = BinaryHead(6, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))
    x = inputs()
    labels = (inputs(1, 2, 5, seed=5)[0] > 0).astype(jnp.float32)
    lengths = jnp.array([2, 4])
    valid = np.arange(5)[None, :] < np.asarray(lengths)[:, None]
    clean_x = jnp.where(valid[..., None], x, 0.0)
    clean_labels = jnp.where(valid, labels, 0.0)
    poisoned_x = jnp.where(valid[..., None], x, jnp.nan).at[1, 4, 0].set(jnp.inf)
    poisoned_labels = jnp.where(valid, labels, -1.0).at[0, 3].set(jnp.nan)

    def value_and_grads(inputs_, labels_, **masks):
        return nnx.value_and_grad(lambda h: h.loss(inputs_, labels_, **masks))(head)

    clean_loss, clean_grads = value_and_grads(clean_x, clean_labels, seq_lengths=lengths)
    for masks in ({"seq_lengths": lengths}, {"mask": jnp.asarray(valid)}):
        loss, grads = value_and_grads(poisoned_x, poisoned_labels, **masks)
        np.testing.assert_allclose(loss, clean_loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(clean_grads), strict=True):
            assert np.all(np.isfinite(a))
            np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.any(np.asarray(jax.tree.leaves(clean_grads)[0]) != 0)


@pytest.mark.parametrize("bad", [2.0, -0.5, np.nan])
def test_binary_head_loss_refuses_labels_outside_zero_one(bad):
    head = BinaryHead(6, kernel_init=KERNEL_INIT, rngs=nnx.Rngs(0))
    labels = jnp.zeros((2, 5)).at[1, 3].set(bad)
    with pytest.raises(
        ValueError,
        match=rf"labels must be in \[0, 1\] at valid positions; got "
        rf"{bad} at index \(1, 3\)",
    ):
        head.loss(inputs(), labels)
    with pytest.raises(ValueError, match=r"index \(1, 3\)"):
        head.loss(inputs(), labels, seq_lengths=jnp.array([5, 4]))
    # The same label in padding is ignored.
    assert np.isfinite(head.loss(inputs(), labels, seq_lengths=jnp.array([5, 3])))
