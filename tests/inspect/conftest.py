"""Shared by the inspection tests: one headless Chromium for the whole session (Debian's
``chromium`` driven by Playwright), a page wrapper that fails on console errors, script
dialogs and network requests, and one tiny trained char-LM run (two checkpoints) whose
directory name and training text are hostile HTML.

The browser tests skip, saying why, only when no Chromium (or no Playwright, which the ``dev``
extra installs) is found; ``.ci/run`` installs both.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pathlib
import shutil

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Everything a hostile user could put in a string the page shows: a template slot, a tag that
# ends the data element, a comment opener that swallows it, and an event handler.
HOSTILE = "{{DATA}}{{TITLE}}</script><!--<script><img src=x onerror=alert(1)>"

# Training text for the shared run: code-like, with quotes, brackets and indentation for the
# annotation tracks, and the hostile string in it so its characters are tokens on the page.
HOSTILE_TEXT = (
    "def f(a, b):  # " + HOSTILE + "\n    return 'x' + (a * b)\n\n"
    "class K:\n    def g(self):  # " + HOSTILE + "\n        if self.x > 1:\n"
    '            return [1, 2]\n        return "y"  # ' + HOSTILE + "\n\n"
) * 30


def find_chromium() -> str | None:
    for candidate in (
        os.environ.get("GATENETS_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set GATENETS_CHROMIUM)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class ExplorerPage:
    """A page with its console errors, uncaught exceptions, script dialogs (``alert``) and
    requests collected; :meth:`close` fails on any of them."""

    def __init__(
        self, browser, path: pathlib.Path, width: int = 1300, height: int = 1000, wait=True
    ):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("dialog", self._dialog)
        self.page.goto(pathlib.Path(path).resolve().as_uri())
        if wait:
            self.page.wait_for_function("window.gatenetsExplorer !== undefined", timeout=20000)

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def current_gate(self) -> str:
        return self.js("window.gatenetsExplorer.gates[window.gatenetsExplorer.state.gate]")

    def cell_point(self, selector: str, column: int, row: int) -> tuple[float, float]:
        """Page coordinates of the centre of a cell of a canvas drawn with
        ``data-label-width``, ``data-cell-width`` and ``data-row-height``."""
        self.page.locator(selector).scroll_into_view_if_needed()
        box = self.page.locator(selector).bounding_box()
        layout = self.js("(s) => Object.assign({}, document.querySelector(s).dataset)", selector)
        width = float(layout["cellWidth"])
        height = float(layout.get("rowHeight", layout["cellWidth"]))
        left = box["x"] + float(layout["labelWidth"]) + column * width
        top = box["y"] + float(layout.get("top", 0)) + row * height
        return _pixel_in(left, width), _pixel_in(top, height)

    def hover_cell(self, selector: str, column: int, row: int) -> str:
        """Moves the mouse to a cell (:meth:`cell_point`); returns the matching read-out."""
        x, y = self.cell_point(selector, column, row)
        self.page.mouse.move(x, y)
        return self.page.locator(selector + "-readout").inner_text()

    def tooltip(self) -> str:
        tip = self.page.locator("#tooltip")
        return tip.inner_text() if tip.is_visible() else ""

    def close(self):
        self.page.close()
        assert self.dialogs == [], f"script ran on the page: {self.dialogs}"
        assert self.errors == [], f"console errors on the page: {self.errors}"
        assert all(url.startswith(("file:", "data:")) for url in self.requests), self.requests


def _pixel_in(start: float, size: float) -> float:
    """A whole pixel inside ``[start, start + size)``, near its middle: mouse events carry
    whole-pixel coordinates, and a one-pixel cell at a fractional offset would be missed."""
    pixel = math.floor(start + size / 2)
    return float(pixel if pixel >= start else math.ceil(start))


@pytest.fixture
def open_page(browser):
    """``open_page(path, width=…, height=…, wait=True)`` opens an :class:`ExplorerPage`
    (``wait=False`` for a page without the explorer's script); every page is closed (and
    checked) at the end of the test."""
    pages = []

    def opener(path, **options):
        page = ExplorerPage(browser, path, **options)
        pages.append(page)
        return page

    yield opener
    for page in pages:
        if not page.page.is_closed():
            page.close()


def run_cli(*argv: str) -> str:
    """``gatenets ARGV`` in this process; its standard output, or a failure with both streams."""
    from gatenets.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv])
    assert code == 0, f"gatenets {' '.join(argv)} exited {code}:\n{out.getvalue()}{err.getvalue()}"
    return out.getvalue()


@pytest.fixture(scope="session")
def hostile_run(tmp_path_factory):
    """A tiny char-LM LSTM trained 4 steps on :data:`HOSTILE_TEXT` (checkpoints at steps 2 and
    4) into a directory whose name is :data:`HOSTILE`: ``(run directory, text file)``."""
    root = tmp_path_factory.mktemp("runs")
    text = root / "train.txt"
    text.write_text(HOSTILE_TEXT, encoding="utf-8")
    run_dir = root / HOSTILE
    run_cli(
        "run", "charlm", "--text", str(text), "-o", "seq_len=16", "--steps", "4", "--hidden",
        "8", "--batch-size", "4", "--eval-every", "2", "--no-progress", "--out", str(run_dir),
    )  # fmt: skip
    return run_dir, text
