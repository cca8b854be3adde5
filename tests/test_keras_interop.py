"""Keras 3 (JAX backend) layers and models against their gatenets / NNX conversions, both
ways, each checked by running Keras itself."""

import contextlib
import os
import warnings

os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

import gatenets  # noqa: E402
from gatenets.interop import (  # noqa: E402
    carry_from_keras,
    carry_to_keras,
    from_keras,
    to_keras,
)

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":  # pragma: no cover - Keras imported elsewhere first
    pytest.skip("Keras runs another backend in this process", allow_module_level=True)

layers = keras.layers
B, T, I, H = 2, 5, 3, 4
TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def keras_broadcasts():
    """Keras's own code (initialisers, cells) broadcasts ranks implicitly, which the suite's
    configuration refuses; gatenets' side runs strictly inside :func:`strict`."""
    with jax.numpy_rank_promotion("allow"):
        yield


def strict(module, *args, **kwargs):
    """Calls a converted module with implicit rank promotion refused, as everywhere else."""
    with jax.numpy_rank_promotion("raise"):
        return module(*args, **kwargs)


def randomize(keras_layer, seed=0):
    """Every weight random (biases included: Keras starts them at zero or one)."""
    rng = np.random.default_rng(seed)
    for weight in keras_layer.weights:
        weight.assign(0.5 * rng.standard_normal(weight.shape).astype(weight.dtype))
    return keras_layer


@contextlib.contextmanager
def numpy2_deprecation_in_keras():
    """Keras's savers call np.array on its variables, which NumPy 2 deprecates."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning
        )
        yield


def weights_of(keras_layer):
    # Not get_weights(): it calls np.array on Keras variables, which NumPy 2 deprecates.
    return [np.asarray(w.value) for w in keras_layer.weights]


def inputs(seed=1, shape=(B, T, I)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def built(keras_layer, shape=(B, T, I)):
    keras_layer.build(shape)
    return randomize(keras_layer)


LAYERS = {
    "lstm": lambda: layers.LSTM(H, return_sequences=True),
    "lstm-last": lambda: layers.LSTM(H),
    "gru-reset-after": lambda: layers.GRU(H, return_sequences=True),
    "gru-reset-before": lambda: layers.GRU(H, reset_after=False, return_sequences=True),
    "gru-no-bias-hard-sigmoid": lambda: layers.GRU(
        H, use_bias=False, recurrent_activation="hard_sigmoid", return_sequences=True
    ),
    "lstm-relu": lambda: layers.LSTM(H, activation="relu", return_sequences=True),
    "bi-lstm": lambda: layers.Bidirectional(layers.LSTM(H, return_sequences=True)),
    "bi-gru-last-ave": lambda: layers.Bidirectional(layers.GRU(H), merge_mode="ave"),
    "bi-gru-reset-before-sum": lambda: layers.Bidirectional(
        layers.GRU(H, reset_after=False, return_sequences=True), merge_mode="sum"
    ),
    "bi-lstm-last-mul": lambda: layers.Bidirectional(layers.LSTM(H), merge_mode="mul"),
    "bi-lstm-two-sizes": lambda: layers.Bidirectional(
        layers.LSTM(H, return_sequences=True),
        backward_layer=layers.LSTM(3, go_backwards=True, return_sequences=True),
    ),
    "bi-lstm-gru-last": lambda: layers.Bidirectional(
        layers.LSTM(H), backward_layer=layers.GRU(3, go_backwards=True)
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_keras(name):
    keras_layer = built(LAYERS[name]())
    x = inputs()
    ours = from_keras(keras_layer)
    np.testing.assert_allclose(strict(ours, jnp.asarray(x)), keras_layer(x), atol=TOLERANCE)


def test_a_plain_layer_becomes_the_gatenets_layer_with_gates():
    gru = from_keras(built(layers.Bidirectional(layers.GRU(H, return_sequences=True))))
    assert isinstance(gru, gatenets.GRU) and gru.bidirectional
    _, trace = gru(jnp.asarray(inputs()), return_gates=True)
    assert sorted(trace.gates) == ["layer0/backward", "layer0/forward"]
    gru_before = from_keras(built(layers.GRU(H, reset_after=False, return_sequences=True)))
    assert gru_before.cell.reset_after is False  # Cho et al.'s reset before the matmul


def test_gru_gate_order_is_converted():
    """Keras orders GRU blocks z, r, h; copying them as r, z, n runs and is wrong."""
    keras_gru = built(layers.GRU(H, return_sequences=True))
    ours = from_keras(keras_gru)
    kernel = np.asarray(keras_gru.cell.kernel.value)
    np.testing.assert_array_equal(ours.cell.kernel[...][:, :H], kernel[:, H : 2 * H])
    np.testing.assert_array_equal(ours.cell.kernel[...][:, H : 2 * H], kernel[:, :H])


@pytest.mark.parametrize(
    "make",
    [
        lambda r: gatenets.LSTM(I, H, num_layers=2, bidirectional=True, dropout=0.1, rngs=r),
        lambda r: gatenets.GRU(I, H, rngs=r),
        lambda r: gatenets.GRU(I, H, reset_after=False, num_layers=2, rngs=r),
        lambda r: gatenets.LSTM(I, H, use_recurrent_bias=True, recurrent_dropout=0.2, rngs=r),
        lambda r: gatenets.GRU(I, H, bidirectional=True, use_bias=False, rngs=r),
    ],
)
def test_to_keras_matches_keras(make):
    from test_cells import randomize as randomize_nnx

    layer = randomize_nnx(make(nnx.Rngs(0)))
    layer.eval()
    keras_model = to_keras(layer)
    x = inputs(2)
    np.testing.assert_allclose(keras_model(x), strict(layer, jnp.asarray(x)), atol=TOLERANCE)
    back = from_keras(keras_model)
    np.testing.assert_allclose(back(jnp.asarray(x)), layer(jnp.asarray(x)), atol=TOLERANCE)


def _sequence_model():
    return keras.Sequential(
        [
            keras.Input((T,), dtype="int32"),
            layers.Embedding(9, I),
            layers.Dropout(0.2),
            layers.LSTM(H, return_sequences=True, dropout=0.1, recurrent_dropout=0.1),
            layers.LayerNormalization(epsilon=1e-3),
            layers.Bidirectional(layers.GRU(H)),
            layers.Dense(9, activation="softmax"),
        ]
    )


def _tokens():
    return np.random.default_rng(3).integers(0, 9, (B, T)).astype(np.int32)


def test_sequential_model_matches_keras():
    model = randomize(_sequence_model())
    ours = from_keras(model)
    assert isinstance(ours, nnx.Sequential)
    tokens = _tokens()
    np.testing.assert_allclose(strict(ours, jnp.asarray(tokens)), model(tokens), atol=TOLERANCE)
    # Input dropout: nnx.Dropout before the LSTM, one mask for every step, as Keras draws it.
    dropout = ours.layers[2]
    assert isinstance(dropout, nnx.Dropout) and dropout.broadcast_dims == (1,)
    assert ours.layers[3].layers[0].recurrent_dropout.rate == pytest.approx(0.1)
    ours.train()
    masked = dropout(jnp.ones((64, T, I)))
    np.testing.assert_array_equal(masked[:, 0], masked[:, -1])
    assert bool((masked == 0).any())


def test_functional_model_and_files(tmp_path):
    tokens_in = keras.Input((T,), dtype="int32")
    hidden = layers.Embedding(9, I)(tokens_in)
    hidden = layers.GRU(H, return_sequences=True)(hidden)
    hidden = layers.LSTM(H)(hidden)
    model = randomize(keras.Model(tokens_in, layers.Dense(2)(hidden)), seed=4)
    tokens = _tokens()
    expected = np.asarray(model(tokens))
    np.testing.assert_allclose(from_keras(model)(jnp.asarray(tokens)), expected, atol=TOLERANCE)

    with numpy2_deprecation_in_keras():
        model.save(tmp_path / "model.keras")
    loaded = from_keras(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded(jnp.asarray(tokens)), expected, atol=TOLERANCE)

    with numpy2_deprecation_in_keras():
        model.save_weights(tmp_path / "model.weights.h5")
    template = randomize(keras.models.clone_model(model), seed=5)
    before = weights_of(template)
    from_weights = from_keras(str(tmp_path / "model.weights.h5"), model=template)
    np.testing.assert_allclose(from_weights(jnp.asarray(tokens)), expected, atol=TOLERANCE)
    for was, now in zip(before, weights_of(template), strict=True):
        np.testing.assert_array_equal(was, now)  # the template is never changed
    with pytest.raises(ValueError, match="holds weights only.*model="):
        from_keras(tmp_path / "model.weights.h5")
    with pytest.raises(ValueError, match="must end in '.keras'"):
        from_keras(tmp_path / "model.h5")


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_carries_from_and_to_keras(kind, bidirectional):
    cell_layer = getattr(layers, kind)(H, return_sequences=True, return_state=True)
    keras_layer = layers.Bidirectional(cell_layer) if bidirectional else cell_layer
    keras_layer = built(keras_layer)
    twin = (
        layers.Bidirectional(getattr(layers, kind)(H, return_sequences=True))
        if bidirectional
        else getattr(layers, kind)(H, return_sequences=True)
    )
    twin.build((B, T, I))
    for mine, theirs in zip(twin.weights, keras_layer.weights, strict=True):
        mine.assign(theirs.value)
    ours = from_keras(twin)
    rng = np.random.default_rng(6)
    count = (2 if kind == "LSTM" else 1) * (2 if bidirectional else 1)
    start = [rng.standard_normal((B, H)).astype(np.float32) for _ in range(count)]
    x = inputs(7)
    out, *states = keras_layer(x, initial_state=start)
    carry, y = ours(jnp.asarray(x), initial_carry=carry_from_keras(start, ours), return_carry=True)
    np.testing.assert_allclose(y, out, atol=TOLERANCE)
    for got, want in zip(carry_to_keras(carry), states, strict=True):
        np.testing.assert_allclose(got, want, atol=TOLERANCE)


def test_stacked_carries_are_one_list_per_layer():
    lstm = gatenets.LSTM(I, H, num_layers=2, rngs=nnx.Rngs(0))
    carry, _ = lstm(jnp.asarray(inputs()), return_carry=True)
    states = carry_to_keras(carry)
    assert len(states) == 2 and len(states[0]) == 2
    np.testing.assert_array_equal(states[1][0], carry[1].h)  # Keras: h first
    again = carry_from_keras(states, lstm)
    np.testing.assert_array_equal(again[1].c, carry[1].c)
    with pytest.raises(ValueError, match="2 per-layer state lists; got 4"):
        carry_from_keras([s for pair in states for s in pair], lstm)
    with pytest.raises(ValueError, match=r"list of 2 arrays \(\[h, c\] per direction"):
        carry_from_keras([states[0][0]], gatenets.LSTM(I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match=r"could be \(c, h\) or \(h, c\)"):
        carry_to_keras([(carry[0].c, carry[0].h)])


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: layers.LSTM(H, return_state=True), ValueError, "return_state=True"),
        (lambda: layers.GRU(H, go_backwards=True), ValueError, "go_backwards=True outside"),
        (lambda: layers.LSTM(H, activation="selu"), ValueError, "activation='selu'"),
        (
            lambda: layers.Bidirectional(layers.LSTM(H), merge_mode=None),
            ValueError,
            "merge_mode=None",
        ),
        (lambda: layers.SimpleRNN(H), TypeError, "SimpleRNN 'simple_rnn.*' does not convert"),
        (lambda: layers.GRU(H, stateful=True), ValueError, "stateful=True keeps the state"),
        (lambda: layers.LSTM(H, dtype="mixed_bfloat16"), ValueError, "mixed_bfloat16: variables"),
    ],
)
def test_from_keras_refuses_what_it_cannot_convert(make, error, message):
    with pytest.raises(error, match=message):
        from_keras(built(make()))


def test_from_keras_refuses_masks_and_branches():
    with pytest.raises(ValueError, match="mask_zero=True"):
        from_keras(keras.Sequential([keras.Input((T,)), layers.Embedding(9, I, mask_zero=True)]))
    x_in = keras.Input((T, I))
    branch = layers.Add()([layers.Dense(I)(x_in), x_in])
    with pytest.raises(ValueError, match="only a chain of layers converts"):
        from_keras(keras.Model(x_in, layers.LSTM(H)(branch)))
    with pytest.raises(TypeError, match="Keras layer or model"):
        from_keras(object())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: gatenets.LSTM(I, H, time_major=True, rngs=r), "batch-major"),
        (lambda r: gatenets.LSTM(I, H, peephole=True, rngs=r), "peepholes"),
        (lambda r: gatenets.LSTM(I, H, proj_size=2, rngs=r), "projection"),
        (lambda r: gatenets.GRU(I, H, learn_initial_carry=True, rngs=r), "initial carry"),
        (lambda r: gatenets.GRU(I, H, gate_fn=lambda z: z, rngs=r), "gate_fn=<lambda>"),
        (lambda r: gatenets.GRU(I, H, dtype=jnp.float16, rngs=r), "computes in float16"),
    ],
)
def test_to_keras_refuses_what_keras_cannot_express(make, message):
    with pytest.raises(ValueError, match=message):
        to_keras(make(nnx.Rngs(0)))
