"""Flax's cell contract, checked with gatenets cells: carries, ``initialize_carry``, ``nnx.RNN``
and ``nnx.Bidirectional`` options, ``gate_fn`` / ``activation_fn``, and the errors Flax users
meet first. Values are compared with Flax's own cells or with the gatenets layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import B, H, I, T, inputs, randomize

import gatenets


def lstm():
    return randomize(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0)))


def gru():
    return randomize(gatenets.GRUCell(I, H, rngs=nnx.Rngs(0)), seed=1)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (gatenets.LSTMCell, nnx.LSTMCell),
        (gatenets.LSTMCell, nnx.OptimizedLSTMCell),
        (gatenets.GRUCell, nnx.GRUCell),
    ],
)
def test_initialize_carry_draws_what_flax_draws(ours, theirs):
    shape = (B, I)
    mine = ours(I, H, rngs=nnx.Rngs(0))
    flax_cell = theirs(I, H, rngs=nnx.Rngs(0))
    init = nnx.initializers.normal(0.3)
    got = mine.initialize_carry(shape, nnx.Rngs(params=0, carry=1), init)
    want = flax_cell.initialize_carry(shape, nnx.Rngs(params=0, carry=1), init)
    want = want if isinstance(want, tuple) else (want,)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # Defaults: zeros, no stream needed; carry_init=None is the default as in Flax.
    zeros = mine.initialize_carry(shape, rngs=None, carry_init=None)
    assert all(not np.asarray(leaf).any() for leaf in zeros)
    assert isinstance(zeros, mine.carry_type)
    # A stream passed directly works too.
    stream = nnx.Rngs(carry=1).carry
    again = mine.initialize_carry(shape, stream, init)
    for a, b in zip(again, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bare_arrays_go_in_named_tuples_come_out_and_ambiguous_tuples_are_refused():
    x = jnp.asarray(inputs())
    cell = gru()
    carry = cell.initialize_carry((B, I), nnx.Rngs(carry=2), nnx.initializers.normal(0.5))
    new_named, y_named = cell(carry, x[:, 0])
    new_bare, y_bare = cell(carry.h, x[:, 0])  # Flax's GRU carry: the bare h
    assert isinstance(new_bare, cell.carry_type)
    np.testing.assert_array_equal(y_named, y_bare)
    rnn = gatenets.RNN(cell, return_carry=True)
    (final_named, out_named), (final_bare, out_bare) = (
        rnn(x, initial_carry=carry),
        rnn(x, initial_carry=carry.h),
    )
    np.testing.assert_array_equal(out_named, out_bare)
    assert isinstance(final_bare, cell.carry_type)
    np.testing.assert_array_equal(final_named.h, final_bare.h)
    # An LSTM's (c, h) and PyTorch's (h, c) look alike: a plain pair is refused, both named.
    cell = lstm()
    carry = cell.initialize_carry((B, I))
    for bad in ((carry.c, carry.h), [carry.h, carry.c]):
        with pytest.raises(
            TypeError, match=r"reads two ways: \(c, h\) as Flax .*\(h, c\) as PyTorch"
        ):
            cell(bad, x[:, 0])
        with pytest.raises(TypeError, match="initial_carry is a plain"):
            gatenets.RNN(cell)(x, initial_carry=bad)


@pytest.mark.parametrize("make", [lstm, gru])
def test_nnx_rnn_options_equal_the_gatenets_layer(make):
    cell = make()
    x = jnp.asarray(inputs())
    lengths = jnp.array([T, 2])
    ours = gatenets.RNN(cell, return_carry=True)
    carry, y = ours(x, seq_lengths=lengths)
    flax_carry, flax_y = nnx.RNN(cell, return_carry=True)(x, seq_lengths=lengths)
    valid = np.arange(T)[None] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(flax_y)[valid], np.asarray(y)[valid], atol=1e-6)
    for a, b in zip(flax_carry, carry, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # reverse + keep_order, time_major, unroll.
    reverse = gatenets.RNN(cell, reverse=True)(x)
    np.testing.assert_allclose(
        nnx.RNN(cell, reverse=True, keep_order=True, unroll=2)(x), reverse, atol=1e-6
    )
    np.testing.assert_allclose(
        nnx.RNN(cell, time_major=True)(x.swapaxes(0, 1)).swapaxes(0, 1),
        gatenets.RNN(cell)(x),
        atol=1e-6,
    )


def test_nnx_bidirectional_with_merge_fn_equals_gatenets_bidirectional():
    forward, backward = lstm(), randomize(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(1)), seed=3)
    x = jnp.asarray(inputs())

    def merge(a, b):
        return a + 2 * b

    theirs = nnx.Bidirectional(
        nnx.RNN(forward), nnx.RNN(backward, reverse=True, keep_order=True), merge_fn=merge
    )(x)
    ours = gatenets.Bidirectional(
        gatenets.RNN(forward), gatenets.RNN(backward, reverse=True), merge_fn=merge
    )(x)
    np.testing.assert_allclose(theirs, ours, atol=1e-6)


class TupleCarryLSTM(gatenets.LSTMCell):
    """A subclass that builds its carry as Flax code does: a plain ``(c, h)`` tuple."""

    tuple_carries = True

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        carry = super().initialize_carry(input_shape, rngs, carry_init)
        return (carry.c, carry.h)


def test_recurrent_dropout_through_a_subclass_with_a_tuple_carry_jit_and_grad():
    cell = randomize(TupleCarryLSTM(I, H, rngs=nnx.Rngs(0)))
    plain = randomize(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0)))
    x = jnp.asarray(inputs())
    runs = [gatenets.RNN(c, recurrent_dropout=0.5, rngs=nnx.Rngs(dropout=4)) for c in (cell, plain)]

    @nnx.jit
    def loss(rnn, x):
        return jnp.sum(rnn(x) ** 2)

    values = [nnx.value_and_grad(loss)(rnn, x) for rnn in runs]
    np.testing.assert_allclose(values[0][0], values[1][0], rtol=1e-6)
    for a, b in zip(
        jax.tree.leaves(nnx.state(values[0][1])),
        jax.tree.leaves(nnx.state(values[1][1])),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def hard_sigmoid(x):
    return np.clip(x / 6 + 0.5, 0.0, 1.0)


def test_gate_fn_and_activation_fn_run_on_the_scan_and_match_a_numpy_loop():
    cell = randomize(
        gatenets.LSTMCell(
            I, H, gate_fn=nnx.hard_sigmoid, activation_fn=nnx.soft_sign, rngs=nnx.Rngs(0)
        ),
        scale=3.0,
    )
    assert cell.resolve_loop() is gatenets.Loop.SCAN
    with pytest.raises(ValueError, match="fused kernels compute sigmoid gates"):
        gatenets.RNN(cell, loop="fused")
    x = inputs()
    y, trace = gatenets.RNN(cell)(jnp.asarray(x), return_gates=True)
    kernel, recurrent = np.asarray(cell.kernel[...]), np.asarray(cell.recurrent_kernel[...])
    bias = np.asarray(cell.bias[...])
    c, h = np.zeros((B, H)), np.zeros((B, H))
    forget = []
    for t in range(T):
        z = x[:, t] @ kernel + h @ recurrent + bias
        zi, zf, zg, zo = np.split(z, 4, axis=-1)
        i, f, o = hard_sigmoid(zi), hard_sigmoid(zf), hard_sigmoid(zo)
        c = f * c + i * (zg / (1 + np.abs(zg)))
        h = o * (c / (1 + np.abs(c)))
        forget.append(f)
        np.testing.assert_allclose(y[:, t], h, atol=1e-5)
    np.testing.assert_allclose(trace.gates["forward"].forget, np.stack(forget, 1), atol=1e-6)
    assert {0.0, 1.0} & set(np.unique(np.asarray(trace.gates["forward"].forget)))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda c: c(
                gatenets.LSTMCarry(c=jnp.zeros((B, H + 1)), h=jnp.zeros((B, H))), jnp.ones((B, I))
            ),
            ValueError,
            r"carry.c must have 4 features .* got shape \(2, 5\)",
        ),
        (
            lambda c: c(jnp.zeros((B, H)), jnp.ones((B, I))),
            TypeError,
            r"carry must be a LSTMCarry\('c', 'h'\)",
        ),
        (
            lambda c: c(c.initialize_carry((B, I)), jnp.ones((B, I + 2))),
            ValueError,
            "in_features = 3",
        ),
        (
            lambda c: gatenets.RNN(c)(
                jnp.ones((B, T, I)), initial_carry=gatenets.LSTMCarry(*(jnp.zeros((B, 2)),) * 2)
            ),
            ValueError,
            "initial_carry.c must have 4 features",
        ),
        (
            lambda c: c.initialize_carry((B, I), nnx.Rngs(params=0), nnx.initializers.normal()),
            ValueError,
            "rngs must have a 'carry' or a default stream",
        ),
    ],
)
def test_mistakes_flax_users_make_get_errors_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0)))


def randomized_flax(module, seed):
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    nnx.update(
        module,
        jax.tree.unflatten(
            treedef, [jnp.asarray(0.5 * rng.standard_normal(v.shape), v.dtype) for v in leaves]
        ),
    )
    return module


FLAX_CELLS = {
    "LSTMCell": lambda: nnx.LSTMCell(I, H, rngs=nnx.Rngs(0)),
    "OptimizedLSTMCell": lambda: nnx.OptimizedLSTMCell(I, H, rngs=nnx.Rngs(0)),
    "GRUCell": lambda: nnx.GRUCell(I, H, rngs=nnx.Rngs(0)),
    "LSTMCell hard_sigmoid": lambda: nnx.LSTMCell(I, H, gate_fn=nnx.hard_sigmoid, rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("name", FLAX_CELLS)
def test_from_flax_cells_rnn_and_bidirectional_compute_what_flax_computes(name):
    from gatenets.interop import from_flax, to_flax

    flax_cells = [randomized_flax(FLAX_CELLS[name](), seed) for seed in (1, 2)]
    x = jnp.asarray(inputs())
    lengths = jnp.array([T, 3])
    cell = from_flax(flax_cells[0])
    carry = flax_cells[0].initialize_carry((B, I), nnx.Rngs(carry=5), nnx.initializers.normal())
    # A Flax carry is a plain tuple in the carry type's field order ((c, h) for an LSTM, the
    # bare h for a GRU): named once, it goes in.
    ours = cell.carry_type(*carry) if isinstance(carry, tuple) else carry
    (flax_new, flax_y), (new, y) = flax_cells[0](carry, x[:, 0]), cell(ours, x[:, 0])
    np.testing.assert_allclose(y, flax_y, atol=1e-6)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(flax_new), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    flax_rnn = nnx.RNN(flax_cells[0], return_carry=True)
    rnn = from_flax(flax_rnn)
    (flax_final, flax_out), (final, out) = (
        flax_rnn(x, seq_lengths=lengths),
        rnn(x, seq_lengths=lengths, return_carry=True),
    )
    valid = np.arange(T)[None] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(flax_out)[valid], atol=1e-6)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(flax_final), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    flax_bi = nnx.Bidirectional(nnx.RNN(flax_cells[0]), nnx.RNN(flax_cells[1]))
    np.testing.assert_allclose(from_flax(flax_bi)(x), flax_bi(x), atol=1e-6)
    # Round trip: gatenets -> Flax -> gatenets keeps every weight exactly.
    kind_kwargs = {"optimized": name == "OptimizedLSTMCell"} if "LSTM" in name else {}
    back = from_flax(to_flax(cell, **kind_kwargs))
    for path, value in nnx.to_flat_state(nnx.state(back, nnx.Param)):
        np.testing.assert_array_equal(
            value[...], dict(nnx.to_flat_state(nnx.state(cell)))[path][...]
        )
    assert back.gate_fn is cell.gate_fn


@pytest.mark.parametrize(
    "make",
    [
        lambda: gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0)),
        lambda: gatenets.GRUCell(I, H, rngs=nnx.Rngs(0)),
    ],
)
def test_to_flax_linen_params_run_in_linen_cells(make):
    from flax import linen as nn

    from gatenets.interop import from_flax, to_flax

    cell = randomize(make(), seed=4)
    params = to_flax(cell, linen=True)
    if isinstance(cell, gatenets.GRUCell):
        # Linen's GRU has one bias for r and z, so b_hr, b_hz fold into the input bias: the
        # same function; the parameters come back exactly where Flax has them apart.
        cell.recurrent_bias[...] = cell.recurrent_bias[...].at[: 2 * H].set(0.0)
        params = to_flax(cell, linen=True)
    linen_cell = nn.LSTMCell(H) if isinstance(cell, gatenets.LSTMCell) else nn.GRUCell(H)
    x = jnp.asarray(inputs())[:, 0]
    carry = cell.initialize_carry((B, I), nnx.Rngs(carry=1), nnx.initializers.normal())
    flax_carry = (carry.c, carry.h) if isinstance(cell, gatenets.LSTMCell) else carry.h
    _, linen_y = linen_cell.apply(params, flax_carry, x)
    np.testing.assert_allclose(cell(carry, x)[1], linen_y, atol=1e-6)
    back = from_flax(params)
    for path, value in nnx.to_flat_state(nnx.state(back, nnx.Param)):
        np.testing.assert_array_equal(
            value[...], dict(nnx.to_flat_state(nnx.state(cell)))[path][...]
        )


def test_to_flax_refuses_what_flax_cells_cannot_hold():
    from gatenets.interop import from_flax, to_flax

    with pytest.raises(ValueError, match="no peepholes or projection"):
        to_flax(gatenets.LSTMCell(I, H, peephole=True, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="reset_after=False"):
        to_flax(gatenets.GRUCell(I, H, reset_after=False, rngs=nnx.Rngs(0)))
    gru = randomize(gatenets.GRUCell(I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"no bias inside the reset product \(b_hn\)"):
        to_flax(gru)
    with pytest.raises(ValueError, match="keys are"):
        from_flax({"params": {"dense": {"kernel": np.zeros((2, 2))}}})
    with pytest.raises(TypeError, match="must be a Flax nnx.LSTMCell"):
        from_flax(nnx.SimpleCell(I, H, rngs=nnx.Rngs(0)))
