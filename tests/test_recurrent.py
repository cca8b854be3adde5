"""The sequence layers: masks, reverse, bidirectional, stacks, overrides, gate switch, errors."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from flax import nnx
from helpers import B, H, I, T, inputs, randomize, unavailable_loop_marks
from hypothesis import HealthCheck, given, settings

import gatenets
from gatenets.loop import STACK_LOOPS, family_loops
from gatenets.registry import FAMILIES


def lstm_rnn(**kwargs):
    return gatenets.RNN(randomize(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0))), **kwargs)


# One compiled function per layer kind, reused by every example hypothesis draws.
@nnx.jit
def _run_masked(rnn, x, mask):
    return rnn(x, mask=mask, return_carry=True)


def test_padded_batch_equals_each_sequence_alone():
    rnn = lstm_rnn()
    x = jnp.asarray(inputs())
    lengths = np.array([T, 2])
    carry, y = rnn(x, seq_lengths=jnp.asarray(lengths), return_carry=True)
    for b, length in enumerate(lengths):
        alone_carry, alone = rnn(x[b : b + 1, :length], return_carry=True)
        np.testing.assert_allclose(y[b, :length], alone[0], atol=1e-6)
        np.testing.assert_array_equal(y[b, length:], 0.0)
        np.testing.assert_allclose(carry.h[b], alone_carry.h[0], atol=1e-6)
        np.testing.assert_allclose(carry.c[b], alone_carry.c[0], atol=1e-6)


def test_reverse_with_padding_starts_at_last_valid_step():
    cell = randomize(gatenets.GRUCell(I, H, rngs=nnx.Rngs(0)))
    x = inputs()
    y = gatenets.RNN(cell, reverse=True)(jnp.asarray(x), seq_lengths=jnp.array([T, 3]))
    for b, length in enumerate([T, 3]):
        flipped = x[b : b + 1, :length][:, ::-1].astype(np.float64)
        ref, *_ = reference.gru(cell, flipped)
        np.testing.assert_allclose(y[b, :length], ref[0, ::-1], atol=1e-5)
        np.testing.assert_array_equal(y[b, length:], 0.0)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.booleans(), min_size=B * T, max_size=B * T))
def test_arbitrary_mask_equals_running_only_the_valid_steps(bits):
    rnn = lstm_rnn()
    x = inputs()
    mask = np.array(bits).reshape(B, T)
    carry, y = _run_masked(rnn, jnp.asarray(x), jnp.asarray(mask))
    for b in range(B):
        valid = x[b : b + 1, mask[b]].astype(np.float64)
        ref_y, ref_c, ref_h, _ = (
            reference.lstm(rnn.cell, valid)
            if valid.shape[1]
            else (np.zeros((1, 0, H)), np.zeros((1, H)), np.zeros((1, H)), None)
        )
        np.testing.assert_allclose(y[b, mask[b]], ref_y[0], atol=1e-5)
        np.testing.assert_array_equal(y[b, ~mask[b]], 0.0)
        np.testing.assert_allclose(carry.c[b], ref_c[0], atol=1e-5)
        np.testing.assert_allclose(carry.h[b], ref_h[0], atol=1e-5)


def test_bidirectional_with_padding_matches_two_references():
    rngs = nnx.Rngs(0)
    fwd = randomize(gatenets.LSTMCell(I, H, rngs=rngs), seed=1)
    bwd = randomize(gatenets.LSTMCell(I, H, rngs=rngs), seed=2)
    bi = gatenets.Bidirectional(gatenets.RNN(fwd), gatenets.RNN(bwd, reverse=True))
    x = inputs()
    lengths = [3, T]
    carry, y, trace = bi(
        jnp.asarray(x), seq_lengths=jnp.array(lengths), return_carry=True, return_gates=True
    )
    assert sorted(trace.gates) == ["backward", "forward"]
    for b, length in enumerate(lengths):
        seq = x[b : b + 1, :length].astype(np.float64)
        ref_f, _, hf, _ = reference.lstm(fwd, seq)
        ref_b, _, hb, gb = reference.lstm(bwd, seq[:, ::-1])
        np.testing.assert_allclose(y[b, :length, :H], ref_f[0], atol=1e-5)
        np.testing.assert_allclose(y[b, :length, H:], ref_b[0, ::-1], atol=1e-5)
        np.testing.assert_allclose(carry.forward.h[b], hf[0], atol=1e-5)
        np.testing.assert_allclose(carry.backward.h[b], hb[0], atol=1e-5)
        np.testing.assert_allclose(
            trace.gates["backward"].forget[b, :length], gb["forget"][0, ::-1], atol=1e-5
        )
    np.testing.assert_array_equal(trace.mask, np.arange(T)[None] < np.array(lengths)[:, None])


@pytest.mark.parametrize("cell_type", [gatenets.LSTMCell, gatenets.MinGRUCell])
def test_bidirectional_in_one_loop_equals_two_passes_values_and_gradients(cell_type):
    rngs = nnx.Rngs(0)
    cells = [randomize(cell_type(I, H, rngs=rngs), seed=s) for s in (1, 2)]
    x = jnp.asarray(inputs())
    weights = jnp.asarray(np.random.default_rng(5).standard_normal((B, T, 2 * H)), jnp.float32)
    gate = cell_type.gates_type._fields[0]

    def loss(bi, x, one_loop, overrides):
        bi.one_loop = one_loop
        carry, y, trace = bi(
            x,
            seq_lengths=jnp.array([3, T]),
            return_carry=True,
            return_gates=True,
            gate_overrides=overrides,
        )
        gates = sum(jnp.sum(g) for g in trace.flat().values())
        return jnp.sum(weights * y) + jnp.sum(carry.backward.h**2) + 0.1 * gates

    # Shared overrides run in one loop; per-direction overrides fall back to two passes, so
    # the second pair checks that the fallback is taken and still right.
    for overrides in ({gate: lambda g: 0.5 * g}, {"backward": {gate: 0.25}}):
        results = []
        for one_loop in (True, False):
            bi = gatenets.Bidirectional(
                gatenets.RNN(cells[0]), gatenets.RNN(cells[1], reverse=True)
            )
            value, (grads, grad_x) = nnx.value_and_grad(loss, argnums=(0, 1))(
                bi, x, one_loop, overrides
            )
            results.append((value, jax.tree.leaves(nnx.state(grads)), grad_x))
        np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
        np.testing.assert_allclose(results[0][2], results[1][2], atol=1e-6)
        for a, b in zip(results[0][1], results[1][1], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
            assert np.abs(np.asarray(a)).max() > 0


@pytest.mark.parametrize(
    "make_layer, loop",
    [
        (gatenets.LSTM, "fused"),
        (gatenets.LSTM, "scan"),
        (gatenets.GRU, "fused"),
        (gatenets.GRU, "scan"),
        (gatenets.MinGRU, "auto"),
        (gatenets.MinLSTM, "associative"),
        (gatenets.RGLRU, "auto"),
    ],
)
def test_nan_and_inf_in_padding_leave_gradients_equal_to_zero_padding(make_layer, loop):
    layer = make_layer(I, H, loop=loop, bidirectional=True, rngs=nnx.Rngs(0))
    mask = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], bool)
    clean = np.where(mask[:, :, None], inputs(), 0.0).astype(np.float32)
    poisoned = clean.copy()
    poisoned[0, 3:] = np.nan
    poisoned[1, 0] = np.inf

    def loss(layer, x):
        return jnp.sum(layer(x, mask=jnp.asarray(mask)) ** 2)

    grad = nnx.grad(loss, argnums=(0, 1))
    (g_clean, gx_clean), (g_poisoned, gx_poisoned) = (
        grad(layer, jnp.asarray(clean)),
        grad(layer, jnp.asarray(poisoned)),
    )
    leaves = [jax.tree.leaves(nnx.state(g)) for g in (g_clean, g_poisoned)]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(gx_clean, gx_poisoned)
    np.testing.assert_array_equal(np.asarray(gx_poisoned)[~mask], 0.0)


def test_time_major_equals_batch_major():
    rnn = lstm_rnn()
    x = jnp.asarray(inputs())
    tm = gatenets.RNN(rnn.cell, time_major=True)
    np.testing.assert_allclose(tm(x.swapaxes(0, 1)).swapaxes(0, 1), rnn(x), atol=1e-6)


def test_projection_inside_step_equals_projection_before_scan():
    rnn = lstm_rnn(precompute_inputs=True)
    inside = gatenets.RNN(rnn.cell, precompute_inputs=False)
    x = jnp.asarray(inputs())
    np.testing.assert_allclose(
        inside(x, seq_lengths=jnp.array([4, 2])), rnn(x, seq_lengths=jnp.array([4, 2])), atol=1e-6
    )


def test_initial_carry_and_learned_initial_carry():
    rnn = lstm_rnn()
    x = inputs()
    rng = np.random.default_rng(3)
    c0, h0 = (
        rng.standard_normal((B, H)).astype(np.float32),
        rng.standard_normal((B, H)).astype(np.float32),
    )
    y = rnn(jnp.asarray(x), initial_carry=gatenets.LSTMCarry(c=c0, h=h0))
    ref, *_ = reference.lstm(rnn.cell, x.astype(np.float64), c0, h0)
    np.testing.assert_allclose(y, ref, atol=1e-5)

    learned = gatenets.RNN(rnn.cell, learn_initial_carry=True)
    learned.initial_carry.h[...] = jnp.asarray(h0[0])
    ref, *_ = reference.lstm(
        rnn.cell, x.astype(np.float64), np.zeros((B, H)), np.broadcast_to(h0[0], (B, H))
    )
    np.testing.assert_allclose(learned(jnp.asarray(x)), ref, atol=1e-5)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(x))))(learned)
    assert float(jnp.abs(grads.initial_carry.h[...]).sum()) > 0.0


STACK_CONFIGS = [
    (gatenets.LSTM, {"num_layers": 2}),
    (gatenets.LSTM, {"num_layers": 2, "bidirectional": True, "proj_size": 3}),
    (gatenets.GRU, {"num_layers": 2, "bidirectional": True}),
]


@pytest.mark.parametrize("layer_type, kwargs", STACK_CONFIGS)
def test_stack_equals_chained_references(layer_type, kwargs):
    layer = randomize(layer_type(I, H, rngs=nnx.Rngs(0), **kwargs))
    x = inputs().astype(np.float64)
    y, trace = layer(jnp.asarray(x, jnp.float32), return_gates=True)
    ref_fn = reference.lstm if layer_type is gatenets.LSTM else reference.gru
    ref = x
    for k, stack_layer in enumerate(layer.layers):
        if kwargs.get("bidirectional"):
            f = ref_fn(stack_layer.forward_rnn.cell, ref)
            b = ref_fn(stack_layer.backward_rnn.cell, ref[:, ::-1])
            ref = np.concatenate([f[0], b[0][:, ::-1]], axis=-1)
            gate = "forget" if layer_type is gatenets.LSTM else "update"
            np.testing.assert_allclose(
                getattr(trace.gates[f"layer{k}/backward"], gate), b[-1][gate][:, ::-1], atol=1e-5
            )
        else:
            ref = ref_fn(stack_layer.cell, ref)[0]
    np.testing.assert_allclose(y, ref, atol=1e-5)
    assert set(trace.gates) == set(layer.paths)


def test_forget_one_input_zero_keeps_cell_state_constant():
    layer = randomize(gatenets.LSTM(I, H, num_layers=2, rngs=nnx.Rngs(0)))
    x = jnp.asarray(inputs())
    c0 = jnp.asarray(np.random.default_rng(4).standard_normal((B, H)), jnp.float32)
    carry0 = tuple(gatenets.LSTMCarry(c=c0, h=jnp.zeros((B, H))) for _ in range(2))
    carry, _, trace = layer(
        x,
        initial_carry=carry0,
        return_carry=True,
        return_gates=True,
        gate_overrides={"forget": 1.0, "input": 0.0},
    )
    for k in range(2):
        np.testing.assert_array_equal(carry[k].c, c0)
        np.testing.assert_array_equal(trace.gates[f"layer{k}/forward"].forget, 1.0)


def test_overrides_scoped_by_layer_and_direction_and_functions():
    layer = randomize(gatenets.GRU(I, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0)))
    x = jnp.asarray(inputs())
    _, plain = layer(x, return_gates=True)
    _, trace = layer(
        x,
        return_gates=True,
        gate_overrides={
            "layer1/backward": {"update": lambda z: 0.5 * z},
            "layer0": {"reset": 0.25},
        },
    )
    np.testing.assert_array_equal(trace.gates["layer0/forward"].reset, 0.25)
    np.testing.assert_array_equal(trace.gates["layer0/backward"].reset, 0.25)
    # layer1/forward sees changed inputs but no override: its gates are not constant.
    assert float(trace.gates["layer1/forward"].reset.std()) > 0
    # Overriding update on layer1/backward with z/2: its value is half of what it computes.
    u = trace.gates["layer1/backward"].update
    assert float(u.max()) <= 0.5 and not np.allclose(u, plain.gates["layer1/backward"].update)


def test_gate_overrides_on_a_single_rnn_make_the_output_follow():
    rnn = lstm_rnn()
    x = jnp.asarray(inputs())
    y = rnn(x, gate_overrides={"output": 0.0})
    np.testing.assert_array_equal(y, 0.0)


def _scan_eqn(jaxpr):
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    return eqn


def test_return_gates_is_a_static_switch_with_no_cost_when_off():
    # The generic scan path; tests/test_kernels.py checks the same of the fused kernels.
    rnn = gatenets.RNN(randomize(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0))), loop="scan")
    graphdef, state = nnx.split(rnn)
    x = jnp.asarray(inputs())

    def run(state, x, **kwargs):
        return nnx.merge(graphdef, state)(x, **kwargs)

    off = jax.make_jaxpr(lambda s, x: run(s, x))(state, x)
    on = jax.make_jaxpr(lambda s, x: run(s, x, return_gates=True))(state, x)
    scan_off, scan_on = _scan_eqn(off.jaxpr), _scan_eqn(on.jaxpr)
    # Off: the loop emits the carry (c, h) and the output only; on: plus the three gates.
    assert len(scan_off.outvars) == 3
    assert len(scan_on.outvars) == 3 + 3
    # The loop body does the same arithmetic either way: gates cost nothing extra per step.
    body_off = [e.primitive.name for e in scan_off.params["jaxpr"].jaxpr.eqns]
    body_on = [e.primitive.name for e in scan_on.params["jaxpr"].jaxpr.eqns]
    assert body_off == body_on
    # And the compiled program without gates is smaller: nothing [time, batch, hidden] is kept.
    lowered_off = jax.jit(lambda s, x: run(s, x)).lower(state, x).compile()
    lowered_on = jax.jit(lambda s, x: run(s, x, return_gates=True)).lower(state, x).compile()
    assert len(lowered_off.as_text()) < len(lowered_on.as_text())


def test_dropout_only_in_training_mode_and_variational():
    layer = gatenets.LSTM(I, H, num_layers=2, dropout=0.5, recurrent_dropout=0.5, rngs=nnx.Rngs(0))
    x = jnp.asarray(inputs())
    layer.train()
    a, b = layer(x), layer(x)
    assert not np.allclose(a, b)
    layer.eval()
    np.testing.assert_array_equal(layer(x), layer(x))
    # Variational: one mask per sequence. Sample it and check it is shared by every step.
    rnn = layer.layers[0]
    rnn.train()
    mask = rnn._recurrent_mask(B)
    assert mask.shape == (B, H) and set(np.unique(np.asarray(mask))) <= {0.0, 2.0}


# ------------------------------------------------------------------------------------------
# Bad input: each a clear error naming the argument.


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda r: r(jnp.ones((B, T, I + 1))), ValueError, "in_features = 3"),
        (lambda r: r(jnp.ones((T, I))), ValueError, "rank 3"),
        (lambda r: r(jnp.ones((B, T, I), jnp.int32)), TypeError, "floating-point"),
        (
            lambda r: r(jnp.ones((B, T, I)), seq_lengths=jnp.array([1, 2, 3])),
            ValueError,
            "seq_lengths must have shape",
        ),
        (
            lambda r: r(jnp.ones((B, T, I)), seq_lengths=jnp.array([1, T + 1])),
            ValueError,
            r"seq_lengths must lie in \[0, time\]",
        ),
        (
            lambda r: r(jnp.ones((B, T, I)), seq_lengths=jnp.array([-1, 2])),
            ValueError,
            "seq_lengths must lie",
        ),
        (
            lambda r: r(jnp.ones((B, T, I)), seq_lengths=jnp.array([1.0, 2.0])),
            TypeError,
            "seq_lengths must hold integers",
        ),
        (
            lambda r: r(jnp.ones((B, T, I)), mask=jnp.ones((B, T + 1), bool)),
            ValueError,
            "mask must have shape",
        ),
        (
            lambda r: r(jnp.ones((B, T, I)), mask=jnp.ones((B, T))),
            TypeError,
            "mask must be boolean",
        ),
        (
            lambda r: r(
                jnp.ones((B, T, I)), mask=jnp.ones((B, T), bool), seq_lengths=jnp.array([1, 2])
            ),
            ValueError,
            "not both",
        ),
        (
            lambda r: r(jnp.ones((B, T, I)), gate_overrides={"forgett": 1.0}),
            ValueError,
            "unknown gate 'forgett'",
        ),
        (
            lambda r: r(
                jnp.ones((B, T, I)),
                initial_carry=gatenets.LSTMCarry(jnp.zeros((B, H + 1)), jnp.zeros((B, H))),
            ),
            ValueError,
            "initial_carry",
        ),
        (
            lambda r: r(jnp.ones((B, T, I)), initial_carry=jnp.zeros((B, H))),
            TypeError,
            r"initial_carry must be a LSTMCarry\('c', 'h'\)",
        ),
    ],
)
def test_rnn_bad_input_raises_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call(lstm_rnn())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"layer5": {"forget": 1.0}}, "unknown key 'layer5'"),
        ({"layer0": {"gate": 1.0}}, "unknown gate 'gate'"),
        ({"layer0/backward": {"forget": 1.0}}, "unknown key 'layer0/backward'"),
        ([("forget", 1.0)], "must be a mapping"),
    ],
)
def test_stack_bad_overrides_raise(overrides, message):
    layer = gatenets.LSTM(I, H, num_layers=2, rngs=nnx.Rngs(0))
    with pytest.raises((ValueError, TypeError), match=message):
        layer(jnp.ones((B, T, I)), gate_overrides=overrides)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            {"forget": 2.0},
            ValueError,
            r"gate_overrides\['forget'\] .* must lie in \[0, 1\] .*got 2.0",
        ),
        ({"forget": -1}, ValueError, r"must lie in \[0, 1\] .*got -1"),
        ({"input": float("nan")}, ValueError, r"gate_overrides\['input'\] .* got nan"),
        ({"output": np.array([0.5, 1.5])}, ValueError, "values from 0.5 to 1.5"),
        ({"forget": "one"}, TypeError, r"gate_overrides\['forget'\] .* got str 'one'"),
        ({"forget": True}, TypeError, "got bool True"),
        ({"forget": np.array(["a"])}, TypeError, "must hold numbers"),
        ({"layer1": {"forget": 3.0}}, ValueError, "for layer1 must lie in"),
        ({"forget": jnp.ones((B, H + 1))}, ValueError, r"shape \(2, 5\), which does not broadcast"),
    ],
)
def test_bad_override_values_raise_naming_the_gate(overrides, error, message):
    layer = gatenets.LSTM(I, H, num_layers=2, loop="scan", rngs=nnx.Rngs(0))
    with pytest.raises(error, match=message):
        layer(jnp.ones((B, T, I)), gate_overrides=overrides)


def test_minimal_cells_refuse_out_of_range_overrides_that_made_nan():
    layer = gatenets.MinGRU(I, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"gate_overrides\['update'\].*must lie in \[0, 1\]"):
        layer(jnp.ones((B, T, I)), gate_overrides={"update": 2.0})
    # In range, the same override keeps every output finite (0 and 1 are the edges).
    for value in (0.0, 1.0):
        assert np.isfinite(layer(jnp.ones((B, T, I)), gate_overrides={"update": value})).all()


def test_return_gates_must_be_static():
    rnn = lstm_rnn()

    @jax.jit
    def traced(x, flag):
        return rnn(x, return_gates=flag)

    with pytest.raises(TypeError, match="return_gates must be a Python bool .*static_argnames"):
        traced(jnp.ones((B, T, I)), True)
    layer = gatenets.GRU(I, H, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="GRU: return_carry must be a Python bool"):
        layer(jnp.ones((B, T, I)), return_carry=jnp.array(True))


def test_cell_called_with_a_carry_of_another_batch_names_the_carry():
    cell = gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0))
    carry = cell.initialize_carry((3, I))
    with pytest.raises(
        ValueError, match=r"carry.c has shape \(3, 4\), but inputs of shape \(2, 3\)"
    ):
        cell(carry, jnp.ones((B, I)))


def test_traced_seq_lengths_out_of_range_clip_by_default_and_raise_when_checked():
    from jax.experimental import checkify

    rnn = lstm_rnn(return_carry=True)
    x = jnp.asarray(inputs())

    def run(x, lengths):
        return rnn(x, seq_lengths=lengths)

    # Documented default under jit: above time counts as time, below 0 as 0.
    carry, y = jax.jit(run)(x, jnp.array([T + 3, -2]))
    full_carry, full = rnn(x, seq_lengths=jnp.array([T, 0]))
    np.testing.assert_array_equal(y, full)
    np.testing.assert_array_equal(carry.h, full_carry.h)
    checked = jax.jit(checkify.checkify(gatenets.with_checks(run)))
    err, _ = checked(x, jnp.array([T + 3, 1]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"seq_lengths must lie in \[0, time\]"):
        err.throw()
    err, _ = checked(x, jnp.array([T, 1]))
    err.throw()  # in range: no error


def test_bad_layer_settings_raise():
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        gatenets.GRU(I, H, num_layers=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        gatenets.GRU(I, H, dropout=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="recurrent_dropout"):
        gatenets.RNN(gatenets.GRUCell(I, H, rngs=nnx.Rngs(0)), recurrent_dropout=0.2)
    with pytest.raises(TypeError, match="cell must be a gatenets cell"):
        gatenets.RNN(nnx.OptimizedLSTMCell(I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="initial_carry must be a tuple of 2"):
        gatenets.GRU(I, H, num_layers=2, rngs=nnx.Rngs(0))(
            jnp.ones((B, T, I)), initial_carry=(None,)
        )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 3),
    time=st.integers(1, 4),
    features=st.integers(1, 3),
    hidden=st.integers(1, 3),
    lstm=st.booleans(),
    data=st.data(),
)
def test_any_shape_and_lengths_match_reference(batch, time, features, hidden, lstm, data):
    cell_type = gatenets.LSTMCell if lstm else gatenets.GRUCell
    cell = randomize(cell_type(features, hidden, rngs=nnx.Rngs(0)))
    lengths = np.array(data.draw(st.lists(st.integers(0, time), min_size=batch, max_size=batch)))
    x = inputs(shape=(batch, time, features))
    y = gatenets.RNN(cell)(jnp.asarray(x), seq_lengths=jnp.asarray(lengths))
    assert y.shape == (batch, time, hidden)
    ref_fn = reference.lstm if lstm else reference.gru
    for b, length in enumerate(lengths):
        if length:
            ref = ref_fn(cell, x[b : b + 1, :length].astype(np.float64))[0]
            np.testing.assert_allclose(y[b, :length], ref[0], atol=1e-5)
        np.testing.assert_array_equal(y[b, length:], 0.0)


@pytest.mark.parametrize(
    "name, loop",
    [
        pytest.param(name, str(loop), marks=unavailable_loop_marks(loop))
        for name, family in FAMILIES.items()
        for loop in family_loops(name)
        if loop not in STACK_LOOPS
    ],
)
def test_empty_sequences_keep_the_initial_carry_and_differentiate_to_zero(name, loop):
    layer = FAMILIES[name].layer(I, H, loop=loop, bidirectional=True, rngs=nnx.Rngs(0))
    x = jnp.ones((B, 0, I))

    def loss(layer, x):
        carries, y = layer(x, seq_lengths=jnp.zeros((B,), jnp.int32), return_carry=True)
        assert y.shape == (B, 0, 2 * H)
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(carries))

    value, grads = nnx.value_and_grad(loss)(layer, x)
    assert float(value) == 0.0  # zero initial carries, held
    for leaf in jax.tree.leaves(nnx.state(grads)):
        assert not np.asarray(leaf).any()
