"""The interactive explorer in a real browser: headless Chromium (Debian's ``chromium``) driven
by Playwright opens the page ``inspect_model`` wrote, clicks a unit in the scatter, hovers the
timeline, heatmap and attention canvases, and checks every read-out against the trace. Any
console error or uncaught exception on the page fails the test.

One browser serves every test (``tests/inspect/conftest.py``).
"""

from __future__ import annotations

import os
import pathlib
import time

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatenets
from gatenets import GateTrace, GRUGates, LSTMGates
from gatenets.inspect import AblationResult, gate_statistics
from gatenets.inspect.explorer import QUANTUM, explorer_data, write_explorer
from gatenets.inspect.statistics import run_with_gates
from gatenets.tasks import Batch, SequenceModel

# A value on the page is the trace rounded to 1/65535, then printed with four decimals.
READOUT_TOLERANCE = 5e-5 + QUANTUM


VOCAB = "abcde fgh\n"


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in np.ravel(ids))


@pytest.fixture(scope="module")
def text_report(tmp_path_factory):
    """``inspect_model`` on a small token LSTM, with an ablation table: the page and the
    trace of the batch the page shows."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, len(VOCAB), size=(3, 24)).astype(np.int32)
    mask = np.ones((3, 24), bool)
    mask[1, 17:] = False
    batch = Batch(jnp.asarray(tokens), jnp.asarray(tokens), jnp.asarray(mask))
    model = SequenceModel(
        len(VOCAB), 12, len(VOCAB), embed_features=6, readout="all", rngs=nnx.Rngs(0)
    )

    def metric_fn(outputs, batch):
        return jnp.mean(jnp.argmax(outputs, -1) == batch.targets)

    directory = tmp_path_factory.mktemp("explorer")
    files = gatenets.inspect.inspect_model(
        model,
        [batch],
        directory,
        decode=decode,
        metric_fn=metric_fn,
        metric_name="accuracy",
        progress=False,
    )
    _, trace = run_with_gates(model, batch.inputs, batch.mask)
    return pathlib.Path(files.explorer), trace, tokens, mask, files


def isolated_unit(stats, name) -> int:
    """The unit whose scatter point lies farthest from every other unit's."""
    s = stats[name]
    points = np.stack([s.left_saturated, s.right_saturated], 1)
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    return int(np.argmax(distance.min(axis=1)))


def test_report_links_the_explorer_and_the_wheel_ships_its_files(text_report):
    path, _, _, _, files = text_report
    assert path.name == "explorer.html" and path.parent == pathlib.Path(files.html).parent
    assert "<code>explorer.html</code>" in pathlib.Path(files.html).read_text()
    page = path.read_text()
    # Self-contained: the script is inlined, nothing is fetched.
    assert "window.gatenetsExplorer" in page and "<script src" not in page
    pyproject = (pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"gatenets.inspect" = ["explorer.html", "explorer.js", "explorer.css"]' in pyproject


def test_click_a_unit_then_read_timeline_and_heatmap(open_page, text_report):
    path, trace, tokens, mask, _ = text_report
    stats = gate_statistics(trace)
    flat = {name: np.asarray(value) for name, value in trace.items()}
    page = open_page(path)
    try:
        # The page opens on the forget gate.
        gate = page.js("window.gatenetsExplorer.gates[window.gatenetsExplorer.state.gate]")
        assert gate == "layer0/forward/forget"
        assert page.js("window.gatenetsExplorer.gates") == list(flat)

        # Choose the output gate with the gate menu, then click a unit in the scatter.
        page.page.select_option("#gate", "output")
        name = "layer0/forward/output"
        assert page.js("window.gatenetsExplorer.gates[window.gatenetsExplorer.state.gate]") == name
        unit = isolated_unit(stats, name)
        point = page.js(f"window.gatenetsExplorer.scatterPoint({unit})")
        page.page.mouse.click(point["x"], point["y"])
        assert page.js("window.gatenetsExplorer.state.units") == [unit]
        assert page.page.locator("#timeline").get_attribute("data-units") == str(unit)
        assert page.page.locator("#timeline").get_attribute("data-mode") == "text"
        # The timeline draws that unit's gate at the valid steps of sequence 0.
        series = page.js("window.gatenetsExplorer.timelineSeries()")
        expected = flat[name][0][mask[0], unit]
        assert list(series) == [str(unit)]
        np.testing.assert_allclose(series[str(unit)], expected, atol=QUANTUM)

        # Hovering the timeline at step 5 reads that step's token and value.
        readout = page.hover_cell("#timeline", 5, 0)
        token = decode(tokens[0, 5])
        assert readout.startswith(f'step 5 · input "{token}"'.replace('"\n"', '"\\n"'))
        value = float(readout.rsplit(": ", 1)[1])
        assert abs(value - expected[5]) <= READOUT_TOLERANCE

        # Shift-click a second unit: both are drawn.
        other = next(u for u in range(12) if u != unit)
        page.js(f"window.gatenetsExplorer.selectUnits([{unit}, {other}])")
        series = page.js("window.gatenetsExplorer.timelineSeries()")
        np.testing.assert_allclose(series[str(other)], flat[name][0][mask[0], other], atol=QUANTUM)

        # The heatmap: rows are units, columns the steps, the token in the read-out.
        for u, t in ((3, 7), (11, 0), (0, 23)):
            readout = page.hover_cell("#heatmap", t, u)
            label, step, token, value = readout.split(" · ")
            assert label == f"unit {u}" and step == f"step {t}"
            assert token == "input " + repr(decode(tokens[0, t])).replace("'", '"')
            assert abs(float(value.split()[1]) - flat[name][0, t, u]) <= READOUT_TOLERANCE

        # Sequence 1 has 17 valid steps; the heatmap shows exactly those columns.
        page.page.select_option("#example", "1")
        readout = page.hover_cell("#heatmap", 16, 2)
        assert readout.startswith("unit 2 · step 16")
        assert page.hover_cell("#heatmap", 17, 2).strip() == ""

        # The ablation table has one row per gate, and a row opens its gate.
        rows = page.page.locator("#ablation-body tr")
        assert rows.count() == len(flat)
        rows.nth(1).click()
        assert (
            page.js("window.gatenetsExplorer.gates[window.gatenetsExplorer.state.gate]")
            == (list(flat)[1])
        )
        if os.environ.get("GATENETS_SCREENSHOTS"):
            page.page.screenshot(path=os.environ["GATENETS_SCREENSHOTS"], full_page=True)
    finally:
        page.close()


def test_attention_weights_and_numeric_input(open_page, tmp_path):
    layer = gatenets.GatedAttention(4, 2, gate="headwise", rngs=nnx.Rngs(0))
    inputs = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 4)), jnp.float32)
    mask = jnp.asarray(np.arange(9)[None, :] < np.array([[9], [6]]))
    _, trace, weights = layer(inputs, mask=mask, return_gates=True, return_attention_weights=True)
    data = explorer_data(trace, gate_statistics(trace), np.asarray(inputs), attention=weights)
    page = open_page(pathlib.Path(write_explorer(tmp_path, data)))
    try:
        assert page.js("window.gatenetsExplorer.gates") == ["attention/output"]
        assert page.page.locator("#timeline").get_attribute("data-mode") == "line"
        assert page.page.locator("#attention-section").is_visible()
        assert not page.page.locator("#ablation-section").is_visible()
        page.js("window.gatenetsExplorer.selectUnits([1])")
        readout = page.hover_cell("#timeline", 4, 0)
        assert readout.startswith("step 4 · unit 1: ")
        gate = np.asarray(trace.gates["attention"].output)
        assert abs(float(readout.rsplit(" ", 1)[1]) - gate[0, 4, 1]) <= READOUT_TOLERANCE
        page.page.select_option("#head", "1")
        page.page.select_option("#example", "1")
        readout = page.hover_cell("#attention", 2, 5)
        assert readout.startswith("head 1 · query step 5 · key step 2 · weight ")
        w = np.asarray(weights)[1, 1, 5, 2]
        assert abs(float(readout.rsplit(" ", 1)[1]) - w) <= READOUT_TOLERANCE
        # Keys past sequence 1's six valid steps are not drawn.
        assert page.hover_cell("#attention", 6, 0).strip() == ""
    finally:
        page.close()


def test_large_trace_stays_fast(open_page, tmp_path):
    units, steps = 512, 1000
    rng = np.random.default_rng(2)
    gates = GRUGates(*(rng.random((1, steps, units), np.float32) for _ in range(2)))
    trace = GateTrace({"forward": gates}, np.ones((1, steps), bool))
    data = explorer_data(trace, gate_statistics(trace), np.zeros((1, steps, 1), np.float32))
    path = pathlib.Path(write_explorer(tmp_path, data))
    began = time.perf_counter()
    page = open_page(path)
    try:
        loaded = time.perf_counter() - began
        began = time.perf_counter()
        page.page.select_option("#gate", "reset")
        page.js("window.gatenetsExplorer.selectUnits([0, 100, 511])")
        redrawn = time.perf_counter() - began
        # Generous bounds for a loaded 2-core machine; DOM-per-cell pages take minutes here.
        assert loaded < 15 and redrawn < 5, (loaded, redrawn)
        assert page.page.locator("canvas").count() == 5  # and the colour bar
        readout = page.hover_cell("#heatmap", 999, 511)
        assert readout.startswith("unit 511 · step 999 · value ")
        assert abs(float(readout.rsplit(" ", 1)[1]) - gates.reset[0, 999, 511]) <= READOUT_TOLERANCE
    finally:
        page.close()


def test_layer_and_direction_menus_choose_the_gate(open_page, tmp_path):
    rng = np.random.default_rng(3)
    mask = np.ones((1, 7), bool)
    gates = {
        f"layer{layer}/{direction}": GRUGates(*(rng.random((1, 7, 5)) for _ in range(2)))
        for layer in (0, 1)
        for direction in ("forward", "backward")
    }
    trace = GateTrace(gates, mask)
    data = explorer_data(trace, gate_statistics(trace), np.ones((1, 7, 2), np.float32))
    page = open_page(pathlib.Path(write_explorer(tmp_path, data)))
    try:
        # No forget gate here: the page opens on the first update gate.
        current = "window.gatenetsExplorer.gates[window.gatenetsExplorer.state.gate]"
        assert page.js(current) == "layer0/backward/update"
        page.page.select_option("#layer", "layer1")
        page.page.select_option("#direction", "forward")
        page.page.select_option("#gate", "reset")
        assert page.js(current) == "layer1/forward/reset"
        assert page.page.locator("#direction option").all_inner_texts() == ["backward", "forward"]
        page.page.locator("#unit-list").select_option(["2", "4"])
        series = page.js("window.gatenetsExplorer.timelineSeries()")
        for unit in (2, 4):
            np.testing.assert_allclose(
                series[str(unit)], gates["layer1/forward"].reset[0, :, unit], atol=QUANTUM
            )
    finally:
        page.close()


def test_explorer_data_names_bad_arguments():
    trace = GateTrace(
        {"forward": GRUGates(np.full((1, 3, 2), 0.5), np.full((1, 3, 2), 0.5))},
        np.ones((1, 3), bool),
    )
    stats = gate_statistics(trace)
    with pytest.raises(ValueError, match=r"inputs must be \[batch, time, …\].*\(1, 3\).*\(2, 3\)"):
        explorer_data(trace, stats, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="examples must be a positive int; got 0"):
        explorer_data(trace, stats, np.zeros((1, 3)), examples=0)
    with pytest.raises(ValueError, match=r"stats has no entry.*forward/update"):
        explorer_data(trace, {"forward/reset": stats["forward/reset"]}, np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"attention must be .*\(1, heads, 3, 3\); got shape"):
        explorer_data(trace, stats, np.zeros((1, 3)), attention=np.zeros((1, 2, 3, 4)))
    empty = GateTrace(trace.gates, np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="mask is False everywhere"):
        explorer_data(empty, stats, np.zeros((1, 3)))


def test_infinite_time_constant_and_nan_ablation_show_without_errors(open_page, tmp_path):
    rng = np.random.default_rng(4)
    forget = rng.random((1, 6, 3))
    forget[..., 0] = 1.0  # unit 0 never forgets: tau is infinite
    trace = GateTrace({"forward": LSTMGates(forget, forget, forget)}, np.ones((1, 6), bool))
    stats = gate_statistics(trace)
    assert np.isinf(stats["forward/forget"].time_constant[0])
    ablation = ([AblationResult("forward/forget", 0.5, float("nan"))], "loss", 0.0)
    data = explorer_data(trace, stats, np.ones((1, 6, 1), np.float32), ablation=ablation)
    page = open_page(pathlib.Path(write_explorer(tmp_path, data)))
    try:
        point = page.js("window.gatenetsExplorer.scatterPoint(0)")
        page.page.mouse.move(point["x"], point["y"])
        readout = page.page.locator("#scatter-readout").inner_text()
        assert readout.startswith("unit 0: mean 1.0000") and "τ ∞ steps" in readout
        cells = page.page.locator("#ablation-body td").all_inner_texts()
        assert cells == ["forward/forget", "0.5000", "nan", "nan"]
    finally:
        page.close()
