"""Gate statistics against a direct NumPy computation, streaming against in-memory, errors."""

import collections

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import gatenets
from gatenets import GateTrace, GRUGates, LSTMGates
from gatenets.inspect import (
    accumulate,
    collect,
    finalize,
    first_token_share,
    format_table,
    gate_statistics,
    streaming_statistics,
    summary_table,
)
from gatenets.inspect.statistics import concatenate_traces

HeadGates = collections.namedtuple("HeadGates", ["output"])


def hand_built_trace(seed=0, batch=4, time=7):
    """An LSTM part, a GRU part and attention-shaped gates, with an irregular mask."""
    rng = np.random.default_rng(seed)

    def gate(*units):
        # Mix of saturated and graded values, including exact 0 and 1.
        values = rng.beta(0.4, 0.4, (batch, time, *units))
        values.flat[:3] = [0.0, 1.0, 0.5]
        return values.astype(np.float32)

    mask = rng.random((batch, time)) < 0.7
    mask[0] = True
    mask[1] = False  # a sequence with no valid step must not count at all
    gates = {
        "layer0/forward": LSTMGates(gate(5), gate(5), gate(5)),
        "layer0/backward": GRUGates(gate(3), gate(3)),
        "attention": HeadGates(gate(2, 3)),
    }
    return GateTrace(gates, mask)


def reference_statistics(values, mask, left, right, edges):
    """Per unit, the obvious NumPy computation over the valid steps."""
    valid = values[mask].reshape(int(mask.sum()), -1).astype(np.float64)
    histogram = np.stack([np.histogram(valid[:, u], bins=edges)[0] for u in range(valid.shape[1])])
    return dict(
        mean=valid.mean(axis=0),
        std=valid.std(axis=0),
        left=(valid < left).mean(axis=0),
        right=(valid > right).mean(axis=0),
        histogram=histogram,
        count=valid.shape[0],
    )


@pytest.mark.parametrize("left, right, bins", [(0.1, 0.9, 20), (0.3, 0.6, 7)])
def test_statistics_match_numpy_with_masks(left, right, bins):
    trace = hand_built_trace()
    stats = gate_statistics(trace, left=left, right=right, bins=bins)
    mask = np.asarray(trace.mask)
    assert list(stats) == [name for name, _ in trace.items()]
    for name, values in trace.items():
        s = stats[name]
        ref = reference_statistics(np.asarray(values), mask, left, right, s.bin_edges)
        np.testing.assert_allclose(s.bin_edges, np.linspace(0, 1, bins + 1))
        assert s.count == ref["count"] == mask.sum()
        np.testing.assert_allclose(s.mean, ref["mean"], rtol=1e-12)
        np.testing.assert_allclose(s.std, ref["std"], rtol=1e-9)
        np.testing.assert_array_equal(s.left_saturated, ref["left"])
        np.testing.assert_array_equal(s.right_saturated, ref["right"])
        np.testing.assert_array_equal(s.histogram, ref["histogram"])
        assert s.unit_shape == np.asarray(values).shape[2:]
        assert np.isclose(s.sparsity, ref["mean"].mean())
        if name.endswith(("/forget", "/update")):
            np.testing.assert_allclose(s.time_constant, -1.0 / np.log(ref["mean"]))
        else:
            assert s.time_constant is None


def test_time_constant_of_a_constant_forget_gate():
    half = np.full((2, 3, 4), 0.5)
    trace = GateTrace({"forward": LSTMGates(half, half, half)}, np.ones((2, 3), bool))
    stats = gate_statistics(trace)
    # c_t = 0.5 c_{t-1}: the state falls to 1/e after 1/ln 2 steps.
    np.testing.assert_allclose(stats["forward/forget"].time_constant, 1 / np.log(2))
    ones = np.ones((1, 2, 1))
    open_gate = gate_statistics(GateTrace({"f": GRUGates(ones, ones)}, np.ones((1, 2), bool)))
    assert open_gate["f/update"].time_constant[0] == np.inf


def test_attention_gate_units_are_flattened_row_major():
    trace = hand_built_trace()
    s = gate_statistics(trace, gates=["attention/output"])["attention/output"]
    values = np.asarray(trace.gates["attention"].output)[np.asarray(trace.mask)].astype(np.float64)
    # unit k is head k // head_dim, dimension k % head_dim
    np.testing.assert_allclose(s.mean.reshape(s.unit_shape), values.mean(axis=0), rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    left=st.floats(0.0, 1.0),
    width=st.floats(0.0, 1.0),
)
def test_saturation_fractions_sum_to_at_most_one(seed, left, width):
    right = left + (1.0 - left) * width
    stats = gate_statistics(hand_built_trace(seed), left=left, right=right)
    for s in stats.values():
        total = s.left_saturated + s.right_saturated
        assert np.all(total <= 1.0)
        assert np.all((s.left_saturated >= 0) & (s.right_saturated >= 0))
        assert np.all(s.histogram.sum(axis=1) == s.count)


def test_streaming_equals_in_memory_over_uneven_batches():
    traces = [hand_built_trace(seed, batch=b, time=t) for seed, b, t in [(1, 3, 5), (2, 2, 9)]]
    traces.append(hand_built_trace(3, batch=5, time=2))
    accumulators = None
    for trace in traces:
        accumulators = accumulate(accumulators, trace, left=0.2, right=0.7, bins=9)
    streamed = finalize(accumulators)
    whole = gate_statistics(concatenate_traces(traces), left=0.2, right=0.7, bins=9)
    assert list(streamed) == list(whole)
    for name in whole:
        a, b = streamed[name], whole[name]
        assert a.count == b.count
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
        np.testing.assert_allclose(a.std, b.std, rtol=1e-9)
        np.testing.assert_array_equal(a.histogram, b.histogram)
        np.testing.assert_array_equal(a.left_saturated, b.left_saturated)
        np.testing.assert_array_equal(a.right_saturated, b.right_saturated)


@pytest.fixture(scope="module")
def bilstm():
    return gatenets.LSTM(3, 4, bidirectional=True, rngs=nnx.Rngs(0))


def model_batches():
    rng = np.random.default_rng(0)
    Batch = collections.namedtuple("Batch", ["inputs", "targets", "mask"])
    first = Batch(rng.normal(size=(2, 6, 3)).astype(np.float32), None, None)
    mask = np.array([[True] * 6, [True] * 2 + [False] * 4, [False] * 6])
    second = Batch(rng.normal(size=(3, 6, 3)).astype(np.float32), None, mask)
    return [first, second, rng.normal(size=(2, 4, 3)).astype(np.float32)]


def test_collect_gathers_a_model_trace_by_name(bilstm):
    batches = model_batches()
    trace = collect(bilstm, batches)
    assert sorted(trace.gates) == ["layer0/backward", "layer0/forward"]
    assert trace.mask.shape == (7, 6)
    # The third batch is shorter: padded with invalid steps.
    assert not trace.mask[5:, 4:].any() and trace.mask[5:, :4].all()
    _, direct = bilstm(jnp.asarray(batches[1].inputs), mask=batches[1].mask, return_gates=True)
    np.testing.assert_allclose(
        trace.gates["layer0/backward"].forget[2:5], direct.gates["layer0/backward"].forget
    )
    np.testing.assert_array_equal(trace.mask[2:5], batches[1].mask)


def test_streaming_statistics_of_a_model_equal_collected(bilstm):
    streamed = streaming_statistics(bilstm, iter(model_batches()), gates=["forget", "input"])
    whole = gate_statistics(collect(bilstm, model_batches()), gates=["forget", "input"])
    assert (
        sorted(streamed)
        == sorted(whole)
        == [
            "layer0/backward/forget",
            "layer0/backward/input",
            "layer0/forward/forget",
            "layer0/forward/input",
        ]
    )
    for name in whole:
        np.testing.assert_allclose(streamed[name].mean, whole[name].mean, rtol=1e-12)
        np.testing.assert_allclose(streamed[name].std, whole[name].std, rtol=1e-9)
        np.testing.assert_array_equal(streamed[name].histogram, whole[name].histogram)
    assert whole["layer0/forward/forget"].count == 2 * 6 + 6 + 2 + 2 * 4


def test_summary_table_averages_units():
    stats = gate_statistics(hand_built_trace())
    rows = {r.gate: r for r in summary_table(stats)}
    s = stats["layer0/forward/forget"]
    row = rows["layer0/forward/forget"]
    assert row.units == 5
    assert np.isclose(row.mean, s.mean.mean()) and np.isclose(row.std, s.std.mean())
    assert np.isclose(row.median_time_constant, np.median(s.time_constant))
    assert rows["layer0/forward/input"].median_time_constant is None
    assert "layer0/backward/update" in format_table(stats)


def test_first_token_share_against_direct_average():
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(5), size=(2, 3, 5))  # [batch, heads, query, key]
    mask = np.array([[True] * 5, [True, True, False, False, False]])
    share = first_token_share(weights, mask)
    expected = [
        np.mean([weights[b, h, q, 0] for b in range(2) for q in range(5) if mask[b, q]])
        for h in range(3)
    ]
    np.testing.assert_allclose(share.per_head, expected)
    assert np.isclose(share.mean, np.mean(expected))


# --------------------------------------------------------------------------------------------
# Bad input.


def test_unknown_gate_name_is_named():
    with pytest.raises(ValueError, match=r"unknown gate 'forgt'.*layer0/forward/forget"):
        gate_statistics(hand_built_trace(), gates=["forgt"])


def test_trace_and_mask_that_disagree():
    trace = hand_built_trace()
    with pytest.raises(ValueError, match=r"disagrees with the trace's mask of shape \(4, 6\)"):
        gate_statistics(trace._replace(mask=np.ones((4, 6), bool)))
    with pytest.raises(TypeError, match="trace.mask must be boolean"):
        gate_statistics(trace._replace(mask=np.ones((4, 7), np.int32)))
    with pytest.raises(TypeError, match="must be a gatenets.GateTrace"):
        gate_statistics({"forward/forget": np.zeros((1, 2, 3))})


def test_empty_data_and_empty_masks():
    with pytest.raises(ValueError, match="no valid step"):
        gate_statistics(hand_built_trace()._replace(mask=np.zeros((4, 7), bool)))
    model = gatenets.GRU(3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="data is empty"):
        collect(model, [])
    with pytest.raises(ValueError, match="data is empty"):
        streaming_statistics(model, iter([]))
    with pytest.raises(ValueError, match="holds no gates"):
        gate_statistics(GateTrace({}, np.ones((1, 2), bool)))


def test_other_bad_input():
    trace = hand_built_trace()
    with pytest.raises(ValueError, match="left must not exceed right"):
        gate_statistics(trace, left=0.8, right=0.2)
    with pytest.raises(ValueError, match="bins must be a positive int"):
        gate_statistics(trace, bins=0)
    bad = GateTrace(
        {"forward": GRUGates(np.full((1, 2, 1), 1.5), np.zeros((1, 2, 1)))}, np.ones((1, 2), bool)
    )
    with pytest.raises(ValueError, match=r"'forward/reset' has values outside \[0, 1\]"):
        gate_statistics(bad)
    acc = accumulate(None, trace, gates=["forget"])
    with pytest.raises(ValueError, match="differ from the accumulated gates"):
        accumulate(acc, trace, gates=["input"])
    with pytest.raises(ValueError, match=r"weights must be \[batch, heads, query, key\]"):
        first_token_share(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"mask must be \[batch, query\]"):
        first_token_share(np.ones((1, 2, 3, 3)), np.ones((1, 2), bool))
    with pytest.raises(TypeError, match="have an `inputs` attribute"):
        collect(gatenets.GRU(3, 2, rngs=nnx.Rngs(0)), [[1.0, 2.0]])


def test_time_constant_follows_each_gate_type_convention(tmp_path):
    from gatenets import MinGRUGates, RGLRUGates
    from gatenets.inspect import load_trace, save_trace

    z = np.full((1, 4, 2), 0.25)
    mask = np.ones((1, 4), bool)
    trace = GateTrace(
        {"min": MinGRUGates(z), "rglru": RGLRUGates(z, z), "gru": GRUGates(z, z)}, mask
    )
    for t in (trace, load_trace(save_trace(trace, tmp_path / "trace.npz"))):
        stats = gate_statistics(t)
        # minGRU: h_t = (1 - z) h_{t-1} + z h̃_t keeps 1 - z per step; GRU keeps z.
        np.testing.assert_allclose(stats["min/update"].time_constant, -1 / np.log(0.75))
        np.testing.assert_allclose(stats["gru/update"].time_constant, -1 / np.log(0.25))
        # RG-LRU's decay a^{c r} also depends on a parameter: no time constant from r alone.
        assert stats["rglru/recurrence"].time_constant is None


def test_real_attention_layer_statistics_and_first_token_share():
    from gatenets import GatedAttention

    attention = GatedAttention(8, 2, gate="elementwise", rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    mask = np.array([[True] * 5, [True, True, True, False, False]])
    Batch = collections.namedtuple("Batch", ["inputs", "targets", "mask"])
    trace = collect(attention, Batch(x, None, mask))
    s = gate_statistics(trace)["attention/output"]
    assert s.unit_shape == (2, 4) and s.count == 8
    gate = np.asarray(trace.gates["attention"].output, np.float64)[mask]  # [8, heads, head_dim]
    np.testing.assert_allclose(s.mean.reshape(2, 4), gate.mean(axis=0), rtol=1e-12)
    _, weights = attention(jnp.asarray(x), mask=jnp.asarray(mask), return_attention_weights=True)
    share = first_token_share(weights, mask)
    w = np.asarray(weights)
    expected = [np.mean(np.concatenate([w[0, h, :, 0], w[1, h, :3, 0]])) for h in range(2)]
    np.testing.assert_allclose(share.per_head, expected, rtol=1e-6)
