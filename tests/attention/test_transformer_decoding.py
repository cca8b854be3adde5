"""The char-LM transformer decodes with its caches what it computes from scratch, and the
sampler writes the same text with and without them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gatenets.tasks import GatedTransformer, get_task


@pytest.fixture(autouse=True)
def full_float32():
    """Comparisons that mean "the same function" run at full float32 (on NVIDIA GPUs JAX's
    default float32 matmul is TF32, about 1e-3 relative)."""
    with jax.default_matmul_precision("highest"):
        yield


def normal(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize(
    "positions, num_layers, checked",
    [
        # Rotary positions and one block: exact past the cache's length too.
        ("rope", 1, (1, 3, 4, 8)),
        # Absolute positions or several blocks: exact while the text fits in the cache.
        ("sinusoidal", 2, (1, 3)),
        ("rope", 2, (0, 3)),
    ],
)
def test_decoding_equals_recomputing_the_window(positions, num_layers, checked):
    stack = GatedTransformer(3, 8, num_layers=num_layers, positions=positions, rngs=nnx.Rngs(0))
    assert stack.decode_matches_window == (positions == "rope" and num_layers == 1)
    max_length, x = 4, normal(1, 9, 3)
    stack.init_cache((1, max_length, 3))
    step = nnx.jit(lambda stack, x: stack(x, decode=True))
    decoded = [np.asarray(step(stack, x[:, t : t + 1]))[0, 0] for t in range(9)]
    for t in checked:  # shorter than, as long as, and longer than the cache
        start = max(0, t - max_length + 1)
        full = np.asarray(stack(x[:, start : t + 1]))[0, -1]
        np.testing.assert_allclose(decoded[t], full, atol=1e-5, rtol=1e-5)


def test_transformer_decode_errors():
    stack = GatedTransformer(3, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"decode=True needs caches; call init_cache"):
        stack(jnp.ones((1, 1, 3)), decode=True)
    with pytest.raises(ValueError, match=r"= \(batch, max_length, 3\); got \(1, 4, 8\)"):
        stack.init_cache((1, 4, 8))
    with pytest.raises(ValueError, match="rope is used with positions='rope' only"):
        from gatenets import RoPE

        GatedTransformer(3, 8, positions="sinusoidal", rope=RoPE(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs an even head size; hidden_features=5 is odd"):
        GatedTransformer(3, 5, rngs=nnx.Rngs(0))


def test_sampling_with_the_cache_writes_the_text_of_rereading_the_window(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abcab def " * 40)
    task = get_task("charlm", text_file=str(path), seq_len=6)
    # Prompts shorter than, as long as and longer than the window of 6 characters; one block
    # decodes everything with its caches, two blocks reread the window once it slides.
    for num_layers, prompts in ((1, ("ab", "abcab deab")), (2, ("ab", "abcab "))):
        model = task.make_model("attention", 8, num_layers=num_layers, rngs=nnx.Rngs(0))
        for prompt in prompts:
            cached = task.sample(model, prompt, 14, temperature=1.5, seed=3)
            reread = task.sample(model, prompt, 14, temperature=1.5, seed=3, use_cache=False)
            assert cached == reread and len(cached) == len(prompt) + 14
        # The caches were made on a copy: the model's state is what it was.
        assert model.transformer.attentions[0].cached_key is None
    with pytest.raises(TypeError, match="use_cache must be a bool; got int"):
        task.sample(model, "ab", 3, use_cache=1)


def test_the_report_of_an_attention_task_model_has_its_first_block_weights(monkeypatch):
    from gatenets.inspect import report
    from gatenets.inspect.report import collect_report
    from gatenets.tasks import SequenceModel

    model = SequenceModel(5, 8, 5, model="attention", num_layers=2, embed_features=4,
                          readout="all", rngs=nnx.Rngs(0))  # fmt: skip
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 5, (2, 6)), jnp.int32)
    data = collect_report(model, [tokens], progress=False)
    assert "block0/attention/output" in data.stats
    assert data.attention.shape == (2, 4, 6, 6)
    y, weights = model.transformer(model.embed(tokens), return_attention_weights=True)
    assert len(weights) == 2
    np.testing.assert_allclose(data.attention, weights[0], atol=1e-6)
    np.testing.assert_allclose(data.attention.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.triu(data.attention[0, 0], 1), 0.0)  # causal
    np.testing.assert_allclose(y, model.transformer(model.embed(tokens)), atol=2e-5)
    # Longer sequences: the gates are collected, the [T, T] weights are not.
    monkeypatch.setattr(report, "MAX_ATTENTION_STEPS", 5)
    data = collect_report(model, [tokens], progress=False)
    assert data.attention is None and "block0/attention/output" in data.stats


def test_char_lm_logits_through_the_caches_equal_a_full_recompute(tmp_path):
    from gatenets.tasks import charlm

    path = tmp_path / "tiny.txt"
    path.write_text("abcab def " * 40)
    task = get_task("charlm", text_file=str(path), seq_len=6)
    model = task.make_model("attention", 8, rngs=nnx.Rngs(1))
    ids = task.encode("abcab deabcd")
    model.transformer.init_cache((1, 6, model.transformer.in_features))
    for t, token in enumerate(ids):
        logits = charlm._decode_step(model, jnp.asarray(token, jnp.int32).reshape(1, 1))
        if t + 1 in (3, 6, 12):  # shorter than, as long as and longer than the window
            full = charlm._window_step(model, *charlm._window(ids[: t + 1], 6))
            np.testing.assert_allclose(logits, full, atol=1e-5, rtol=1e-5)
