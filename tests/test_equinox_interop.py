"""Equinox's LSTMCell / GRUCell against their gatenets conversions, both ways, and a gatenets
layer inside an Equinox model (filter_jit, filter_grad, the dropout stream)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_cells import randomize

import gatenets
from gatenets.interop import from_equinox, reseed_dropout, to_equinox

B, T, I, H = 2, 5, 3, 4
TOLERANCE = 1e-6


def equinox_run(cell, x):
    """Runs an Equinox cell over ``x[batch, time, in]`` step by step; returns the outputs
    ``[batch, time, hidden]`` and the final state (``(h, c)`` or ``h``)."""
    lstm = isinstance(cell, eqx.nn.LSTMCell)
    zeros = jnp.zeros((x.shape[0], cell.hidden_size), x.dtype)
    state = (zeros, zeros) if lstm else zeros
    outputs = []
    for t in range(x.shape[1]):
        state = jax.vmap(cell)(x[:, t], state)
        outputs.append(state[0] if lstm else state)
    return jnp.stack(outputs, axis=1), state


def randomize_equinox(cell, seed):
    leaves, treedef = jax.tree_util.tree_flatten(cell)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, leaf.shape, leaf.dtype) if eqx.is_array(leaf) else leaf
            for k, leaf in zip(keys, leaves, strict=True)
        ],
    )


def inputs(seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((B, T, I)), jnp.float32)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_from_equinox_matches_equinox(kind, use_bias):
    cell = getattr(eqx.nn, kind)(I, H, use_bias=use_bias, key=jax.random.key(0))
    cell = randomize_equinox(cell, 1)  # bias_n and the biases away from their init
    ours = from_equinox(cell)
    assert isinstance(ours, getattr(gatenets, kind))
    x = inputs()
    expected, final = equinox_run(cell, x)
    carry, y = gatenets.RNN(ours)(x, return_carry=True)
    np.testing.assert_allclose(y, expected, atol=TOLERANCE)
    if kind == "LSTMCell":
        np.testing.assert_allclose(carry.c, final[1], atol=TOLERANCE)  # Equinox: (h, c)


@pytest.mark.parametrize(
    "make",
    [
        lambda r: gatenets.LSTMCell(I, H, rngs=r),
        lambda r: gatenets.LSTMCell(I, H, use_recurrent_bias=True, rngs=r),
        lambda r: gatenets.GRUCell(I, H, rngs=r),
        lambda r: gatenets.GRUCell(I, H, use_bias=False, rngs=r),
    ],
)
def test_to_equinox_matches_equinox(make):
    cell = randomize(make(nnx.Rngs(0)))
    theirs = to_equinox(cell)
    x = inputs(2)
    expected, _ = equinox_run(theirs, x)
    np.testing.assert_allclose(gatenets.RNN(cell)(x), expected, atol=TOLERANCE)
    np.testing.assert_allclose(gatenets.RNN(from_equinox(theirs))(x), expected, atol=TOLERANCE)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: gatenets.LSTMCell(I, H, peephole=True, rngs=r), "peepholes"),
        (lambda r: gatenets.LSTMCell(I, H, proj_size=2, rngs=r), "projection"),
        (lambda r: gatenets.GRUCell(I, H, reset_after=False, rngs=r), "reset_after=False"),
        (lambda r: gatenets.GRUCell(I, H, gate_fn=jax.nn.hard_sigmoid, rngs=r), "hard_sigmoid"),
        (lambda r: gatenets.LSTMCell(I, H, dtype=jnp.bfloat16, rngs=r), "computes in bfloat16"),
        (lambda r: gatenets.LSTM(I, H, rngs=r), "For a layer, convert each of its cells"),
    ],
)
def test_to_equinox_refuses_what_equinox_cannot_compute(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        to_equinox(make(nnx.Rngs(0)))
    with pytest.raises(TypeError, match="equinox.nn.LSTMCell or equinox.nn.GRUCell"):
        from_equinox(eqx.nn.Linear(I, H, key=jax.random.key(0)))


class Classifier(eqx.Module):
    """An Equinox model with a gatenets layer inside, as the README shows it."""

    lstm: gatenets.LSTM
    head: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        if key is not None:  # a fresh dropout stream for this step
            reseed_dropout(self.lstm, key)
        return jax.vmap(self.head)(self.lstm(x)[:, -1])


@pytest.mark.parametrize("rngs", [nnx.Rngs(0), nnx.Rngs(params=0, dropout=1)])
def test_a_gatenets_layer_inside_an_equinox_model(rngs):
    model = Classifier(
        gatenets.LSTM(I, H, num_layers=2, dropout=0.5, recurrent_dropout=0.2, rngs=rngs),
        eqx.nn.Linear(H, 2, key=jax.random.key(0)),
    )
    x = inputs(3)

    @eqx.filter_jit
    def loss(model, x, key):
        return jnp.sum(model(x, key=key) ** 2)

    # Without a key, the stream inside the jitted copy never advances: the same mask each call.
    assert loss(model, x, None) == loss(model, x, None)
    # With a key per step, masks change with the key and repeat with it.
    first, second = loss(model, x, jax.random.key(1)), loss(model, x, jax.random.key(2))
    assert first != second and first == loss(model, x, jax.random.key(1))
    grads = eqx.filter_grad(loss)(model, x, jax.random.key(1))
    kernel_grad = grads.lstm.layers[0].cell.kernel[...]
    assert kernel_grad.shape == (I, 4 * H) and bool(jnp.any(kernel_grad != 0))
    model.lstm.eval()  # dropout off: the key no longer matters
    assert loss(model, x, jax.random.key(1)) == loss(model, x, jax.random.key(2))


def test_reseed_dropout_needs_a_stream():
    with pytest.raises(ValueError, match="holds no random stream"):
        reseed_dropout(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0)), jax.random.key(0))
