"""The ``"attention"`` task model: causal, blind to padding, its residual wiring checked with
every gate shut, its gates traced and overridden by block, and sampling text through a window."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gatenets.tasks import GatedTransformer, SequenceModel, get_task
from gatenets.tasks.transformer import sinusoidal_positions


def normal(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_sinusoidal_positions_against_the_formula():
    table = sinusoidal_positions(7, 6)
    for t in range(7):
        for i in range(3):
            angle = t / 10000 ** (2 * i / 6)
            assert table[t, 2 * i] == pytest.approx(np.sin(angle), abs=1e-6)
            assert table[t, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-6)


def test_a_step_sees_only_itself_and_the_past():
    model = SequenceModel(3, 8, 2, model="attention", num_layers=2, readout="all", rngs=nnx.Rngs(0))
    x = normal(2, 6, 3)
    changed = x.at[:, 4:].set(normal(2, 2, 3, seed=1))
    y, y_changed = model(x), model(changed)
    np.testing.assert_allclose(y[:, :4], y_changed[:, :4], atol=1e-6)
    assert not np.allclose(y[:, 4:], y_changed[:, 4:], atol=1e-3)


def test_padding_garbage_never_reaches_the_last_valid_step():
    model = SequenceModel(3, 8, 2, model="attention", num_layers=2, rngs=nnx.Rngs(0))
    x = normal(2, 7, 3)
    mask = jnp.arange(7)[None, :] < jnp.array([[4], [7]])
    garbage = jnp.where(mask[..., None], x, jnp.nan)
    padded = model(garbage, mask=mask)
    np.testing.assert_allclose(padded[0], model(x[:1, :4])[0], atol=1e-5)
    np.testing.assert_allclose(padded[1], model(x[1:])[0], atol=1e-5)
    _, trace = model(garbage, mask=mask, return_gates=True)
    np.testing.assert_array_equal(trace.mask, mask)


def test_with_every_gate_shut_a_block_adds_only_the_attention_output_bias():
    stack = GatedTransformer(3, 8, positions="sinusoidal", rngs=nnx.Rngs(0))
    # Random biases, so that the test sees whether each one is added where it should be.
    stack.attentions[0].out.bias[...] = normal(8, seed=2)
    stack.final_norm.bias[...] = normal(8, seed=3)
    u = normal(2, 5, 3)
    y = stack(u, gate_overrides={"output": 0.0, "hidden": 0.0})
    # A shut attention gate leaves the output projection's bias; a shut SwiGLU gate leaves 0.
    # The reference runs in NumPy from the parameters.
    p = {
        name: np.asarray(value[...])
        for name, value in [
            ("kernel", stack.project.kernel),
            ("bias", stack.project.bias),
            ("out_bias", stack.attentions[0].out.bias),
            ("scale", stack.final_norm.scale),
            ("norm_bias", stack.final_norm.bias),
        ]
    }
    x = np.asarray(u) @ p["kernel"] + p["bias"] + sinusoidal_positions(5, 8) + p["out_bias"]
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["norm_bias"]
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_gates_are_traced_and_overridden_by_block():
    model = SequenceModel(3, 8, 1, model="attention", num_layers=2, rngs=nnx.Rngs(0))
    x = normal(2, 5, 3)
    _, trace = model(x, return_gates=True)
    assert sorted(trace.flat()) == [
        "block0/attention/output",
        "block0/feed_forward/hidden",
        "block1/attention/output",
        "block1/feed_forward/hidden",
    ]
    assert trace.gates["block1/attention"].output.shape == (2, 5, 4, 2)
    # Overriding a gate with its own value changes nothing; scoping reaches one block only.
    same = model(x, gate_overrides={"block1": {"output": lambda g: g}})
    np.testing.assert_allclose(same, model(x), atol=1e-6)
    _, shut = model(x, return_gates=True, gate_overrides={"block1": {"output": 0.0}})
    np.testing.assert_array_equal(shut.gates["block1/attention"].output, 0.0)
    np.testing.assert_allclose(
        shut.gates["block0/attention"].output, trace.gates["block0/attention"].output
    )
    with pytest.raises(ValueError, match="unknown key 'forget'"):
        model(x, gate_overrides={"forget": 1.0})


def test_learned_positions_and_errors():
    stack = GatedTransformer(2, 4, positions="learned", max_length=5, rngs=nnx.Rngs(0))
    assert stack(jnp.ones((1, 5, 2))).shape == (1, 5, 4)
    with pytest.raises(ValueError, match="6 steps, more than the max_length 5"):
        stack(jnp.ones((1, 6, 2)))
    with pytest.raises(ValueError, match="max_length must be a positive int .*; got None"):
        GatedTransformer(2, 4, positions="learned", rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"positions must be one of \('rope', 'sinusoidal', 'learned'\)"
    ):
        GatedTransformer(2, 4, positions="rotary", rngs=nnx.Rngs(0))
    model = SequenceModel(2, 4, 1, model="attention", rngs=nnx.Rngs(0))
    assert not model.recurrent
    with pytest.raises(ValueError, match="initial_carry: the attention model keeps no carry"):
        model(jnp.ones((1, 3, 2)), initial_carry=(None,))


def test_attention_samples_text_through_a_window(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abcab" * 40)
    task = get_task("charlm", text_file=str(path), seq_len=4)
    model = task.make_model("attention", 8, rngs=nnx.Rngs(0))
    # Longer than the window of 4 characters: the context slides.
    text = task.sample(model, "ab", 9, temperature=0.5, seed=1)
    assert text.startswith("ab") and len(text) == 11 and set(text) <= set("abc")
    assert task.sample(model, "ab", 9, temperature=0.5, seed=1) == text
