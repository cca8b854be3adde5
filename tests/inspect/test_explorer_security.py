"""Nothing a user writes runs as script: the explorer and the report are filled by a template
that places each value once, their data is JSON escaped for ``<``, ``>`` and ``&``, and their
content-security policy names the page's own script by hash. Every user-controlled string —
title, notes, run directory, the text's tokens — holds template slots, ``</script>``,
``<!--<script`` and an ``onerror`` image; a real browser must run none of it and still draw
the page."""

from __future__ import annotations

import html
import json
import pathlib
import re

import numpy as np
import pytest
from conftest import HOSTILE, run_cli

from gatenets import GateTrace, GRUGates
from gatenets.inspect import gate_statistics, write_report
from gatenets.inspect._template import Template, content_security_policy, script_json
from gatenets.inspect.explorer import explorer_data, explorer_page, write_explorer


def test_template_fills_each_slot_once_and_names_bad_values():
    page = Template("<title>{{TITLE}}</title><h1>{{TITLE}}</h1>{{DATA}}")
    assert page.render(TITLE="{{DATA}}", DATA="{{TITLE}}") == (
        "<title>{{DATA}}</title><h1>{{DATA}}</h1>{{TITLE}}"
    )
    with pytest.raises(ValueError, match=r"missing \['DATA'\], unknown \['NOTES'\]"):
        page.render(TITLE="t", NOTES="n")
    with pytest.raises(ValueError, match="slot DATA must be a str; got int"):
        page.render(TITLE="t", DATA=1)


def test_script_json_has_no_markup_and_is_the_same_value():
    value = {"t": HOSTILE + "\u2028\u2029&amp;", "n": [1.5, None]}
    text = script_json(value)
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == value


def test_policy_names_hashes_and_never_unsafe_inline():
    policy = content_security_policy(scripts=("a()",), styles=("b{}",), style_attributes=["c:d"])
    assert "unsafe-inline" not in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]{44}';", policy)
    assert "'unsafe-hashes'" in policy and policy.startswith("default-src 'none'")
    assert "script-src 'none'" in content_security_policy()


def _explorer_of(title, notes, tokens):
    rng = np.random.default_rng(0)
    gates = GRUGates(rng.random((2, len(tokens), 3)), rng.random((2, len(tokens), 3)))
    trace = GateTrace({"forward": gates}, np.ones((2, len(tokens)), bool))
    ids = np.tile(np.arange(len(tokens), dtype=np.int32), (2, 1))
    return explorer_data(
        trace,
        gate_statistics(trace),
        ids,
        decode=lambda ids: "".join(tokens[int(i)] for i in np.ravel(ids)),
        title=title,
        notes=notes,
    )


def test_page_markup_holds_hostile_strings_only_as_text():
    data = _explorer_of(HOSTILE, [HOSTILE], [HOSTILE, "<", "\u2028"])
    page = explorer_page(data)
    head, _, rest = page.partition('id="gatenets-data">')
    payload, _, tail = rest.partition("</script>")
    # The data element ends where the page put its end, and holds the data exactly.
    assert json.loads(payload) == json.loads(json.dumps(data))
    assert "<script>" in tail and "unsafe-inline" not in head
    assert "<img" not in page and "{{" not in head.replace(html.escape(HOSTILE), "")


def _assert_page_is_drawn_and_inert(page, title):
    assert page.page.locator("h1").inner_text() == title
    assert page.page.locator("#gate option").count() >= 1
    assert page.js("document.querySelectorAll('img').length") == 0
    assert page.page.locator("#heatmap").bounding_box()["height"] > 10
    assert page.dialogs == []


def test_hostile_title_notes_and_tokens_run_nothing(open_page, tmp_path):
    data = _explorer_of(HOSTILE, [HOSTILE, "second " + HOSTILE], [HOSTILE, "<!--<script>", "x"])
    page = open_page(pathlib.Path(write_explorer(tmp_path, data)))
    _assert_page_is_drawn_and_inert(page, HOSTILE)
    assert page.page.locator("p.note").all_inner_texts() == [HOSTILE, "second " + HOSTILE]
    readout = page.hover_cell("#heatmap", 0, 0)
    assert json.dumps(HOSTILE) in readout
    page.close()
    report = write_report(
        tmp_path / "report",
        stats=gate_statistics(
            GateTrace({"forward": GRUGates(np.full((1, 2, 2), 0.5), np.full((1, 2, 2), 0.5))},
                      np.ones((1, 2), bool))
        ),
        title=HOSTILE,
        notes=[HOSTILE],
        fragments={HOSTILE: "<p style=\"color:red\">kept</p>"},
    )  # fmt: skip
    page = open_page(pathlib.Path(report.html), wait=False).page
    assert page.locator("h1").inner_text() == HOSTILE
    assert page.locator("p").nth(0).inner_text() == HOSTILE
    assert page.locator("h2").last.inner_text() == HOSTILE
    assert page.evaluate("document.querySelectorAll('img, script').length") == 0
    # The fragment's own style attribute is allowed by its hash.
    kept = page.get_by_text("kept", exact=True)
    assert kept.evaluate("(p) => getComputedStyle(p).color") == "rgb(255, 0, 0)"


def test_run_directory_and_training_text_run_nothing(open_page, hostile_run, tmp_path):
    run_dir, _ = hostile_run
    out = tmp_path / "report"
    run_cli(
        "inspect", "--run", str(run_dir), "--out", str(out), "--batches", "1",
        "--batch-size", "4", "--no-progress",
    )  # fmt: skip
    page = open_page(out / "explorer.html")
    title = page.page.locator("h1").inner_text()
    assert HOSTILE in title
    _assert_page_is_drawn_and_inert(page, title)
    # The tokens of the page's sequences hold the hostile text's characters.
    tokens = "".join(page.js("window.gatenetsExplorer.tokens(null)"))
    assert "<" in tokens and ">" in tokens and "{" in tokens
