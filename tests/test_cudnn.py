"""The cuDNN LSTM path, run on CPU with JAX's pure-JAX ``lstm_ref`` standing in for cuDNN.

Every line of the dispatch — weight packing, carries, padding, time-major layouts, the
gradient back to gatenets' parameters — runs here; only JAX's own cuDNN call is replaced.
Values and gradients must equal gatenets' fused kernels. On a CUDA GPU, the real cuDNN call
is checked as well; elsewhere, that it is refused with the reason.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import rnn as jax_rnn

import gatenets
from gatenets import Loop
from gatenets.kernels import cudnn

B, T, I, H = 3, 5, 4, 6


@pytest.fixture
def reference_cudnn(monkeypatch):
    monkeypatch.setattr(cudnn, "available", lambda: True)
    monkeypatch.setattr(cudnn, "lstm_call", cudnn.reference_lstm_call)


def randomized(layer, seed):
    rng = np.random.default_rng(seed)
    state = nnx.state(layer, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    new = [jnp.asarray(0.5 * rng.standard_normal(np.shape(v)), jnp.float32) for v in leaves]
    nnx.update(layer, jax.tree.unflatten(treedef, new))
    return layer


CONFIGS = {
    "1-layer lengths batch-first": dict(num_layers=1, bidirectional=False, lengths=[5, 2, 4]),
    "2-layer bi lengths-with-0 time-major": dict(
        num_layers=2, bidirectional=True, lengths=[5, 0, 3], time_major=True
    ),
    "2-layer unpadded time-major double-bias": dict(
        num_layers=2, bidirectional=False, lengths=None, time_major=True, use_recurrent_bias=True
    ),
    "1-layer bi unpadded chrono": dict(
        num_layers=1, bidirectional=True, lengths=None, chrono_init=8.0
    ),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_cudnn_path_equals_the_fused_kernel_values_and_gradients(reference_cudnn, name):
    config = dict(CONFIGS[name])
    lengths = config.pop("lengths")
    time_major = config.get("time_major", False)
    layers = [
        randomized(gatenets.LSTM(I, H, loop=loop, rngs=nnx.Rngs(0), **config), seed=1)
        for loop in ("cudnn", "fused")
    ]
    x = np.random.default_rng(2).standard_normal((B, T, I)).astype(np.float32)
    x = jnp.asarray(x.swapaxes(0, 1) if time_major else x)
    seq_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((B, T, H)), jnp.float32)
    weights = jnp.concatenate([weights] * (2 if config["bidirectional"] else 1), axis=-1)

    def loss(layer, x):
        carries, y = layer(x, seq_lengths=seq_lengths, return_carry=True)
        y = y.swapaxes(0, 1) if time_major else y
        return jnp.sum(weights * y) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(carries))

    results = [nnx.value_and_grad(loss, argnums=(0, 1))(layer, x) for layer in layers]
    (value_c, (grads_c, gx_c)), (value_f, (grads_f, gx_f)) = results
    np.testing.assert_allclose(value_c, value_f, rtol=1e-5)
    np.testing.assert_allclose(gx_c, gx_f, atol=1e-5)
    leaves_c, leaves_f = (jax.tree.leaves(nnx.state(g, nnx.Param)) for g in (grads_c, grads_f))
    assert len(leaves_c) == len(leaves_f)
    for a, b in zip(leaves_c, leaves_f, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        assert np.abs(np.asarray(a)).max() > 0


def test_packed_weights_unpack_to_the_cells_parameters_exactly():
    layer = randomized(
        gatenets.LSTM(
            I, H, num_layers=2, bidirectional=True, use_recurrent_bias=True, rngs=nnx.Rngs(0)
        ),
        seed=4,
    )
    rnns = [r for lay in layer.layers for r in (lay.forward_rnn, lay.backward_rnn)]
    packed = cudnn.pack_lstm_weights([r.cell for r in rnns])
    assert packed.shape == (jax_rnn.get_num_params_in_lstm(I, H, 2, True),)
    w_ih, w_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(packed, I, H, 2, True)
    for k, rnn in enumerate(rnns):
        np.testing.assert_array_equal(w_ih[k], rnn.cell.kernel[...].T)
        np.testing.assert_array_equal(w_hh[k], rnn.cell.recurrent_kernel[...].T)
        np.testing.assert_array_equal(b_ih[k], rnn.cell.bias[...])
        np.testing.assert_array_equal(b_hh[k], rnn.cell.recurrent_bias[...])
    # The forget bias of a fresh layer (1.0 by default) lands in cuDNN's b_if exactly.
    fresh = gatenets.LSTM(I, H, rngs=nnx.Rngs(0))
    _, _, b_ih, b_hh = jax_rnn.unpack_lstm_weights(
        cudnn.pack_lstm_weights([fresh.layers[0].cell]), I, H, 1, False
    )
    np.testing.assert_array_equal(b_ih[0][H : 2 * H], 1.0)
    np.testing.assert_array_equal(b_hh[0], 0.0)


def test_auto_takes_cudnn_only_where_it_computes_the_request(reference_cudnn, monkeypatch):
    # A static order that puts cuDNN first (as measuring would where it is fastest).
    backend = jax.default_backend()
    order = (Loop.CUDNN, *(m for m in gatenets.loop.static_order() if m is not Loop.CUDNN))
    monkeypatch.setitem(gatenets.loop.STATIC_ORDER, backend, order)
    calls = []
    monkeypatch.setattr(
        cudnn, "lstm_call", lambda *a, **k: calls.append(1) or cudnn.reference_lstm_call(*a, **k)
    )
    layer = gatenets.LSTM(I, H, rngs=nnx.Rngs(0))
    x = jnp.ones((B, T, I))
    layer(x, seq_lengths=jnp.array([5, 1, 3]))
    assert len(calls) == 1
    for kwargs in (
        {"return_gates": True},
        {"gate_overrides": {"forget": 1.0}},
        {"mask": jnp.ones((B, T), bool)},
    ):
        layer(x, **kwargs)
        assert len(calls) == 1, kwargs
    for make in (
        lambda: gatenets.LSTM(I, H, peephole=True, rngs=nnx.Rngs(0)),
        lambda: gatenets.LSTM(I, H, proj_size=2, rngs=nnx.Rngs(0)),
        lambda: gatenets.LSTM(I, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
        lambda: gatenets.GRU(I, H, rngs=nnx.Rngs(0)),
    ):
        make()(x)
    assert len(calls) == 1
    dropped = gatenets.LSTM(I, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
    dropped(x)
    assert len(calls) == 1
    dropped.eval()
    dropped(x)
    assert len(calls) == 2


def test_cudnn_forced_where_it_cannot_apply_says_why(reference_cudnn):
    with pytest.raises(ValueError, match="loop='cudnn' does not apply: cuDNN has no peepholes"):
        gatenets.LSTM(I, H, peephole=True, loop="cudnn", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="loop='cudnn' does not apply: .*families lstm; got 'gru'"):
        gatenets.GRU(I, H, loop="cudnn", rngs=nnx.Rngs(0))
    layer = gatenets.LSTM(I, H, loop="cudnn", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="cuDNN returns no gates"):
        layer(jnp.ones((B, T, I)), return_gates=True)
    with pytest.raises(ValueError, match="not a general mask"):
        layer(jnp.ones((B, T, I)), mask=jnp.ones((B, T), bool))


@pytest.mark.skipif(
    cudnn.available(),
    reason="JAX's cuDNN RNN is here: test_cudnn_on_a_cuda_gpu_is_taken_and_equals_the_fused_kernel",
)
def test_cudnn_without_a_gpu_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        gatenets.LSTM(I, H, loop="cudnn", rngs=nnx.Rngs(0))


@pytest.mark.skipif(
    not cudnn.available(),
    reason=f"no CUDA GPU with JAX's cuDNN RNN (JAX's backend is {jax.default_backend()!r})",
)
def test_cudnn_on_a_cuda_gpu_is_taken_and_equals_the_fused_kernel(monkeypatch):
    calls = []
    real_call = cudnn.lstm_call
    monkeypatch.setattr(cudnn, "lstm_call", lambda *a, **k: calls.append(1) or real_call(*a, **k))
    layers = [
        randomized(gatenets.LSTM(I, H, bidirectional=True, loop=loop, rngs=nnx.Rngs(0)), seed=1)
        for loop in ("cudnn", "fused")
    ]
    x = jnp.asarray(np.random.default_rng(2).standard_normal((B, T, I)), jnp.float32)
    seq_lengths = jnp.asarray([5, 2, 4], jnp.int32)
    y_cudnn, y_fused = (layer(x, seq_lengths=seq_lengths) for layer in layers)
    assert len(calls) == 1
    np.testing.assert_allclose(y_cudnn, y_fused, atol=1e-5)


def test_auto_measures_cudnn_against_the_layers_own_loops(reference_cudnn, tmp_path, monkeypatch):
    """With measuring on, a stack cuDNN can run is timed both ways (its dropout streams' keys
    included in the copy that is timed) and runs the winner, equal to the fused kernel."""
    monkeypatch.setenv("GATENETS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gatenets.loop, "_MEMO", {})
    monkeypatch.setattr(gatenets.loop, "TUNING_BUDGET_S", 0.01)
    if Loop.CUDNN not in gatenets.loop.static_order():
        order = (*gatenets.loop.static_order(), Loop.CUDNN)
        monkeypatch.setitem(gatenets.loop.STATIC_ORDER, jax.default_backend(), order)
    layer = randomized(gatenets.LSTM(I, H, num_layers=2, dropout=0.3, rngs=nnx.Rngs(0)), 1)
    layer.eval()
    fused = randomized(
        gatenets.LSTM(I, H, num_layers=2, dropout=0.3, loop="fused", rngs=nnx.Rngs(0)), 1
    )
    fused.eval()
    x = jnp.asarray(np.random.default_rng(2).standard_normal((B, T, I)), jnp.float32)
    lengths = jnp.array([5, 2, 4])
    with gatenets.loop_tuning(True), gatenets.loop.recorded_loops() as ran:
        y = jax.jit(lambda v, n: layer(v, seq_lengths=n))(x, lengths)
    np.testing.assert_allclose(y, fused(x, seq_lengths=lengths), atol=1e-5)
    choices = json.loads((tmp_path / "loops.json").read_text())["choices"].values()
    stack = [c for c in choices if "cudnn" in c["median_ms"]]
    assert len(stack) == 1 and set(stack[0]["median_ms"]) == {"auto", "cudnn"}
    ran_cudnn = [loop for _, loop in ran] == [Loop.CUDNN]
    assert ran_cudnn == (stack[0]["loop"] == "cudnn")
