"""The fused LSTM/GRU kernels against the generic autodiff scan and against numerical gradients.

Both paths must give the same values and the same gradients (parameters, inputs, initial
carry) with masks, reverse, gates in the loss, constant overrides, the projection inside the
loop, rematerialisation and recurrent dropout; in bfloat16 the fused path must be at least as
close to float32 as the generic one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import B, H, I, T, dot_precisions, inputs, randomize
from jax.test_util import check_grads

import gatenets
from gatenets.kernels import gru_sequence, lstm_sequence

CELLS = {"lstm": gatenets.LSTMCell, "gru": gatenets.GRUCell}
GATE = {"lstm": "forget", "gru": "update"}

# Each configuration folds several features together to keep the number of compiles small.
CONFIGS = {
    "plain": {},
    "mask+reverse+gates+carry+before": {
        "mask": True,
        "reverse": True,
        "gates": True,
        "carry": True,
        "rnn": {"precompute_inputs": True},
    },
    "overrides+inside+mask+bias": {
        "mask": True,
        "gates": True,
        "overrides": True,
        "rnn": {"precompute_inputs": False},
        "cell": {"lstm": {"use_recurrent_bias": True}, "gru": {"use_bias": False}},
    },
    "remat+dropout+reverse": {
        "mask": True,
        "reverse": True,
        "gates": True,
        "cell_all": {"remat": True},
        "rnn": {"recurrent_dropout": 0.5},
    },
}


def make_rnn(kind, kernel, config, dtype=None):
    cell_kwargs = dict(config.get("cell", {}).get(kind, {}), **config.get("cell_all", {}))
    if kernel == "scan":
        cell_kwargs.pop("remat", None)
    cell = CELLS[kind](I, H, dtype=dtype, rngs=nnx.Rngs(0), **cell_kwargs)
    rnn = gatenets.RNN(
        randomize(cell),
        loop=kernel,
        reverse=config.get("reverse", False),
        rngs=nnx.Rngs(dropout=3),
        **config.get("rnn", {}),
    )
    rnn.train()
    return rnn


def loss_and_grads(rnn, kind, config, x, carry, mask):
    """Loss with random weights on every output (outputs, final carry, gates), and its
    gradients with respect to the parameters, the inputs and the initial carry."""
    overrides = {GATE[kind]: 0.75} if config.get("overrides") else None
    rng = np.random.default_rng(7)

    def loss(module, x, carry):
        out = module(
            x,
            initial_carry=carry,
            mask=mask,
            return_carry=True,
            return_gates=config.get("gates", False),
            gate_overrides=overrides,
        )
        final, y = out[0], out[1]
        leaves = [y, *jax.tree_util.tree_leaves(final)]
        if config.get("gates"):
            leaves += jax.tree_util.tree_leaves(out[2].gates)
        weights = [jnp.asarray(rng.standard_normal(leaf.shape), jnp.float32) for leaf in leaves]
        return sum(
            jnp.sum(leaf.astype(jnp.float32) * w) for leaf, w in zip(leaves, weights, strict=True)
        )

    # NNX transforms, so that the dropout stream may advance inside the traced function.
    @nnx.jit
    def run(module, x, carry):
        return nnx.value_and_grad(loss, argnums=(0, 1, 2))(module, x, carry)

    return run(rnn, x, carry)


def case_inputs(kind, config, seed=1):
    x = jnp.asarray(inputs(seed))
    rng = np.random.default_rng(seed)
    mask = None
    if config.get("mask"):
        # One sequence with a gap in the middle, one right-padded.
        mask = jnp.asarray(np.array([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], bool)[:B, :T])
    carry = None
    if config.get("carry"):
        shapes = {"lstm": gatenets.LSTMCarry, "gru": gatenets.GRUCarry}[kind]
        carry = shapes(
            *(jnp.asarray(rng.standard_normal((B, H)), jnp.float32) for _ in shapes._fields)
        )
    return x, carry, mask


def assert_trees_close(a, b, **tolerance):
    for left, right in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(
            np.asarray(left, np.float32), np.asarray(right, np.float32), **tolerance
        )


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("kind", CELLS)
def test_fused_kernel_equals_autodiff_scan(kind, config_name):
    config = CONFIGS[config_name]
    x, carry, mask = case_inputs(kind, config)
    fused = loss_and_grads(make_rnn(kind, "fused", config), kind, config, x, carry, mask)
    plain = loss_and_grads(make_rnn(kind, "scan", config), kind, config, x, carry, mask)
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-5)
    assert_trees_close(fused[1], plain[1], rtol=1e-4, atol=1e-5)
    # A gradient that vanished on both paths would pass the comparison without testing it.
    params_grad = jax.tree_util.tree_leaves(fused[1][0])
    assert all(float(jnp.abs(g).max()) > 0 for g in params_grad)


@pytest.mark.parametrize("kind", CELLS)
def test_bf16_fused_is_as_close_to_float32_as_the_scan(kind):
    config = CONFIGS["mask+reverse+gates+carry+before"]
    x, carry, mask = case_inputs(kind, config)
    reference = loss_and_grads(make_rnn(kind, "scan", config), kind, config, x, carry, mask)
    errors = {}
    for kernel in ("fused", "scan"):
        rnn = make_rnn(kind, kernel, config, dtype=jnp.bfloat16)
        if kind == "lstm":
            assert rnn.cell.initialize_carry((B, I)).c.dtype == jnp.float32
        got = loss_and_grads(rnn, kind, config, x, carry, mask)
        ref_leaves = jax.tree_util.tree_leaves(reference[1])
        got_leaves = jax.tree_util.tree_leaves(got[1])
        errors[kernel] = max(
            float(jnp.abs(g.astype(jnp.float32) - r).max() / (jnp.abs(r).max() + 1e-6))
            for g, r in zip(got_leaves, ref_leaves, strict=True)
        )
    # bf16 has ~3 significant digits: both are near float32, the fused one no worse.
    assert errors["scan"] < 0.1
    assert errors["fused"] <= 1.5 * errors["scan"] + 1e-3


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * 0.5)


def test_lstm_kernel_gradients_match_finite_differences():
    with jax.enable_x64(True):
        xs, u = _random((T, B, 4 * H), 0), _random((H, 4 * H), 1)
        c0, h0 = _random((B, H), 2), _random((B, H), 3)
        w_in, bias = _random((I, 4 * H), 4), _random((4 * H,), 5)
        raw = _random((T, B, I), 6)
        valid = jnp.asarray(np.array([[1, 0, 1, 1, 1], [1, 1, 1, 1, 0]], bool).T)

        def projected(xs, u, c0, h0):
            c, h, hs, acts = lstm_sequence(
                xs, u, c0, h0, valid, reverse=True, return_gates=True, overrides=(None, 0.5, None)
            )
            return c.sum() + (h**2).sum() + (hs * xs[..., :H]).sum() + (acts**2).sum()

        def inside(raw, w_in, bias, u):
            _, h, hs, _ = lstm_sequence(
                raw, u, c0, h0, valid, input_kernel=w_in, bias=bias, remat=True
            )
            return (hs**2).sum() + h.sum()

        check_grads(projected, (xs, u, c0, h0), order=1, modes=["rev"])
        check_grads(inside, (raw, w_in, bias, u), order=1, modes=["rev"])


def test_gru_kernel_gradients_match_finite_differences():
    with jax.enable_x64(True):
        xs, u = _random((T, B, 3 * H), 0), _random((H, 3 * H), 1)
        h0, b_hn = _random((B, H), 2), _random((H,), 3)
        w_in, bias = _random((I, 3 * H), 4), _random((3 * H,), 5)
        raw = _random((T, B, I), 6)
        dropout = jnp.asarray(np.random.default_rng(7).integers(0, 2, (B, H)) * 2.0)
        valid = jnp.asarray(np.array([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], bool).T)

        def projected(xs, u, h0, b_hn):
            h, hs, gates = gru_sequence(
                xs, u, h0, valid, recurrent_bias=b_hn, return_gates=True, recurrent_mask=dropout
            )
            return (h**2).sum() + (hs * xs[..., :H]).sum() + (gates**2).sum()

        def inside(raw, w_in, bias, u):
            _, hs, _ = gru_sequence(
                raw, u, h0, None, input_kernel=w_in, bias=bias, reverse=True, remat=True
            )
            return (hs**2).sum()

        check_grads(projected, (xs, u, h0, b_hn), order=1, modes=["rev"])
        check_grads(inside, (raw, w_in, bias, u), order=1, modes=["rev"])


def _scans(jaxpr):
    """Every scan in a jaxpr, including those inside custom-VJP calls and other sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            found.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    found += _scans(inner)
    return found


@pytest.mark.parametrize("kind", CELLS)
def test_fused_gates_switch_costs_nothing_when_off(kind):
    rnn = make_rnn(kind, "fused", {})
    graphdef, state = nnx.split(rnn)
    x = jnp.asarray(inputs())

    def run(state, x, **kwargs):
        return nnx.merge(graphdef, state)(x, **kwargs)

    (off,) = _scans(jax.make_jaxpr(lambda s, x: run(s, x))(state, x).jaxpr)
    (on,) = _scans(jax.make_jaxpr(lambda s, x: run(s, x, return_gates=True))(state, x).jaxpr)
    # Off: the carry and the hidden states only; on: plus one stacked array of activations.
    carry_leaves = 2 if kind == "lstm" else 1
    assert len(off.outvars) == carry_leaves + 1
    assert len(on.outvars) == carry_leaves + 2


@pytest.mark.parametrize("kind", CELLS)
def test_remat_saves_less_for_the_backward_pass(kind):
    x = jnp.asarray(inputs(shape=(B, 64, I)))
    temp = {}
    for remat in (False, True):
        cell = CELLS[kind](I, 32, remat=remat, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(gatenets.RNN(cell, loop="fused", precompute_inputs=False))

        def loss(params, x, graphdef=graphdef):
            return jnp.sum(nnx.merge(graphdef, params)(x) ** 2)

        compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[True] < 0.75 * temp[False]


def test_auto_falls_back_to_the_scan_for_function_overrides():
    config = {"gates": True}
    x = jnp.asarray(inputs())
    results = []
    for kernel in ("auto", "scan"):
        rnn = make_rnn("lstm", kernel, config)
        results.append(rnn(x, gate_overrides={"forget": lambda f: 0.5 * f}))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def test_bad_loop_choices_raise_clear_errors():
    with pytest.raises(ValueError, match=r"loop must be one of .*'fast'"):
        gatenets.RNN(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0)), loop="fast")
    with pytest.raises(ValueError, match=r"loop='fused' does not apply: .*neither peephole"):
        gatenets.RNN(gatenets.LSTMCell(I, H, peephole=True, rngs=nnx.Rngs(0)), loop="fused")
    with pytest.raises(ValueError, match=r"proj_size=2"):
        gatenets.RNN(gatenets.LSTMCell(I, H, proj_size=2, rngs=nnx.Rngs(0)), loop="fused")
    with pytest.raises(ValueError, match=r"loop='fused' does not apply: .*reset_after=True"):
        gatenets.RNN(gatenets.GRUCell(I, H, reset_after=False, rngs=nnx.Rngs(0)), loop="fused")
    with pytest.raises(ValueError, match=r"loop must be one of"):
        gatenets.GRU(I, H, loop=None, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"'associative' .*kernels for the families .*got 'lstm'"):
        gatenets.LSTM(I, H, loop="associative", rngs=nnx.Rngs(0))
    for kind in CELLS:
        rnn = gatenets.RNN(CELLS[kind](I, H, rngs=nnx.Rngs(0)), loop="fused")
        with pytest.raises(ValueError, match=r"fused kernel takes gate_overrides only as scalar"):
            rnn(jnp.asarray(inputs()), gate_overrides={GATE[kind]: jnp.ones((B, H))})


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_precision_reaches_every_matmul_forward_and_backward(kind, remat):
    gates = 4 if kind == "lstm" else 3
    rng = np.random.default_rng(0)
    weights = {
        "xs": jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32),
        "input_kernel": jnp.asarray(rng.standard_normal((I, gates * H)), jnp.float32),
        "bias": jnp.zeros((gates * H,), jnp.float32),
        "recurrent_kernel": jnp.asarray(rng.standard_normal((H, gates * H)), jnp.float32),
    }
    carry = [jnp.zeros((B, H), jnp.float32)] * (2 if kind == "lstm" else 1)
    kernel = lstm_sequence if kind == "lstm" else gru_sequence

    def loss(weights, precision):
        xs, recurrent_kernel = weights["xs"], weights["recurrent_kernel"]
        outputs = kernel(
            xs, recurrent_kernel, *carry, input_kernel=weights["input_kernel"],
            bias=weights["bias"], remat=remat, precision=precision,
        )  # fmt: skip
        return outputs[-2].sum()

    found = {}
    # The context asks for low precision; an explicit argument must win over it in every
    # matmul, and None must leave every matmul to it.
    with jax.default_matmul_precision("bfloat16"):
        for precision in ("highest", None, (jax.lax.Precision.HIGH, "highest")):
            jaxpr = jax.make_jaxpr(jax.grad(loss), static_argnums=1)(weights, precision)
            found[str(precision)] = dot_precisions(jaxpr.jaxpr)
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    # Forward: x W and h U; backward: dz U^T in the loop, then dU, dW, dX (with remat: the
    # recomputed x W and h U, and the per-step sums, in the loop).
    assert len(found["highest"]) >= 6
    assert found["highest"] == [highest] * len(found["highest"])
    # JAX records the context's precision at trace time (or leaves None for the compiler).
    context = (jax.lax.Precision.DEFAULT, jax.lax.Precision.DEFAULT)
    assert found["None"] in ([context] * len(found["highest"]), [None] * len(found["highest"]))
    pair = found[str((jax.lax.Precision.HIGH, "highest"))]
    assert pair == [(jax.lax.Precision.HIGH, jax.lax.Precision.HIGHEST)] * len(found["highest"])


def test_bad_precision_names_the_argument():
    xs, u, h = jnp.ones((2, 1, 6)), jnp.zeros((2, 6)), jnp.zeros((1, 2))
    with pytest.raises(ValueError, match=r"precision must be None, .*; got 'fastest-ever'"):
        gru_sequence(xs, u, h, precision="fastest-ever")
    with pytest.raises(ValueError, match=r"precision must be .*; got 3"):
        lstm_sequence(jnp.ones((2, 1, 8)), jnp.zeros((2, 8)), h, h, precision=3)
