"""minGRU, minLSTM and RG-LRU: NumPy references, parallel = sequential with function overrides
(values and gradients), masks, overrides, stacks, long bf16 sequences, and bad input.

The generic contract checks (padding, nnx.RNN, gate range, every loop = scan, …) are in
test_conformance.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import B, H, I, T, inputs, load_example, randomize
from jax.test_util import check_grads

import gatenets
from gatenets.cells.rglru import sqrt_bounded_derivative
from gatenets.kernels.parallel_scan import linear_recurrence
from gatenets.registry import FAMILIES

# The registered families this file's NumPy reference covers.
CELLS = {name: FAMILIES[name].cell for name in ("mingru", "minlstm", "rglru")}
STACKS = {name: FAMILIES[name].layer for name in CELLS}
LOOPS = ["associative", "linear_scan", "scan"]
SOLVERS = ["associative", "linear_scan"]
# Constant overrides that make each cell hold its state exactly: a_t = 1, b_t = 0.
HOLD = {
    "mingru": {"update": 0.0},
    "minlstm": {"forget": 1.0, "input": 0.0},
    "rglru": {"recurrence": 0.0},
}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make(name, seed=0, scale=0.5, **kwargs):
    cell = CELLS[name](I, H, rngs=nnx.Rngs(0), **kwargs)
    randomize(cell, seed=seed, scale=scale)
    if name == "rglru":
        # Back to Griffin's decays: random Λ would put a far from 1 and hide the slow regime.
        cell.decay[...] = CELLS[name](I, H, rngs=nnx.Rngs(seed)).decay[...]
    return cell


def reference(name, cell, x, h0, valid=None, reverse=False, overrides=None):
    """Float64 loop written from the papers' equations (linear space, plain divisions).

    Returns (outputs [b, t, H], final h [b, H], gates {name: [b, t, H]}).
    """
    overrides = overrides or {}
    kernel = np.asarray(cell.kernel[...], np.float64)
    bias = np.asarray(cell.bias[...], np.float64) if cell.use_bias else 0.0
    z = x.astype(np.float64) @ kernel + bias
    batch, time, _ = x.shape
    valid = np.ones((batch, time), bool) if valid is None else valid
    h = h0.astype(np.float64).copy()
    hidden = cell.hidden_features
    ys = np.zeros((batch, time, hidden))
    gates = {}
    for t in range(time - 1, -1, -1) if reverse else range(time):
        blocks = np.split(z[:, t], len(cell.gate_names) + 1, axis=-1)
        if name == "mingru":
            g = {"update": sigmoid(blocks[0])}
            g.update({k: np.full_like(g["update"], v) for k, v in overrides.items()})
            a, b = 1.0 - g["update"], g["update"] * blocks[1]
        elif name == "minlstm":
            f, i = sigmoid(blocks[0]), sigmoid(blocks[1])
            g = {"forget": f / (f + i), "input": i / (f + i)}
            g.update({k: np.full_like(f, v) for k, v in overrides.items()})
            a, b = g["forget"], g["input"] * blocks[2]
        else:
            g = {"recurrence": sigmoid(blocks[0]), "input": sigmoid(blocks[1])}
            g.update({k: np.full_like(blocks[0], v) for k, v in overrides.items()})
            base = sigmoid(-np.asarray(cell.decay[...], np.float64))  # exp(-softplus(Λ))
            a = base ** (cell.c * g["recurrence"])
            b = np.sqrt(1.0 - a**2) * g["input"] * blocks[2]
        keep = valid[:, t, None]
        h = np.where(keep, a * h + b, h)
        ys[:, t] = np.where(keep, h, 0.0)
        for k, v in g.items():
            gates.setdefault(k, np.zeros((batch, time, hidden)))[:, t] = v
    return ys, h, gates


MASK = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 0, 1]], bool)
H0 = np.random.default_rng(7).standard_normal((B, H)).astype(np.float32)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("name", CELLS)
def test_matches_numpy_reference_with_mask_reverse_and_initial_carry(name, loop):
    cell = make(name)
    x = inputs()
    for valid, reverse in ((None, False), (MASK, True)):
        carry, y, trace = gatenets.RNN(cell, loop=loop, reverse=reverse)(
            jnp.asarray(x),
            initial_carry=gatenets.DiagonalCarry(jnp.asarray(H0)),
            mask=None if valid is None else jnp.asarray(valid),
            return_carry=True,
            return_gates=True,
        )
        ref_y, ref_h, ref_gates = reference(name, cell, x, H0, valid, reverse)
        np.testing.assert_allclose(y, ref_y, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(carry.h, ref_h, atol=1e-5, rtol=1e-5)
        # Gates at padded steps are not data (the trace's mask excludes them).
        steps = np.ones((B, T), bool) if valid is None else valid
        for gate, value in ref_gates.items():
            np.testing.assert_allclose(
                np.asarray(getattr(trace.gates["backward" if reverse else "forward"], gate))[steps],
                value[steps],
                atol=1e-5,
            )


@pytest.mark.parametrize("name", CELLS)
def test_without_bias_matches_numpy_reference(name):
    cell = make(name, use_bias=False)
    assert not hasattr(cell, "bias")
    y = gatenets.RNN(cell)(jnp.asarray(inputs()))
    np.testing.assert_allclose(y, reference(name, cell, inputs(), np.zeros((B, H)))[0], atol=1e-5)


@pytest.mark.parametrize("name", CELLS)
def test_parallel_equals_sequential_with_function_overrides_values_and_gradients(name):
    cell = make(name)
    x = jnp.asarray(inputs())
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((B, T, H)), jnp.float32)
    overrides = {gatenets_gate(name): lambda g: 0.5 * g + 0.25}

    def loss(cell, x, h0, loop):
        carry, y = gatenets.RNN(cell, loop=loop, reverse=True)(
            x,
            initial_carry=gatenets.DiagonalCarry(h0),
            mask=jnp.asarray(MASK),
            return_carry=True,
            gate_overrides=overrides,
        )
        return jnp.sum(weights * y) + jnp.sum(carry.h**2)

    grad = nnx.grad(loss, argnums=(0, 1, 2))
    (gp, gxp, ghp), (gs, gxs, ghs) = (
        grad(cell, x, jnp.asarray(H0), "associative"),
        grad(cell, x, jnp.asarray(H0), "scan"),
    )
    np.testing.assert_allclose(
        loss(cell, x, H0, "associative"), loss(cell, x, H0, "scan"), rtol=1e-5
    )
    np.testing.assert_allclose(gxp, gxs, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ghp, ghs, atol=1e-5, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(nnx.state(gp)), jax.tree.leaves(nnx.state(gs)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
        assert np.abs(np.asarray(a)).max() > 0


def gatenets_gate(name):
    return CELLS[name].gates_type._fields[0]


def test_gradients_match_finite_differences():
    # RG-LRU: its square root has a hand-written derivative; the other cells' gradients are
    # checked against the scan loop's above.
    graphdef, params = nnx.split(gatenets.RNN(make("rglru")))

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x) ** 2)

    x = jnp.asarray(inputs(shape=(1, 3, I)))
    check_grads(loss, (params, x), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("name", CELLS)
def test_hold_overrides_keep_the_state_and_constant_overrides_match_the_reference(name, loop):
    cell = make(name, scale=3.0)
    x = jnp.asarray(10 * inputs())
    _, trace = gatenets.RNN(cell, loop=loop)(x, return_gates=True)
    if name == "minlstm":
        gates = trace.gates["forward"]
        np.testing.assert_allclose(gates.forget + gates.input, 1.0, atol=1e-6)
    y = gatenets.RNN(cell, loop=loop)(
        x, initial_carry=gatenets.DiagonalCarry(jnp.asarray(H0)), gate_overrides=HOLD[name]
    )
    np.testing.assert_allclose(y, np.broadcast_to(H0[:, None], (B, T, H)), atol=1e-6)
    ref_y, _, _ = reference(
        name, cell, 10 * inputs(), np.zeros((B, H)), overrides={gatenets_gate(name): 0.3}
    )
    y = gatenets.RNN(cell, loop=loop)(x, gate_overrides={gatenets_gate(name): 0.3})
    np.testing.assert_allclose(y, ref_y, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", CELLS)
def test_bidirectional_stack_equals_chained_references(name):
    stack = STACKS[name](I, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    randomize(stack)
    for layer in stack.layers:
        for rnn in (layer.forward_rnn, layer.backward_rnn):
            if name == "rglru":
                rnn.cell.decay[...] = jnp.linspace(-3.0, 3.0, H)
    x = inputs()
    lengths = np.array([T, 3])
    valid = np.arange(T)[None, :] < lengths[:, None]
    y, trace = stack(
        jnp.asarray(x),
        seq_lengths=jnp.asarray(lengths),
        return_gates=True,
        gate_overrides={"layer1/backward": {gatenets_gate(name): 0.5}},
    )
    features = x
    zeros = np.zeros((B, H))
    for k, layer in enumerate(stack.layers):
        backward_overrides = {gatenets_gate(name): 0.5} if k == 1 else None
        forward, _, gates = reference(name, layer.forward_rnn.cell, features, zeros, valid)
        backward, _, _ = reference(
            name, layer.backward_rnn.cell, features, zeros, valid, True, backward_overrides
        )
        features = np.concatenate([forward, backward], axis=-1)
        for gate, value in gates.items():  # at valid steps: padded ones are not data
            np.testing.assert_allclose(
                np.asarray(getattr(trace.gates[f"layer{k}/forward"], gate))[valid],
                value[valid],
                atol=1e-5,
            )
        features = features.astype(np.float32)
    np.testing.assert_allclose(y, features, atol=1e-5)
    assert sorted(trace.gates) == [
        "layer0/backward",
        "layer0/forward",
        "layer1/backward",
        "layer1/forward",
    ]


@pytest.mark.parametrize("name", CELLS)
def test_long_sequence_bf16_is_finite_and_matches_the_float64_reference(name):
    time = 4096
    x = inputs(shape=(1, time, I))
    cell = CELLS[name](I, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))

    def loss(cell, x):
        carry, y = gatenets.RNN(cell)(x, return_carry=True)
        return jnp.mean(y.astype(jnp.float32) ** 2), (carry, y)

    if name == "rglru":
        # Gradients once, through the cell with the square-root normaliser and a_t near 1;
        # the scan kernel they go through is the one every cell shares.
        (value, (carry, y)), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(
            cell, jnp.asarray(x)
        )
        assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree.leaves(grads))
    else:
        value, (carry, y) = nnx.jit(loss)(cell, jnp.asarray(x))
    assert y.dtype == jnp.bfloat16 and carry.h.dtype == jnp.float32
    assert np.isfinite(float(value))
    ref_y, ref_h, _ = reference(name, cell, x, np.zeros((1, 2)))
    # Only the bf16 input matmul differs from the reference; errors must not grow with time.
    np.testing.assert_allclose(np.asarray(y, np.float32), ref_y, atol=3e-2, rtol=3e-2)
    np.testing.assert_allclose(carry.h, ref_h, atol=3e-2, rtol=3e-2)


def test_recurrent_dropout_same_in_both_loops():
    parallel = make("minlstm")
    runs = []
    for loop in LOOPS:
        rnn = gatenets.RNN(parallel, loop=loop, recurrent_dropout=0.5, rngs=nnx.Rngs(dropout=3))
        runs.append(rnn(jnp.asarray(inputs()), mask=jnp.asarray(MASK)))
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)
    rnn = gatenets.RNN(parallel, recurrent_dropout=0.5, rngs=nnx.Rngs(dropout=3))
    rnn.eval()
    np.testing.assert_allclose(
        rnn(jnp.asarray(inputs())), gatenets.RNN(parallel)(jnp.asarray(inputs())), atol=1e-6
    )
    assert not np.allclose(runs[0], rnn(jnp.asarray(inputs()), mask=jnp.asarray(MASK)))


@pytest.mark.parametrize("name", CELLS)
def test_step_by_step_with_function_overrides_equals_both_loops(name):
    cell = make(name)
    x = jnp.asarray(inputs())
    overrides = {gatenets_gate(name): lambda g: 1.0 - g}
    carry, outputs = gatenets.DiagonalCarry(jnp.asarray(H0)), []
    for t in range(T):
        carry, h, _ = cell.step(carry, cell.project(x[:, t]), gate_overrides=overrides)
        outputs.append(h)
    for loop in LOOPS:
        y = gatenets.RNN(cell, loop=loop)(
            x, initial_carry=gatenets.DiagonalCarry(jnp.asarray(H0)), gate_overrides=overrides
        )
        np.testing.assert_allclose(y, np.stack(outputs, axis=1), atol=1e-5)


def test_rglru_decay_init_and_bounded_square_root_gradient():
    cell = gatenets.RGLRUCell(I, 512, rngs=nnx.Rngs(0))
    a = np.exp(-np.asarray(jax.nn.softplus(cell.decay[...])))
    assert a.min() >= 0.9 and a.max() <= 0.999
    a_c = a**8
    # a^c is uniform on [0.9^8, 0.999^8]: quartiles sit near a quarter and three quarters.
    low, high = 0.9**8, 0.999**8
    np.testing.assert_allclose(
        np.quantile(a_c, [0.25, 0.75]),
        [low + (high - low) / 4, low + 3 * (high - low) / 4],
        atol=0.03,
    )
    grad = jax.grad(sqrt_bounded_derivative)
    np.testing.assert_allclose(grad(jnp.float32(0.25), 1000.0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(grad(jnp.float32(0.0), 1000.0), 1000.0, rtol=1e-6)
    np.testing.assert_allclose(sqrt_bounded_derivative(jnp.float32(0.25), 1000.0), 0.5)


@pytest.mark.parametrize(
    "make_bad, error, message",
    [
        (
            lambda: gatenets.RNN(gatenets.MinGRUCell(I, H, rngs=nnx.Rngs(0)), loop="fast"),
            ValueError,
            "loop must be one of",
        ),
        (
            lambda: gatenets.RNN(gatenets.MinGRUCell(I, H, rngs=nnx.Rngs(0)), loop="fused"),
            ValueError,
            "kernels for the families gru, lstm; got 'mingru'",
        ),
        (lambda: gatenets.MinLSTMCell(I, 0, rngs=nnx.Rngs(0)), ValueError, "hidden_features"),
        (lambda: gatenets.RGLRUCell(I, H, c=0.0, rngs=nnx.Rngs(0)), ValueError, "c must"),
        (
            lambda: gatenets.RGLRUCell(I, H, min_decay=0.99, max_decay=0.9, rngs=nnx.Rngs(0)),
            ValueError,
            "min_decay",
        ),
        (
            lambda: gatenets.RGLRUCell(I, H, max_decay=1.0, rngs=nnx.Rngs(0)),
            ValueError,
            "max_decay",
        ),
        (
            lambda: gatenets.RGLRUCell(I, H, max_sqrt_gradient=0.0, rngs=nnx.Rngs(0)),
            ValueError,
            "max_sqrt_gradient",
        ),
        (
            lambda: gatenets.MinGRU(I, H, rngs=nnx.Rngs(0))(jnp.ones((B, T, I + 1))),
            ValueError,
            "in_features",
        ),
        (
            lambda: gatenets.MinLSTM(I, H, rngs=nnx.Rngs(0))(jnp.ones((B, T, I), jnp.int32)),
            TypeError,
            "floating-point",
        ),
        (
            lambda: gatenets.MinGRU(I, H, rngs=nnx.Rngs(0))(
                jnp.ones((B, T, I)), gate_overrides={"forget": 1.0}
            ),
            ValueError,
            "unknown key 'forget'",
        ),
        (
            lambda: gatenets.RNN(gatenets.RGLRUCell(I, H, rngs=nnx.Rngs(0)))(
                jnp.ones((B, T, I)), gate_overrides={"update": 1.0}
            ),
            ValueError,
            "unknown gate 'update'",
        ),
        (
            lambda: gatenets.RNN(gatenets.MinGRUCell(I, H, rngs=nnx.Rngs(0)))(
                jnp.ones((B, T, I)), initial_carry=gatenets.DiagonalCarry(jnp.ones((B, H + 1)))
            ),
            ValueError,
            "initial_carry",
        ),
    ],
)
def test_bad_input_raises_clear_error(make_bad, error, message):
    with pytest.raises(error, match=message):
        make_bad()


def test_adding_example_trains(capsys):
    example = load_example("min_rnn_adding")
    # One model keeps the compile short; the cells themselves are tested above.
    results = example.main(
        steps=40, length=8, batch=32, hidden=8, layers=1, learning_rate=3e-2, models="MinLSTM"
    )
    first, test_mse = results["MinLSTM"]
    # Below predicting the mean: the marked values were found, not only the offset.
    assert test_mse < example.BASELINE < first, (first, test_mse)
    assert "MinLSTM: test MSE" in capsys.readouterr().out


@pytest.mark.parametrize("loop", SOLVERS)
def test_linear_recurrence_kernel_matches_a_loop(loop):
    rng = np.random.default_rng(0)
    time, batch, hidden = 9, 2, 3
    log_a = -rng.uniform(0.0, 2.0, (time, batch, hidden))
    b = rng.standard_normal((time, batch, hidden))
    h0 = rng.standard_normal((batch, hidden))
    valid = rng.uniform(size=(time, batch)) > 0.3
    for reverse in (False, True):
        h = linear_recurrence(
            *(jnp.asarray(v, jnp.float32) for v in (log_a, b, h0)),
            valid=jnp.asarray(valid),
            reverse=reverse,
            loop=loop,
        )
        expected, state = np.zeros_like(b), h0.copy()
        for t in range(time - 1, -1, -1) if reverse else range(time):
            state = np.where(valid[t][:, None], np.exp(log_a[t]) * state + b[t], state)
            expected[t] = state
        np.testing.assert_allclose(h, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loop", SOLVERS)
def test_linear_recurrence_gradients_match_a_python_loop(loop):
    """Both solvers' gradients (the associative one's is a hand-written reversed recurrence)
    against autodiff of the recurrence written step by step, padding and both directions."""
    rng = np.random.default_rng(1)
    time, batch, hidden = 7, 2, 3
    log_a, b, h0, weights = (
        jnp.asarray(v, jnp.float32)
        for v in (
            -rng.uniform(0.0, 2.0, (time, batch, hidden)),
            rng.standard_normal((time, batch, hidden)),
            rng.standard_normal((batch, hidden)),
            rng.standard_normal((time, batch, hidden)),
        )
    )
    valid = jnp.asarray(rng.uniform(size=(time, batch)) > 0.3)

    def by_steps(log_a, b, h0, reverse):
        states, state = [None] * time, h0
        for t in range(time - 1, -1, -1) if reverse else range(time):
            state = jnp.where(valid[t][:, None], jnp.exp(log_a[t]) * state + b[t], state)
            states[t] = state
        return jnp.stack(states)

    for reverse in (False, True):

        def loss(solve, *args, reverse=reverse):
            return jnp.sum(solve(*args, reverse) * weights)

        ours = jax.grad(
            functools.partial(
                loss, lambda *a: linear_recurrence(*a[:3], valid=valid, reverse=a[3], loop=loop)
            ),
            argnums=(0, 1, 2),
        )(log_a, b, h0)
        expected = jax.grad(functools.partial(loss, by_steps), argnums=(0, 1, 2))(log_a, b, h0)
        for got, want in zip(ours, expected, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_linear_recurrence_bad_input():
    ones = jnp.ones((3, 2, 4))
    with pytest.raises(ValueError, match="loop must be"):
        linear_recurrence(ones, ones, jnp.ones((2, 4)), loop="cumsum")
    with pytest.raises(ValueError, match="loop must be 'linear_scan' or 'associative'"):
        linear_recurrence(ones, ones, jnp.ones((2, 4)), loop="fused")
    with pytest.raises(ValueError, match="h0 must be"):
        linear_recurrence(ones, ones, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="log_a and b"):
        linear_recurrence(ones, jnp.ones((3, 2, 5)), jnp.ones((2, 4)))
