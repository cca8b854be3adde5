"""Load time of the gate explorer in headless Chromium: 512 units × 10,000 steps by default.

A GRU-shaped trace (two gates, one sequence) of random values is written with
``write_explorer``; Chromium (Debian's ``chromium``, driven by Playwright) opens the file and
the time is taken from navigation until the page has drawn every picture
(``window.gatenetsExplorer`` exists, which ``init`` sets last). A fresh page each repeat; the
median is printed with the page size. Load time is wall time: take it on a quiet machine.

python benchmarks/explorer_load.py                      # 512 units x 10,000 steps, 5 repeats
python benchmarks/explorer_load.py --quick              # 64 units x 1,000 steps, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time

import numpy as np

from gatenets import GateTrace, GRUGates
from gatenets.inspect import gate_statistics
from gatenets.inspect.explorer import explorer_data, write_explorer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--units", type=int, default=512)
parser.add_argument("--steps", type=int, default=10_000)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--quick", action="store_true", help="64 units x 1,000 steps, 2 repeats")
parser.add_argument("--chromium", default=os.environ.get("GATENETS_CHROMIUM", "/usr/bin/chromium"))
parser.add_argument("--json", help="also write the result to this file")
args = parser.parse_args()
if args.quick:
    args.units, args.steps, args.repeats = 64, 1000, 2


# Milliseconds from navigation: file read, HTML parsed up to the script, script done.
PHASES = """() => { const n = performance.getEntriesByType("navigation")[0];
  return {response_end: n.responseEnd, script_start: window.gatenetsExplorer.started,
          dom_content_loaded: n.domContentLoadedEventEnd || performance.now()}; }"""


def page_file(directory: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    shape = (1, args.steps, args.units)
    gates = GRUGates(rng.random(shape, np.float32), rng.random(shape, np.float32))
    trace = GateTrace({"forward": gates}, np.ones((1, args.steps), bool))
    inputs = rng.normal(size=(1, args.steps, 1)).astype(np.float32)
    data = explorer_data(trace, gate_statistics(trace), inputs, max_steps=args.steps)
    return pathlib.Path(write_explorer(directory, data))


def main() -> None:
    from playwright.sync_api import sync_playwright

    executable = args.chromium if os.access(args.chromium, os.X_OK) else shutil.which("chromium")
    if executable is None:
        raise SystemExit("no Chromium found: apt-get install chromium, or pass --chromium PATH")
    directory = pathlib.Path(tempfile.mkdtemp())
    path = page_file(directory)
    size_mb = path.stat().st_size / 2**20
    seconds, phases = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        for _ in range(args.repeats):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
            began = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_function("window.gatenetsExplorer !== undefined", timeout=120_000)
            seconds.append(time.perf_counter() - began)
            phases.append(page.evaluate(PHASES))
            if errors:
                raise SystemExit(f"errors on the page: {errors}")
            page.close()
        browser.close()
    shutil.rmtree(directory)
    result = {
        "units": args.units,
        "steps": args.steps,
        "page_mb": round(size_mb, 1),
        "load_seconds_median": round(statistics.median(seconds), 3),
        "load_seconds": [round(s, 3) for s in seconds],
        "phases_ms": phases,
    }
    print(
        f"{args.units} units x {args.steps} steps ({size_mb:.1f} MB page): load "
        f"{result['load_seconds_median']:.2f} s median of {args.repeats} "
        f"({', '.join(f'{s:.2f}' for s in seconds)})"
    )
    for phase in phases:
        print("  ms from navigation: " + ", ".join(f"{k} {v:.0f}" for k, v in phase.items()))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
