"""Trace export (npz round trip, LSTMVis HDF5 layout) and gate ablation."""

import collections
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatenets
from gatenets import GateTrace, LSTMGates
from gatenets.inspect import ablate, export_lstmvis, format_ablation, load_trace, save_trace

HeadGates = collections.namedtuple("HeadGates", ["output"])


def small_trace():
    rng = np.random.default_rng(0)
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    lstm = LSTMGates(*(rng.random((2, 4, 3)).astype(np.float32) for _ in range(3)))
    return GateTrace(
        {"layer0/forward": lstm, "attention": HeadGates(rng.random((2, 4, 2, 2)))}, mask
    )


def test_npz_round_trip_is_exact(tmp_path):
    trace = small_trace()
    path = save_trace(trace, tmp_path / "trace.npz")
    loaded = load_trace(path)
    assert isinstance(loaded.gates["layer0/forward"], LSTMGates)
    assert type(loaded.gates["attention"]).__name__ == "HeadGates"
    np.testing.assert_array_equal(loaded.mask, trace.mask)
    for (name, a), (other, b) in zip(trace.items(), loaded.items(), strict=True):
        assert name == other
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert [p.name for p in tmp_path.iterdir()] == ["trace.npz"]  # no temporary left behind
    with pytest.raises(ValueError, match="must end in .npz"):
        save_trace(trace, tmp_path / "trace.h5")
    np.savez(tmp_path / "other.npz", x=np.ones(2))
    with pytest.raises(ValueError, match="not a trace written by save_trace"):
        load_trace(tmp_path / "other.npz")


def test_lstmvis_layout(tmp_path):
    h5py = pytest.importorskip("h5py", reason="HDF5 export needs the optional h5py (.[inspect-h5])")
    trace = small_trace()
    token_ids = np.array([[0, 2, 1, 0], [3, 1, 0, 0]])
    vocabulary = ["a", " ", "\n", "b"]
    hidden = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    paths = export_lstmvis(
        trace,
        tmp_path,
        token_ids=token_ids,
        vocabulary=vocabulary,
        states={"layer0/forward/h": hidden},
    )
    mask = trace.mask
    with h5py.File(paths["states"], "r") as f:
        assert sorted(f) == sorted(
            [
                "attention_output",
                "layer0_forward_forget",
                "layer0_forward_h",
                "layer0_forward_input",
                "layer0_forward_output",
            ]
        )
        np.testing.assert_array_equal(
            f["layer0_forward_forget"][...], trace.gates["layer0/forward"].forget[mask]
        )
        np.testing.assert_allclose(
            f["attention_output"][...],
            trace.gates["attention"].output[mask].reshape(5, 4),
            rtol=1e-6,
        )
        np.testing.assert_array_equal(f["layer0_forward_h"][...], hidden[mask])
    with h5py.File(paths["words"], "r") as f:
        np.testing.assert_array_equal(f["word_ids"][...], [0, 2, 1, 3, 1])
    lines = pathlib.Path(paths["dict"]).read_text(encoding="utf-8").splitlines()
    assert lines == ["a 0", "<space> 1", "<newline> 2", "b 3"]
    config = pathlib.Path(paths["config"]).read_text(encoding="utf-8")
    assert "dict_file: words" in config
    assert "path: layer0_forward_forget, unsigned: true, transform: none}" in config
    assert "{type: output, layer: 5, path: layer0_forward_h}" in config


def test_lstmvis_bad_input_and_missing_h5py(tmp_path, monkeypatch):
    trace = small_trace()
    with pytest.raises(ValueError, match=r"token_ids must be \[batch, time\] = \(2, 4\)"):
        export_lstmvis(trace, tmp_path, token_ids=np.zeros((2, 3), int), vocabulary=["a"])
    with pytest.raises(ValueError, match=r"must lie in \[0, len\(vocabulary\)\) = \[0, 1\)"):
        export_lstmvis(trace, tmp_path, token_ids=np.ones((2, 4), int), vocabulary=["a"])
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"gatenets\[inspect-h5\]"):
        export_lstmvis(trace, tmp_path, token_ids=np.zeros((2, 4), int), vocabulary=["a"])


def energy(outputs, batch):
    return jnp.mean(outputs**2)


def test_ablation_effects_follow_the_equations():
    lstm = gatenets.LSTM(2, 4, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 2)), jnp.float32)
    results = {r.gate: r for r in ablate(lstm, [x, 2 * x], energy, value=0.0)}
    assert list(results) == [f"layer0/forward/{g}" for g in ("input", "forget", "output")]
    baseline = (float(energy(lstm(x), None)) + float(energy(lstm(2 * x), None))) / 2
    for r in results.values():
        assert np.isclose(r.baseline, baseline, rtol=1e-6)
    # c_t = f c_{t-1} + i g: a closed input gate keeps c at 0, and h = o tanh(c) = 0;
    # a closed output gate makes h = 0 directly.
    assert results["layer0/forward/input"].ablated == 0.0
    assert results["layer0/forward/output"].ablated == 0.0
    assert results["layer0/forward/forget"].ablated != baseline
    # The identity override runs on the generic scan, the baseline on the fastest kernel:
    # equal up to float rounding.
    identity = ablate(lstm, x, energy, value=lambda g: g, gates=["forget"])
    assert abs(identity[0].change) < 1e-6 * identity[0].baseline
    assert "layer0/forward/input" in format_ablation(list(results.values()), "energy")


def test_ablation_reaches_one_part_of_a_deep_bidirectional_stack():
    gru = gatenets.GRU(2, 3, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    Batch = collections.namedtuple("Batch", ["inputs", "targets", "mask"])
    x = np.random.default_rng(1).normal(size=(2, 4, 2)).astype(np.float32)
    batch = Batch(x, None, np.array([[True] * 4, [True, True, True, False]]))

    def backward_half(outputs, batch):
        return jnp.mean(jnp.abs(outputs[..., 3:]))

    def forward_half(outputs, batch):
        return jnp.mean(jnp.abs(outputs[..., :3]))

    # h_t = z h_{t-1} + (1 - z) n_t: with z = 1 the state stays at its initial zeros.
    (backward,) = ablate(gru, batch, backward_half, value=1.0, gates=["layer1/backward/update"])
    (forward,) = ablate(gru, batch, forward_half, value=1.0, gates=["layer1/backward/update"])
    assert backward.baseline > 0 and backward.ablated == 0.0
    assert forward.change == 0.0


def test_ablation_bad_input():
    lstm = gatenets.LSTM(2, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="data is empty"):
        ablate(lstm, [], energy)
    with pytest.raises(ValueError, match="unknown gate 'reset'"):
        ablate(lstm, jnp.ones((1, 3, 2)), energy, gates=["reset"])
