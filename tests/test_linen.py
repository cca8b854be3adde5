"""The flax.linen bridge: same outputs and gates as the NNX layers with the same weights, a
linen model that trains, weights both ways, dropout modes, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from test_cells import B, H, I, T, inputs, randomize

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
