"""A researcher's workflow, end to end in a real browser: train a character model on a file,
inspect it on that file with ``--text`` at a chosen checkpoint (``--step``), choose units over
a span, search for the places they are on together, and check every match, the annotation
tracks and the per-unit correlations against NumPy references computed here."""

from __future__ import annotations

import json
import math
import pathlib
import re

import numpy as np
import pytest
from conftest import run_cli

from gatenets.inspect.explorer import QUANTUM
from gatenets.inspect.statistics import run_with_gates
from gatenets.train import load_run
from gatenets.train.checkpoint import Checkpointer

SEQUENCES, LENGTH = 5, 48


@pytest.fixture(scope="module")
def inspected(hostile_run, tmp_path_factory):
    run_dir, text_file = hostile_run
    out = tmp_path_factory.mktemp("inspect-text")
    run_cli(
        "inspect", "--run", str(run_dir), "--step", "2", "--text", str(text_file),
        "--sequences", str(SEQUENCES), "--sequence-length", str(LENGTH), "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    return run_dir, text_file.read_text(encoding="utf-8"), out / "explorer.html"


def _model_at(run_dir, step):
    loaded = load_run(run_dir)
    with Checkpointer(run_dir / "checkpoints") as checkpoints:
        checkpoints.restore(loaded.model, step=step)
    loaded.model.eval()
    return loaded


def _page_values(page, example, gate, units):
    """``[steps, units]`` values the page holds for ``units`` of ``gate`` in a sequence."""
    return np.asarray(
        page.js(
            "([k, g, units]) => { const x = window.gatenetsExplorer;"
            " x.selectExample(k); x.selectGate(g, units); return x.timelineSeries(); }",
            [example, gate, units],
        )[str(units[0])]
    )


def test_text_and_step_are_what_the_page_shows(open_page, inspected):
    run_dir, text, path = inspected
    page = open_page(path)
    provenance = page.page.locator("#provenance").inner_text()
    assert "step 2" in provenance and str(run_dir.resolve()) in provenance
    assert re.search(r"validation loss \d\.\d{3}", provenance), provenance
    covered = SEQUENCES * LENGTH
    assert f"characters 0–{covered - 1} of {len(text)} in {SEQUENCES}" in provenance
    # The sequences are the text's first characters, in order.
    assert page.js("window.gatenetsExplorer.tokens(null)") == text[:covered]
    # The gates are those of checkpoint 2, not of the latest (4).
    loaded = _model_at(run_dir, 2)
    ids = loaded.task.encode(text[LENGTH : 2 * LENGTH])[None]
    _, trace = run_with_gates(loaded.model, ids)
    expected = np.asarray(trace.flat()["layer0/forward/forget"])[0, :, 3]
    shown = _page_values(page, 1, "layer0/forward/forget", [3])
    np.testing.assert_allclose(shown, expected, atol=QUANTUM)
    # The hidden state beside the gates: its last step is the stack's final carry h.
    hidden = _page_values(page, 1, "output/hidden state", [3])
    embedded = loaded.model.embed(ids)
    carry, _ = loaded.model.rnn(embedded, return_carry=True)
    final_h = np.asarray(carry[-1].h if isinstance(carry, list | tuple) else carry.h)[0, 3]
    bound = max(1.0, float(np.max(np.abs(np.asarray(loaded.model.rnn(embedded))))))
    assert abs(hidden[-1] * 2 * bound - bound - final_h) <= 2 * bound * QUANTUM + 1e-6
    readout = page.hover_cell("#heatmap", LENGTH - 1, 3)
    assert abs(float(readout.rsplit(" ", 1)[1]) - final_h) <= 5e-5 + 2 * QUANTUM
    latest = _model_at(run_dir, 4)
    _, later = run_with_gates(latest.model, ids)
    assert np.max(np.abs(np.asarray(later.flat()["layer0/forward/forget"])[0, :, 3] - shown)) > 1e-3


def _reference_matches(values, chosen, theta, length):
    """The page's documented definition, in NumPy: runs where every chosen unit is >= theta,
    scored by length similarity times the mean share of the other units below theta."""
    matches = []
    others = [u for u in range(values[0].shape[1]) if u not in chosen]
    for k, v in enumerate(values):
        on = np.all(v[:, chosen] >= theta, axis=1)
        t = 0
        while t < len(on):
            if not on[t]:
                t += 1
                continue
            end = t
            while end + 1 < len(on) and on[end + 1]:
                end += 1
            n = end - t + 1
            off = np.mean(np.mean(v[t : end + 1][:, others] < theta, axis=1)) if others else 1.0
            matches.append((k, t, end, min(n, length) / max(n, length) * off))
            t = end + 1
    return sorted(matches, key=lambda m: (-m[3], m[0], m[1]))


def test_select_a_span_search_and_jump(open_page, inspected):
    _, text, path = inspected
    page = open_page(path)
    gate = "layer0/forward/output"
    units = list(range(8))
    values = []
    for k in range(SEQUENCES):
        series = page.js(
            "([k, g, u]) => { const x = window.gatenetsExplorer; x.selectExample(k);"
            " x.selectGate(g, u); return x.timelineSeries(); }",
            [k, gate, units],
        )
        values.append(np.stack([np.asarray(series[str(u)]) for u in units], 1))
    # Choose a span of sequence 0 by dragging across the timeline, then its "on" units.
    page.js(
        f"window.gatenetsExplorer.selectExample(0); window.gatenetsExplorer.selectGate('{gate}')"
    )
    page.page.fill("#threshold", "0.5")
    page.page.dispatch_event("#threshold", "change")
    x0, y = page.cell_point("#timeline", 4, 0)
    x1, _ = page.cell_point("#timeline", 7, 0)
    page.page.mouse.move(x0, y)
    page.page.mouse.down()
    page.page.mouse.move(x1, y, steps=3)
    page.page.mouse.up()
    assert page.js("window.gatenetsExplorer.state.range") == [4, 7]
    page.page.click("#units-on")
    chosen = page.js("window.gatenetsExplorer.state.units")
    expected_on = [u for u in units if np.all(values[0][4:8, u] >= 0.5)]
    assert chosen == expected_on
    if not chosen:  # an untrained model may have no unit on throughout: choose the most-on one
        best = int(np.argmax(values[0][4:8].min(axis=0)))
        page.js(f"window.gatenetsExplorer.selectUnits([{best}])")
        chosen = [best]
    page.page.click("#search")
    matches = page.js("window.gatenetsExplorer.state.matches")
    reference = _reference_matches(values, chosen, 0.5, 4)
    assert [(m["example"], m["start"], m["end"]) for m in matches] == [r[:3] for r in reference]
    np.testing.assert_allclose([m["score"] for m in matches], [r[3] for r in reference], atol=1e-9)
    assert len(matches) >= 1
    # Every match holds the pattern, and the table lists them ranked; a click jumps there.
    for m in matches:
        assert np.all(values[m["example"]][m["start"] : m["end"] + 1, chosen] >= 0.5)
    rows = page.page.locator("#matches tr")
    assert rows.count() == min(200, len(matches))
    last = min(200, len(matches)) - 1
    rows.nth(last).click()
    m = matches[last]
    assert page.js("window.gatenetsExplorer.state.example") == m["example"]
    assert page.js("window.gatenetsExplorer.state.range") == [m["start"], m["end"]]
    fragment = page.page.url.split("#", 1)[1]
    assert f"range={m['start']}-{m['end']}" in fragment and f"example={m['example']}" in fragment
    # The view survives a reload from its URL.
    page.page.reload()
    page.page.wait_for_function("window.gatenetsExplorer !== undefined")
    assert page.js("window.gatenetsExplorer.state.range") == [m["start"], m["end"]]
    assert page.js("window.gatenetsExplorer.state.units") == chosen


def _reference_tracks(text):
    """Space, inside quotes, bracket depth, indentation and line position of each character,
    as the page defines them (each sequence starts outside quotes and brackets, at a line
    start)."""
    space, quotes, depth, indent, position = [], [], [], [], []
    open_quote, d, ind, leading, pos = None, 0, 0, True, 0
    for ch in text:
        space.append(float(ch.isspace()))
        if ch == "\n":
            open_quote = None
            quotes.append(0.0)
        elif open_quote is None and ch in "'\"":
            open_quote = ch
            quotes.append(1.0)
        elif open_quote is not None and ch == open_quote:
            open_quote = None
            quotes.append(1.0)
        else:
            quotes.append(float(open_quote is not None))
        if ch in "([{":
            d += 1
            depth.append(d)
        else:
            depth.append(d)
            if ch in ")]}":
                d = max(0, d - 1)
        if ch == "\n":
            ind, leading = 0, True
            indent.append(0)
        elif leading and ch in " \t":
            ind += 4 if ch == "\t" else 1
            indent.append(ind)
        else:
            leading = False
            indent.append(ind)
        position.append(pos)
        pos = 0 if ch == "\n" else pos + 1
    return {
        "space": space,
        "inside quotes": quotes,
        "bracket depth": depth,
        "indentation": indent,
        "line position": position,
    }


def test_annotation_tracks_and_unit_correlations(open_page, inspected):
    _, text, path = inspected
    page = open_page(path)
    names = page.js("window.gatenetsExplorer.trackNames()")
    assert names == ["space", "inside quotes", "bracket depth", "indentation", "line position"]
    for k in range(SEQUENCES):
        chunk = text[k * LENGTH : (k + 1) * LENGTH]
        reference = _reference_tracks(chunk)
        for name in names:
            assert (
                page.js(f"window.gatenetsExplorer.track({k}, {json.dumps(name)})")
                == (reference[name])
            ), (k, name)
    gate = "layer0/forward/input"
    page.js(f"window.gatenetsExplorer.selectGate('{gate}')")
    page.page.select_option("#track", "indentation")
    got = page.js("window.gatenetsExplorer.correlations()")
    series = []
    for k in range(SEQUENCES):
        v = page.js(
            "([k, g]) => { const x = window.gatenetsExplorer; x.selectExample(k);"
            " x.selectGate(g, [0,1,2,3,4,5,6,7]); return x.timelineSeries(); }",
            [k, gate],
        )
        series.append(np.stack([v[str(u)] for u in range(8)], 1))
    values = np.concatenate(series)
    track = np.concatenate(
        [_reference_tracks(text[k * LENGTH : (k + 1) * LENGTH])["indentation"] for k in range(5)]
    )
    for entry in got:
        r = np.corrcoef(values[:, entry["unit"]], track)[0, 1]
        if math.isnan(r):
            assert entry["r"] is None
        else:
            assert abs(entry["r"] - r) < 1e-6
    # The table lists the strongest first; a click adds the unit to the chosen ones.
    rows = page.page.locator("#correlations tr")
    assert rows.count() == sum(e["r"] is not None for e in got)
    first = rows.nth(0).locator("td").all_inner_texts()
    strongest = max((e for e in got if e["r"] is not None), key=lambda e: abs(e["r"]))
    assert first[0] == f"unit {strongest['unit']}"


def test_export_selection_as_csv_and_json(open_page, inspected):
    _, text, path = inspected
    page = open_page(path)
    page.js(
        "window.gatenetsExplorer.selectExample(2); window.gatenetsExplorer.selectUnits([1, 5]);"
        " window.gatenetsExplorer.setRange(3, 9)"
    )
    series = page.js("window.gatenetsExplorer.timelineSeries()")
    exported = json.loads(page.js("window.gatenetsExplorer.exportText('json')"))
    assert exported["steps"] == list(range(3, 10))
    assert "".join(exported["tokens"]) == text[2 * LENGTH + 3 : 2 * LENGTH + 10]
    np.testing.assert_allclose(exported["units"]["5"], series["5"][3:10], atol=1e-6)
    with page.page.expect_download() as download:
        page.page.click("#export-csv")
    lines = pathlib.Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert lines[0] == '"step","token","unit 1","unit 5"'
    assert len(lines) == 8 and lines[1].startswith("3,")
    assert abs(float(lines[1].split(",")[-1]) - series["5"][3]) < 1e-6


def test_inspect_flags_are_checked_before_any_work(hostile_run, tmp_path, capsys):
    from gatenets.cli import main

    run_dir, text_file = hostile_run
    out = str(tmp_path / "out")
    cases = [
        (["--step", "2"], "--step needs --run"),
        (["--run", str(run_dir), "--step", "3"], "--step 3: .* has checkpoints of steps [2, 4]"),
        (["--text", str(tmp_path / "missing.txt")], "--text .*missing.txt' is not a file"),
        (["--sequences", "0"], "--sequences must be >= 1; got 0"),
        (["--sequence-length", "1"], "--sequence-length must be >= 2; got 1"),
    ]
    for flags, message in cases:
        assert main(["inspect", "--out", out, "--no-progress", *flags]) == 2, flags
        assert re.search(message.replace("[", r"\[").replace("]", r"\]"), capsys.readouterr().err)
    other = tmp_path / "other.txt"
    other.write_text("ü is not in the vocabulary", encoding="utf-8")
    code = main(["inspect", "--run", str(run_dir), "--text", str(other), "--out", out])
    assert code == 2
    assert "'ü' is not in the vocabulary" in capsys.readouterr().err


def test_two_checkpoints_side_by_side_and_their_difference(open_page, hostile_run, tmp_path):
    run_dir, text_file = hostile_run
    text = text_file.read_text(encoding="utf-8")
    out = tmp_path / "compare"
    run_cli(
        "inspect", "--run", str(run_dir), "--step", "2", "--compare-step", "4", "--text",
        str(text_file), "--sequences", "3", "--sequence-length", "32", "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    page = open_page(out / "explorer.html")
    layers = page.page.locator("#layer option").all_inner_texts()
    assert layers == ["step 2/layer0", "step 4/layer0", "step 4 − step 2/layer0"]
    gates = {}
    for step in (2, 4):
        loaded = _model_at(run_dir, step)
        _, trace = run_with_gates(loaded.model, loaded.task.encode(text[:96]).reshape(3, 32))
        gates[step] = np.asarray(trace.flat()["layer0/forward/forget"])
    name = "step 4 − step 2/layer0/forward/forget"
    shown = _page_values(page, 1, name, [5])
    difference = 2 * shown - 1
    np.testing.assert_allclose(difference, gates[4][1, :, 5] - gates[2][1, :, 5], atol=3 * QUANTUM)
    assert page.js("window.gatenetsExplorer.state.units") == [5]
    readout = page.hover_cell("#heatmap", 7, 5)
    assert re.match(r"unit 5 · step 7 · input .* · difference [+-]\d\.\d{4}$", readout), readout
    value = float(readout.rsplit(" ", 1)[1])
    assert abs(value - (gates[4][1, 7, 5] - gates[2][1, 7, 5])) <= 5e-5 + 3 * QUANTUM
    # The saturation of each gate in both, over the shown batch.
    rows = page.page.locator("#comparison-body tr")
    assert rows.count() == 3  # the LSTM's input, forget and output gates
    cells = rows.nth(1).locator("td").all_inner_texts()
    assert cells[0] == "layer0/forward/forget"
    assert abs(float(cells[1]) - gates[2].mean()) <= 1e-4
    assert abs(float(cells[4]) - gates[4].mean()) <= 1e-4


def test_built_in_model_reports_its_loss_in_the_progress_bar_unit_too(monkeypatch, capsys):
    """The progress bar shows the loss in nats; the line after it said only bits."""
    import argparse
    import types

    import gatenets.train
    from gatenets.inspect import cli

    def fake_train_model(config, *, task, progress):
        result = types.SimpleNamespace(train_loss=2.0 * math.log(2.0))
        return types.SimpleNamespace(config=config.resolved(task), result=result, model=None)

    monkeypatch.setattr(gatenets.train, "train_model", fake_train_model)
    args = argparse.Namespace(length=16, hidden=4, steps=1, batch_size=2, seed=0, no_progress=True)
    cli._train_charlm(args)
    assert "trained: loss 1.386 nats/char = 2.000 bits/char" in capsys.readouterr().out


def test_states_are_stored_over_their_range_and_checked():
    import base64

    from gatenets import GateTrace, GRUGates
    from gatenets.inspect import gate_statistics
    from gatenets.inspect.explorer import explorer_data

    rng = np.random.default_rng(7)
    gates = GRUGates(rng.random((2, 5, 3)), rng.random((2, 5, 3)))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    trace = GateTrace({"forward": gates}, mask)
    state = rng.uniform(-2.0, 2.0, size=(2, 5, 4))
    state[1, 4] = 50.0  # a padded step does not set the range
    data = explorer_data(
        trace, gate_statistics(trace), np.zeros((2, 5), np.int32), states={"output/h": state}
    )
    entry = data["gates"][-1]
    bound = np.abs(state[mask]).max()
    assert entry["name"] == "output/h" and entry["kind"] == "state"
    assert entry["range"] == [-bound, bound]
    stored = np.frombuffer(base64.b64decode(data["examples"][1]["values"]["output/h"]), "<u2")
    back = stored.reshape(3, 4) / 65535.0 * 2 * bound - bound
    np.testing.assert_allclose(back, state[1, :3], atol=2 * bound * QUANTUM)
    np.testing.assert_allclose(
        entry["right_saturated"], (state[mask] >= 0.9 * bound).mean(axis=0), atol=1e-6
    )
    with pytest.raises(ValueError, match=r"states\['bad'\] must be \[batch, time, units…\]"):
        explorer_data(
            trace, gate_statistics(trace), np.zeros((2, 5)), states={"bad": np.zeros((2, 4, 1))}
        )
