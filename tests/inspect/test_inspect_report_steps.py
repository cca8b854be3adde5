"""The report's three steps, each alone: collect_report gathers what the direct calls give,
report_figures draws what the data hold, and inspect_model is exactly their composition."""

import pathlib

import numpy as np
import pytest
from flax import nnx

import gatenets
from gatenets.inspect import (
    GradientProfile,
    ablate,
    collect,
    collect_report,
    inspect_model,
    report_figures,
    streaming_statistics,
    write_report,
)
from gatenets.tasks import Batch, SequenceModel


@pytest.fixture(scope="module")
def char_model():
    return SequenceModel(5, 3, 5, embed_features=4, readout="all", rngs=nnx.Rngs(0))


def char_batches():
    rng = np.random.default_rng(0)
    return [
        Batch(rng.integers(0, 5, (2, 6)).astype(np.int32), rng.integers(0, 5, (2, 6)), None)
        for _ in range(3)
    ]


def first_symbol_share(outputs, batch):
    return np.mean(np.argmax(np.asarray(outputs), axis=-1) == 0)


def test_collect_report_gathers_statistics_trace_and_ablation(char_model):
    batches = char_batches()
    profile = GradientProfile(np.array([0.5, 1.0]), "probe")
    data = collect_report(
        char_model,
        batches,
        metric_fn=first_symbol_share,
        metric_name="share",
        ablation_value=1.0,
        ablation_batches=2,
        profiles=[profile],
        progress=False,
        left=0.2,
        right=0.8,
        bins=4,
    )
    expected = streaming_statistics(
        char_model, batches, progress=False, left=0.2, right=0.8, bins=4
    )
    assert list(data.stats) == list(expected)
    for name, stats in expected.items():
        np.testing.assert_allclose(data.stats[name].mean, stats.mean, rtol=1e-6)
        np.testing.assert_array_equal(data.stats[name].histogram, stats.histogram)
    first = collect(char_model, batches[0])
    np.testing.assert_allclose(
        data.trace.gates["layer0/forward"].forget, first.gates["layer0/forward"].forget
    )
    np.testing.assert_array_equal(data.inputs, batches[0].inputs)
    results, metric, value = data.ablation
    assert (metric, value) == ("share", 1.0)
    assert results == ablate(char_model, batches[:2], first_symbol_share, value=1.0)
    assert data.profiles == (profile,)
    with pytest.raises(ValueError, match="data is empty: no batch to inspect"):
        collect_report(char_model, [], progress=False)


def test_report_figures_draw_what_the_data_hold(char_model):
    batches = char_batches()
    data = collect_report(char_model, batches[:1], progress=False)
    plain = report_figures(data)
    assert [f.name for f in plain.figures] == ["saturation", "histograms", "heatmap"]
    assert "layer0/forward/forget over sequence 0" in plain.figures[2].caption
    assert plain.fragments == {}

    decoded = []

    def decode(ids):
        decoded.append(np.asarray(ids).tolist())
        return "".join("abcde"[i] for i in ids)

    profiles = (GradientProfile(np.array([0.5, 1.0]), "probe"),)
    full = report_figures(data._replace(profiles=profiles), decode=decode)
    assert [f.name for f in full.figures] == [
        "saturation",
        "histograms",
        "heatmap",
        "text_heatmap",
        "gradient_through_time",
    ]
    assert decoded == [batches[0].inputs[0].tolist()]
    (heading,) = full.fragments
    assert heading.startswith("Text coloured by layer0/forward/forget, unit ")
    assert full.fragments[heading].count("<span") == 6
    # Float inputs are not characters: no text heatmap even with decode.
    floats = data._replace(inputs=data.inputs.astype(np.float32))
    assert "text_heatmap" not in [f.name for f in report_figures(floats, decode=decode).figures]


def test_inspect_model_is_collect_then_figures_then_write(tmp_path):
    gru = gatenets.GRU(2, 3, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(2, 4, 2)).astype(np.float32)
    # The explorer page (and the section naming it) is inspect_model's addition to the three.
    files = inspect_model(
        gru, [x, x], tmp_path / "whole", progress=False, notes=["n"], explorer=False
    )
    assert files.explorer is None
    data = collect_report(gru, [x, x], progress=False)
    content = report_figures(data)
    parts = write_report(
        tmp_path / "parts",
        stats=data.stats,
        figures=content.figures,
        notes=["n"],
        fragments=content.fragments,
        ablation=data.ablation,
    )
    whole = pathlib.Path(files.html).read_text(encoding="utf-8")
    assert whole == pathlib.Path(parts.html).read_text(encoding="utf-8")
    assert sorted(files.images) == sorted(parts.images) == ["heatmap", "histograms", "saturation"]
