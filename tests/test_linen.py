"""The flax.linen bridge: same outputs and gates as the NNX layers with the same weights, a
linen model that trains, weights both ways, dropout modes, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from helpers import B, H, I, T, inputs, randomize

import gatenets
import gatenets.linen as gl
from gatenets.registry import FAMILIES

# Every registered family has its linen wrapper, named as its layer.
PAIRS = {
    family.layer.__name__: (family.layer, getattr(gl, family.layer.__name__))
    for family in FAMILIES.values()
}


@pytest.mark.parametrize("name", PAIRS)
def test_same_outputs_and_gates_as_the_nnx_layer_with_the_same_weights(name):
    nnx_type, linen_type = PAIRS[name]
    layer = randomize(nnx_type(I, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0)))
    bridged = linen_type(H, num_layers=2, bidirectional=True)
    x = jnp.asarray(inputs())
    lengths = jnp.array([T, 2])
    y, trace = bridged.apply(
        {"params": gl.params_from_nnx(layer)}, x, seq_lengths=lengths, return_gates=True
    )
    ref_y, ref_trace = layer(x, seq_lengths=lengths, return_gates=True)
    np.testing.assert_allclose(y, ref_y, atol=1e-6)
    assert sorted(trace.flat()) == sorted(ref_trace.flat())
    for (path, gate), (_, ref_gate) in zip(trace.items(), ref_trace.items(), strict=True):
        np.testing.assert_allclose(gate, ref_gate, atol=1e-6, err_msg=path)
    # The bridge's own initialisation has exactly the NNX layer's parameter layout.
    init_params = bridged.init(jax.random.key(1), x)["params"]
    assert jax.tree.structure(init_params) == jax.tree.structure(gl.params_from_nnx(layer))
    assert jax.tree.map(jnp.shape, init_params) == jax.tree.map(
        jnp.shape, gl.params_from_nnx(layer)
    )


class Model(nn.Module):
    """A linen model: a bridged minGRU and a linen head."""

    @nn.compact
    def __call__(self, x):
        y = gl.MinGRU(H, name="mingru")(x)
        return nn.Dense(1)(y[:, -1])[:, 0]


def test_linen_model_trains_and_its_weights_run_in_nnx():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, T, I)), jnp.float32)
    target = jnp.asarray(x[:, :, 0].sum(axis=1))
    model = Model()
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.adam(3e-2)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean((model.apply({"params": p}, x) - target) ** 2)
        )(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(25):
        params, opt_state, loss = train_step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    mingru = gatenets.MinGRU(I, H, rngs=nnx.Rngs(5))
    mingru = gl.params_to_nnx(params["mingru"], mingru)
    head = params["Dense_0"]
    nnx_prediction = (mingru(x)[:, -1] @ head["kernel"] + head["bias"][None, :])[:, 0]
    np.testing.assert_allclose(nnx_prediction, model.apply({"params": params}, x), atol=1e-5)


def test_dropout_follows_deterministic_and_needs_a_dropout_rng():
    layer = randomize(
        gatenets.MinLSTM(I, H, num_layers=2, dropout=0.5, recurrent_dropout=0.5, rngs=nnx.Rngs(0))
    )
    bridged = gl.MinLSTM(H, num_layers=2, dropout=0.5, recurrent_dropout=0.5)
    variables = {"params": gl.params_from_nnx(layer)}
    x = jnp.asarray(inputs())
    layer.eval()
    np.testing.assert_allclose(bridged.apply(variables, x), layer(x), atol=1e-6)
    noisy = [
        bridged.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(k)})
        for k in (0, 0, 1)
    ]
    np.testing.assert_array_equal(noisy[0], noisy[1])
    assert not np.allclose(noisy[0], noisy[2]) and not np.allclose(noisy[0], layer(x))
    with pytest.raises(ValueError, match="needs a 'dropout' rng"):
        bridged.apply(variables, x, deterministic=False)


def test_bad_params_raise_clear_errors():
    layer = gatenets.GRU(I, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="key 'layer'"):
        gl.params_to_nnx({"cell": {}}, layer)
    with pytest.raises(ValueError, match="do not fit"):
        gl.params_to_nnx(gl.params_from_nnx(gatenets.LSTM(I, H, rngs=nnx.Rngs(0))), layer)
    with pytest.raises(TypeError, match="NNX module"):
        gl.params_from_nnx({"kernel": 1})
    with pytest.raises(ValueError, match="in_features = 4"):
        gl.GRU(H).apply({"params": gl.params_from_nnx(layer)}, jnp.ones((B, T, I + 1)))


@pytest.mark.parametrize("gate", ["elementwise", "headwise", None])
def test_gated_attention_bridge_matches_the_nnx_layer(gate):
    layer = randomize(gatenets.GatedAttention(I + 1, 2, gate=gate, rngs=nnx.Rngs(0)))
    bridged = gl.GatedAttention(2, options={"gate": gate})
    x = jnp.asarray(inputs(shape=(B, T, I + 1)))
    lengths = jnp.array([T, 3])
    params = {"params": gl.params_from_nnx(layer)}
    y, trace = bridged.apply(params, x, causal=True, seq_lengths=lengths, return_gates=True)
    ref_y, ref_trace = layer(x, causal=True, seq_lengths=lengths, return_gates=True)
    np.testing.assert_allclose(y, ref_y, atol=1e-6)
    assert sorted(trace.flat()) == sorted(ref_trace.flat())
    for (path, value), (_, ref_value) in zip(trace.items(), ref_trace.items(), strict=True):
        np.testing.assert_allclose(value, ref_value, atol=1e-6, err_msg=path)
    init = bridged.init(jax.random.key(1), x)["params"]
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, params["params"])


CELL_PAIRS = {
    family.cell.__name__: (family.cell, getattr(gl, family.cell.__name__))
    for family in FAMILIES.values()
}


@pytest.mark.parametrize("name", CELL_PAIRS)
def test_linen_cells_in_nn_rnn_equal_the_nnx_cell_and_init_with_output_is_consistent(name):
    nnx_type, linen_type = CELL_PAIRS[name]
    cell = randomize(nnx_type(I, H, rngs=nnx.Rngs(0)))
    x = jnp.asarray(inputs())
    rnn = nn.RNN(linen_type(H))
    y, variables = rnn.init_with_output(jax.random.key(3), x, seq_lengths=jnp.array([T, 3]))
    # init_with_output computed y with the params it returned.
    np.testing.assert_allclose(y, rnn.apply(variables, x, seq_lengths=jnp.array([T, 3])), atol=1e-6)
    assert set(variables["params"]["cell"]) == set(gl.params_from_nnx(cell))
    params = {"params": {"cell": gl.params_from_nnx(cell)}}
    np.testing.assert_allclose(rnn.apply(params, x), gatenets.RNN(cell)(x), atol=1e-6)
    # And back: linen params into a fresh NNX cell give the same function.
    fresh = gl.params_to_nnx(variables["params"]["cell"], nnx_type(I, H, rngs=nnx.Rngs(9)))
    np.testing.assert_allclose(rnn.apply(variables, x), gatenets.RNN(fresh)(x), atol=1e-6)


class GreedyDecoder(nn.Module):
    """A decoder that feeds back its own prediction: the loop nn.RNN cannot express."""

    steps: int

    @nn.compact
    def __call__(self, carry, first):
        cell, readout = gl.LSTMCell(H), nn.Dense(I)
        x, outputs = first, []
        for _ in range(self.steps):
            carry, h = cell(carry, x)
            x = readout(h)
            outputs.append(x)
        return jnp.stack(outputs, axis=1)


def test_linen_cell_as_a_decoder_step_and_under_nn_scan():
    decoder = GreedyDecoder(steps=4)
    carry = gl.LSTMCell(H).initialize_carry(jax.random.key(0), (B, I))
    first = jnp.ones((B, I))
    out, variables = decoder.init_with_output(jax.random.key(1), carry, first)
    assert out.shape == (B, 4, I)
    np.testing.assert_allclose(decoder.apply(variables, carry, first), out, atol=1e-6)
    # The same steps by hand with the NNX cell and the same weights.
    params = variables["params"]
    cell = gl.params_to_nnx(params["LSTMCell_0"], gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0)))
    kernel, bias = params["Dense_0"]["kernel"], params["Dense_0"]["bias"]
    c, x = cell.initialize_carry((B, I)), first
    for t in range(4):
        c, h = cell(c, x)
        x = h @ kernel + bias[None]
        np.testing.assert_allclose(out[:, t], x, atol=1e-5)
    scanned = nn.scan(
        gl.GRUCell,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=1,
        out_axes=1,
    )(H)
    xs = jnp.asarray(inputs())
    h0 = gl.GRUCell(H).initialize_carry(jax.random.key(0), (B, I))
    (final, ys), scan_vars = scanned.init_with_output(jax.random.key(2), h0, xs)
    gru = gl.params_to_nnx(scan_vars["params"], gatenets.GRUCell(I, H, rngs=nnx.Rngs(0)))
    ref_final, ref_ys = gatenets.RNN(gru, return_carry=True)(xs)
    np.testing.assert_allclose(ys, ref_ys, atol=1e-6)
    np.testing.assert_allclose(final.h, ref_final.h, atol=1e-6)


def test_linen_options_meant_for_the_call_are_named():
    with pytest.raises(ValueError, match=r"options \['return_carry'\] are not arguments of LSTM"):
        gl.LSTM(H, options={"return_carry": True}).init(jax.random.key(0), jnp.ones((B, T, I)))
    with pytest.raises(ValueError, match=r"options \['features'\] are not arguments of GRUCell"):
        nn.RNN(gl.GRUCell(H, options={"features": 2})).init(jax.random.key(0), jnp.ones((B, T, I)))
