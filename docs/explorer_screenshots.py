"""Screenshots of the gate explorer for the README, taken in headless Chromium.

Trains the char-LM task's default model as ``gatenets inspect`` does (unless ``--report`` names
a directory that already holds ``explorer.html``), opens the explorer, picks three forget-gate
units in the scatter, hovers the heatmap, and saves ``docs/images/explorer.png`` (the whole
page's top) and ``docs/images/explorer_heatmap.png`` (the units × steps heatmap).

python docs/explorer_screenshots.py                     # trains 300 steps first
python docs/explorer_screenshots.py --report report/    # an existing `gatenets inspect --out`
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

from gatenets.cli import main as gatenets_main

IMAGES = pathlib.Path(__file__).parent / "images"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--report", help="a directory written by `gatenets inspect --out`")
parser.add_argument("--chromium", default="/usr/bin/chromium")
parser.add_argument("--steps", type=int, default=300)


def main() -> None:
    args = parser.parse_args()
    report = args.report
    if report is None:
        report = tempfile.mkdtemp(prefix="gatenets-explorer-")
        gatenets_main(["inspect", "--out", report, "--steps", str(args.steps), "--no-progress"])
    page_path = pathlib.Path(report, "explorer.html").resolve()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(page_path.as_uri())
        page.wait_for_function("window.gatenetsExplorer !== undefined")
        # Three units of the forget gate: the one the page picks first, clicked in the
        # scatter, plus two shift-clicked.
        units = page.evaluate("window.gatenetsExplorer.state.units")
        for k, unit in enumerate(units):
            point = page.evaluate(f"window.gatenetsExplorer.scatterPoint({unit})")
            if k:
                page.keyboard.down("Shift")
            page.mouse.click(point["x"], point["y"])
            page.keyboard.up("Shift")
        page.evaluate(f"window.gatenetsExplorer.selectUnits({units})")
        heatmap = page.locator("#heatmap")
        box = heatmap.bounding_box()
        page.mouse.move(box["x"] + 44 + 14 * 20.5, box["y"] + 10 * units[0] + 5)
        IMAGES.mkdir(exist_ok=True)
        page.screenshot(
            path=str(IMAGES / "explorer.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 1000}
        )
        heatmap.scroll_into_view_if_needed()
        box = heatmap.bounding_box()
        page.mouse.move(box["x"] + 44 + 14 * 20.5, box["y"] + 10 * units[0] + 5)
        scrolled = page.evaluate("window.scrollY")  # full-page clips are in page coordinates
        page.screenshot(
            path=str(IMAGES / "explorer_heatmap.png"),
            full_page=True,
            clip={
                "x": box["x"] - 10,
                "y": box["y"] + scrolled - 10,
                "width": min(box["width"], 1240) + 20,
                "height": box["height"] + 64,
            },
        )
        browser.close()
    print(f"wrote {IMAGES / 'explorer.png'} and {IMAGES / 'explorer_heatmap.png'}")


if __name__ == "__main__":
    main()
