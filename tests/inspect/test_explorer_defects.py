"""The explorer's read-outs, scatter, colours and layout in a real browser (headless Chromium
through Playwright): each test reproduces a way the page misled or could not be used, with the
exact steps that showed it."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from gatenets import GateTrace, LSTMGates
from gatenets.inspect import AblationResult, gate_statistics, write_report
from gatenets.inspect.explorer import explorer_data, write_explorer
from gatenets.inspect.plots import GATE_CMAP, gate_heatmap

VOCAB = "ab cd\n(x)'"


def _lstm_page(directory, units, steps, *, shared=0, ablation=None, batch=2):
    """An LSTM-like trace of ``units`` units over text; the first ``shared`` units of every
    gate hold 0.5 everywhere, so they share one saturation point (0, 0)."""
    rng = np.random.default_rng(units + steps)
    gates = []
    for _ in range(3):
        g = rng.random((batch, steps, units)) ** rng.uniform(0.2, 5.0, size=units)
        g[..., :shared] = 0.5
        gates.append(g)
    trace = GateTrace({"forward": LSTMGates(*gates)}, np.ones((batch, steps), bool))
    ids = rng.integers(0, len(VOCAB), size=(batch, steps)).astype(np.int32)
    data = explorer_data(
        trace,
        gate_statistics(trace),
        ids,
        decode=lambda ids: "".join(VOCAB[int(i)] for i in np.ravel(ids)),
        ablation=ablation,
    )
    return pathlib.Path(write_explorer(directory, data)), trace, ids


@pytest.fixture(scope="module")
def wide_page(tmp_path_factory):
    return _lstm_page(tmp_path_factory.mktemp("wide"), 128, 64)


@pytest.fixture(scope="module")
def crowded_page(tmp_path_factory):
    ablation = (
        [AblationResult("forward/forget", 0.00091, 0.5), AblationResult("forward/input", 1, 2)],
        "mse",
        0.0,
    )
    return _lstm_page(tmp_path_factory.mktemp("crowded"), 24, 12, shared=20, ablation=ablation)


def test_read_out_follows_the_cursor_at_128_units(open_page, wide_page):
    # 128 units: the heatmap is 640 px tall; the line under it is below a 1280x900 window.
    path, trace, _ = wide_page
    page = open_page(path, width=1280, height=900)
    x, y = page.cell_point("#heatmap", 40, 120)
    page.page.mouse.move(x, y)
    tip = page.page.locator("#tooltip")
    assert tip.is_visible()
    box = tip.bounding_box()
    assert 0 <= box["x"] and box["x"] + box["width"] <= 1280
    assert 0 <= box["y"] and box["y"] + box["height"] <= 900
    # Beside the cursor, not somewhere else on the page.
    assert abs(box["x"] - x) < 40 + box["width"] and abs(box["y"] - y) < 40 + box["height"]
    text = page.tooltip()
    assert text.startswith("unit 120 · step 40 · input ")
    value = np.asarray(trace.gates["forward"].forget)[0, 40, 120]
    assert abs(float(text.rsplit(" ", 1)[1]) - value) <= 1e-4
    assert text == page.page.locator("#heatmap-readout").inner_text()
    page.page.mouse.move(1, 1)
    assert page.tooltip() == ""


def test_read_outs_never_describe_a_picture_no_longer_drawn(open_page, crowded_page):
    path, _, _ = crowded_page
    page = open_page(path)
    assert page.current_gate() == "forward/forget"
    point = page.js("window.gatenetsExplorer.scatterPoint(23)")
    page.page.mouse.move(point["x"], point["y"])
    assert "τ" in page.page.locator("#scatter-readout").inner_text()
    page.page.select_option("#gate", "input")
    # The input gate has no time constant, and the forget gate's numbers are gone.
    assert page.page.locator("#scatter-readout").inner_text().strip() == ""
    assert page.tooltip() == ""
    # The timeline's read-out goes with the units it described.
    page.js("window.gatenetsExplorer.selectUnits([21, 22])")
    assert page.hover_cell("#timeline", 3, 1).startswith("step 3 · input ")
    assert "unit 22: " in page.page.locator("#timeline-readout").inner_text()
    page.js("window.gatenetsExplorer.selectUnits([23])")
    assert page.page.locator("#timeline-readout").inner_text().strip() == ""
    # Clicking an ablation row changes the gate: no read-out of the old one stays.
    page.hover_cell("#heatmap", 2, 5)
    page.page.locator("#ablation-body tr").nth(0).click()
    assert page.current_gate() == "forward/forget"
    assert page.page.locator("#heatmap-readout").inner_text().strip() == ""


def test_every_unit_can_be_clicked_in_the_scatter_even_when_points_coincide(
    open_page, crowded_page
):
    path, trace, _ = crowded_page
    page = open_page(path)
    for gate in ("input", "forget", "output"):
        page.page.select_option("#gate", gate)
        for unit in range(24):
            point = page.js(f"window.gatenetsExplorer.scatterPoint({unit})")
            page.page.mouse.click(point["x"], point["y"])
            assert page.js("window.gatenetsExplorer.state.units") == [unit], (gate, unit)
    # A rectangle dragged around the shared point (0, 0) chooses the twenty units there.
    point = page.js("window.gatenetsExplorer.scatterPoint(0)")
    page.page.mouse.move(point["x"] - 20, point["y"] - 60)
    page.page.mouse.down()
    page.page.mouse.move(point["x"] + 60, point["y"] + 20, steps=4)
    page.page.mouse.up()
    chosen = sorted(page.js("window.gatenetsExplorer.state.units"))
    assert set(range(20)) <= set(chosen)
    # The wheel zooms in around the cursor: the shared point's neighbours move apart.
    before = page.js("window.gatenetsExplorer.scatterPoint(23)")
    page.page.mouse.move(point["x"], point["y"])
    page.page.mouse.wheel(0, -300)
    assert page.js("window.gatenetsExplorer.state.zoom") is not None
    page.page.click("#reset-zoom")
    assert page.js("window.gatenetsExplorer.scatterPoint(23)") == before


def test_unit_list_sorts_by_each_statistic(open_page, crowded_page):
    path, trace, _ = crowded_page
    stats = gate_statistics(trace)["forward/output"]
    page = open_page(path)
    page.page.select_option("#gate", "output")
    for key, values in (
        ("right", stats.right_saturated),
        ("left", stats.left_saturated),
        ("mean", stats.mean),
    ):
        page.page.select_option("#unit-sort", key)
        order = [int(v) for v in page.page.locator("#unit-list option").evaluate_all(
            "(options) => options.map((o) => o.value)")]  # fmt: skip
        # Largest first; ties by unit. The page holds the statistics to six digits.
        expected = sorted(range(24), key=lambda u: (-round(float(values[u]), 6), u))
        assert order == expected, key
    assert "sort=mean" in page.page.url


def test_one_colour_code_with_a_colour_bar_and_metrics_to_four_digits(
    open_page, crowded_page, tmp_path
):
    path, trace, _ = crowded_page
    page = open_page(path)
    bar = page.page.locator("#colorbar")
    assert bar.is_visible() and bar.bounding_box()["width"] > 200
    # The colour bar's ends are the report's colour map's ends.
    from matplotlib import colormaps

    ends = page.js(
        """() => { const c = document.getElementById('colorbar');
        const ctx = c.getContext('2d'); const r = window.devicePixelRatio || 1;
        const a = ctx.getImageData(Math.round(82 * r), Math.round(8 * r), 1, 1).data;
        const b = ctx.getImageData(Math.round(337 * r), Math.round(8 * r), 1, 1).data;
        return [Array.from(a).slice(0, 3), Array.from(b).slice(0, 3)]; }"""
    )
    cmap = colormaps[GATE_CMAP]
    for got, level in zip(ends, (0.0, 1.0), strict=True):
        want = [round(255 * c) for c in cmap(level)[:3]]
        assert np.max(np.abs(np.subtract(got, want))) <= 8, (got, want)
    figure = gate_heatmap(trace, "forward/forget")
    assert figure.axes[0].images[0].get_cmap().name == GATE_CMAP == "coolwarm"
    # An MSE of 0.00091 is not 0.0010 (page) or 0.0009 (report).
    cells = page.page.locator("#ablation-body tr").nth(0).locator("td").all_inner_texts()
    assert cells[:2] == ["forward/forget", "0.0009100"]
    report = write_report(
        tmp_path, stats=gate_statistics(trace), ablation=(
            [AblationResult("forward/forget", 0.00091, 0.5)], "mse", 0.0)
    )  # fmt: skip
    assert "<td>0.0009100</td>" in pathlib.Path(report.html).read_text()


@pytest.mark.parametrize("width", [800, 1600])
def test_layout_fits_from_800_to_1600_pixels(open_page, wide_page, width):
    path, _, _ = wide_page
    page = open_page(path, width=width, height=900)
    assert page.js("document.documentElement.scrollWidth") <= width
    # 64 steps: the heatmap fits its box without scrolling, and every column can be hovered.
    fits = page.js(
        "() => { const c = document.getElementById('heatmap');"
        " return c.getBoundingClientRect().width <= c.parentElement.clientWidth; }"
    )
    assert fits
    assert page.hover_cell("#heatmap", 63, 0).startswith("unit 0 · step 63")
