"""The gradient-through-time probe against a hand-written backward pass, and the vanishing
gradient of a plain sigmoid RNN against an LSTM with forget bias 1."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatenets
from gatenets.inspect import PlainRNNCell, gradient_through_time


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def plain_rnn_numpy(cell, x):
    """Forward pass of h_t = σ(x_t W + h_{t-1} U + b) in float64; returns pre-activations."""
    W, U, b = (
        np.asarray(p[...], np.float64) for p in (cell.kernel, cell.recurrent_kernel, cell.bias)
    )
    h = np.zeros((x.shape[0], U.shape[0]))
    pre, hs = [], []
    for t in range(x.shape[1]):
        a = x[:, t] @ W + h @ U + b
        h = sigmoid(a)
        pre.append(a)
        hs.append(h)
    return np.stack(pre, 1), np.stack(hs, 1), U


@pytest.fixture(scope="module")
def plain_cell():
    return PlainRNNCell(3, 5, rngs=nnx.Rngs(1))


def test_plain_rnn_cell_matches_numpy(plain_cell):
    x = np.random.default_rng(0).normal(size=(2, 4, 3))
    _, hs_ref, _ = plain_rnn_numpy(plain_cell, x)
    carry = plain_cell.initialize_carry((2, 3))
    for t in range(4):
        carry, h = plain_cell(carry, jnp.asarray(x[:, t], jnp.float32))
        np.testing.assert_allclose(h, hs_ref[:, t], rtol=1e-5, atol=1e-6)
    tanh_cell = PlainRNNCell(3, 5, activation="tanh", rngs=nnx.Rngs(1))
    _, h = tanh_cell(tanh_cell.initialize_carry((2, 3)), jnp.asarray(x[:, 0], jnp.float32))
    expected = np.tanh(x[:, 0] @ np.asarray(tanh_cell.kernel[...], np.float64))
    np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-6)


def test_probe_matches_hand_written_backpropagation(plain_cell):
    x = np.random.default_rng(1).normal(size=(3, 8, 3))
    pre, _, U = plain_rnn_numpy(plain_cell, x)
    batch, time = pre.shape[:2]
    # L = mean_b sum_j h_{b,T,j}; dL/dh_T = 1/B, then dL/dh_{t-1} = (dL/dh_t ⊙ σ'(a_t)) Uᵀ.
    grads = [np.full((batch, U.shape[0]), 1.0 / batch)]
    for t in range(time - 1, 0, -1):
        s = sigmoid(pre[:, t])
        grads.append((grads[-1] * s * (1 - s)) @ U.T)
    expected = np.linalg.norm(np.stack(grads[::-1], 1), axis=-1).mean(axis=0)
    profile = gradient_through_time(plain_cell, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(profile.norms, expected, rtol=1e-4)
    assert profile.label == "PlainRNNCell"
    assert profile.relative.max() == 1.0


def test_sigmoid_rnn_gradient_vanishes_lstm_keeps_it():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 30, 3)), jnp.float32)
    lstm = gatenets.LSTM(3, 16, forget_bias=1.0, rngs=nnx.Rngs(0))
    plain = PlainRNNCell(3, 16, activation="sigmoid", rngs=nnx.Rngs(0))
    lstm_profile = gradient_through_time(lstm, x)
    plain_profile = gradient_through_time(plain, x)
    # Both are largest at the last step, where the loss is.
    assert np.argmax(lstm_profile.norms) == np.argmax(plain_profile.norms) == 29
    # 29 steps back: σ' ≤ 1/4 per step shrinks the plain RNN's gradient by many orders of
    # magnitude more than the LSTM's forget gates (σ(1) ≈ 0.73 at init).
    early = slice(0, 5)
    assert np.all(lstm_profile.relative[early] > 1e6 * plain_profile.relative[early])
    assert np.all(lstm_profile.relative[early] > 1e-6)


def test_probe_rejects_bad_input(plain_cell):
    with pytest.raises(ValueError, match="one-layer unidirectional stack"):
        gradient_through_time(
            gatenets.LSTM(3, 4, num_layers=2, rngs=nnx.Rngs(0)), jnp.ones((1, 2, 3))
        )
    with pytest.raises(ValueError, match=r"features = 3; got shape \(1, 2, 4\)"):
        gradient_through_time(plain_cell, jnp.ones((1, 2, 4)))
    with pytest.raises(TypeError, match="must be floating point"):
        gradient_through_time(plain_cell, jnp.ones((1, 2, 3), jnp.int32))
    with pytest.raises(TypeError, match="layer must be a gatenets cell"):
        gradient_through_time(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), jnp.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="activation must be one of"):
        PlainRNNCell(3, 4, activation="relu", rngs=nnx.Rngs(0))


def test_gradient_contrast_probes_the_embedded_inputs_of_a_task_model():
    from gatenets.inspect import gradient_contrast
    from gatenets.tasks import SequenceModel

    model = SequenceModel(6, 4, 6, model="gru", embed_features=3, readout="all", rngs=nnx.Rngs(0))
    tokens = np.arange(10, dtype=np.int32).reshape(2, 5) % 6
    trained, plain = gradient_contrast(model, tokens, seed=3)
    embedded = model.embed(jnp.asarray(tokens))
    np.testing.assert_allclose(trained.norms, gradient_through_time(model.rnn, embedded).norms)
    reference = PlainRNNCell(3, 4, rngs=nnx.Rngs(3))
    np.testing.assert_allclose(plain.norms, gradient_through_time(reference, embedded).norms)
    assert (trained.label, plain.label) == ("trained GRUCell", "plain sigmoid RNN (untrained)")
    deep = SequenceModel(2, 4, 1, num_layers=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"got LSTM with num_layers=2, bidirectional=False"):
        gradient_contrast(deep, np.ones((1, 3, 2), np.float32))
    with pytest.raises(ValueError, match="got no model.rnn"):
        gradient_contrast(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), np.ones((1, 3, 2), np.float32))
