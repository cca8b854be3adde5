"""Pictures of gates (matplotlib, no pyplot state: every function returns a ``Figure``).

* :func:`saturation_scatter`: fraction of time each unit's gate is left- vs right-saturated,
  one point per unit, one panel per gate (Karpathy, Johnson & Fei-Fei 2015, Fig. 3).
* :func:`gate_heatmap`: one sequence's gate values over time for chosen units.
* :func:`gate_histograms`: distribution of each gate's values over valid steps.
* :func:`text_heatmap` / :func:`text_heatmap_html`: the characters of an input coloured by one
  unit's gate (for character-level models).
* :func:`gradient_plot`: :math:`\\lVert \\partial L/\\partial h_t \\rVert` against ``t`` for
  several models (see :mod:`gatenets.inspect.probe`).

Save with :func:`save_figure`, which writes a PNG atomically.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from gatenets.gates import GateTrace
from gatenets.inspect.export import _atomic_write
from gatenets.inspect.probe import GradientProfile
from gatenets.inspect.statistics import GateStatistics, _check_trace, select_gates

GATE_CMAP = "coolwarm"
"""The colour map of gate values in every picture, the explorer's included: blue 0, grey 0.5,
red 1."""


def _grid(count: int, max_columns: int = 3) -> tuple[int, int]:
    columns = min(count, max_columns)
    return math.ceil(count / columns), columns


def _chosen_stats(
    stats: Mapping[str, GateStatistics], gates: Sequence[str] | None
) -> dict[str, GateStatistics]:
    if not stats:
        raise ValueError("stats is empty: compute it with gate_statistics first.")
    return {name: stats[name] for name in select_gates(stats, gates)}


def saturation_scatter(
    stats: Mapping[str, GateStatistics], *, gates: Sequence[str] | None = None
) -> Figure:
    """Fraction of steps each unit is left-saturated (x) vs right-saturated (y).

    Units near the origin are never saturated (their gate is used in its graded range); units
    on the diagonal ``x + y = 1`` are always saturated, i.e. the gate acts as a switch; a unit
    at the top left is almost always open, at the bottom right almost always closed.

    Args:
      stats: ``{name: GateStatistics}`` from :func:`gate_statistics`.
      gates: names to draw (full or gate names); all when None.

    Returns:
      A figure with one panel per gate.

    Example:
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import gate_statistics, saturation_scatter
      >>> g = GRUGates(np.full((1, 4, 3), 0.05), np.full((1, 4, 3), 0.5))
      >>> stats = gate_statistics(GateTrace({"forward": g}, np.ones((1, 4), bool)))
      >>> fig = saturation_scatter(stats, gates=["reset"])
      >>> fig.axes[0].collections[0].get_offsets().tolist()  # always below 0.1: left-saturated
      [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    """
    chosen = _chosen_stats(stats, gates)
    rows, columns = _grid(len(chosen))
    fig = Figure(figsize=(3.2 * columns, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (name, s) in zip(axes.flat, chosen.items(), strict=False):
        ax.plot([0, 1], [1, 0], color="0.7", linewidth=1)
        ax.scatter(s.left_saturated, s.right_saturated, s=14, alpha=0.7, color="tab:blue")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"fraction left-saturated (< {s.left:g})", fontsize=8)
        ax.set_ylabel(f"fraction right-saturated (> {s.right:g})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.set_visible(False)
    return fig


def gate_histograms(
    stats: Mapping[str, GateStatistics], *, gates: Sequence[str] | None = None
) -> Figure:
    """Histogram of each gate's values over all units and valid steps (fractions of steps).

    Args:
      stats: ``{name: GateStatistics}`` from :func:`gate_statistics`.
      gates: names to draw; all when None.

    Example:
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import gate_histograms, gate_statistics
      >>> g = GRUGates(np.full((1, 4, 3), 0.05), np.full((1, 4, 3), 0.55))
      >>> stats = gate_statistics(GateTrace({"forward": g}, np.ones((1, 4), bool)), bins=10)
      >>> [float(b.get_height()) for b in gate_histograms(stats).axes[1].patches][4:7]
      [0.0, 1.0, 0.0]
    """
    chosen = _chosen_stats(stats, gates)
    rows, columns = _grid(len(chosen))
    fig = Figure(figsize=(3.2 * columns, 2.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (name, s) in zip(axes.flat, chosen.items(), strict=False):
        counts = s.histogram.sum(axis=0)
        edges = s.bin_edges
        ax.bar(
            edges[:-1],
            counts / counts.sum(),
            width=np.diff(edges),
            align="edge",
            color="tab:blue",
            edgecolor="white",
            linewidth=0.5,
        )
        ax.set_xlim(0, 1)
        ax.set_title(f"{name} (mean {s.sparsity:.2f})", fontsize=9)
        ax.set_xlabel("gate value", fontsize=8)
        ax.set_ylabel("fraction of steps", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.set_visible(False)
    return fig


def _gate_values(trace: GateTrace, name: str, example: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values [valid_time, units], valid step indices)`` of one sequence's gate."""
    mask, flat = _check_trace(trace)
    (name,) = _single(flat, name)
    if not isinstance(example, int) or not 0 <= example < mask.shape[0]:
        raise ValueError(f"example must be an int in [0, {mask.shape[0]}); got {example!r}.")
    steps = np.flatnonzero(mask[example])
    if steps.size == 0:
        raise ValueError(f"sequence {example} has no valid step (its mask is all False).")
    values = flat[name][example][steps]
    return values.reshape(values.shape[0], -1), steps


def _single(flat: Mapping[str, Any], name: str) -> tuple[str]:
    names = select_gates(flat, [name])
    if len(names) != 1:
        raise ValueError(
            f"gate {name!r} is ambiguous: it matches {tuple(names)}; give the full name."
        )
    return (names[0],)


def gate_heatmap(
    trace: GateTrace,
    name: str,
    *,
    example: int = 0,
    units: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
) -> Figure:
    """One sequence's gate values over its valid steps, units as rows (blue 0, red 1).

    Args:
      trace: a :class:`~gatenets.GateTrace`.
      name: the gate, ``"layer0/forward/forget"`` (or ``"forget"`` if only one layer has it).
      example: which sequence of the batch.
      units: which units to show (flattened unit indices); all when None.
      labels: one label per valid step for the time axis (e.g. the input characters).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> _, trace = gatenets.GRU(2, 3, rngs=nnx.Rngs(0))(jnp.ones((1, 5, 2)), return_gates=True)
      >>> fig = gatenets.inspect.gate_heatmap(trace, "update", units=[0, 2])
      >>> fig.axes[0].images[0].get_array().shape  # [units, steps]
      (2, 5)
    """
    values, steps = _gate_values(trace, name, example)
    if units is not None:
        units = list(units)
        bad = [u for u in units if not 0 <= u < values.shape[1]]
        if bad:
            raise ValueError(f"units {bad} out of range: gate {name!r} has {values.shape[1]}.")
        values = values[:, units]
    if labels is not None and len(labels) != len(steps):
        raise ValueError(
            f"labels must give one label per valid step ({len(steps)}); got {len(labels)}."
        )
    rows = values.shape[1]
    fig = Figure(figsize=(min(14, 2 + 0.12 * len(steps)), 1.2 + 0.18 * rows), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(
        values.T, aspect="auto", vmin=0, vmax=1, cmap=GATE_CMAP, interpolation="nearest"
    )
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax.set_title(f"{name}, sequence {example}", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("unit", fontsize=8)
    ax.set_yticks(range(rows), [str(u) for u in (units or range(rows))], fontsize=6)
    if labels is not None:
        ax.set_xticks(range(len(steps)), [repr(c)[1:-1] for c in labels], fontsize=6)
    return fig


def _check_text(text: str, values: Any) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.shape[0] != len(text):
        raise ValueError(
            f"values must be one number per character of text ({len(text)}); got shape "
            f"{values.shape}."
        )
    return values


def text_heatmap(text: str, values: Any, *, title: str = "", line_width: int = 80) -> Figure:
    """Characters of ``text`` on coloured cells, one colour per character from ``values``.

    Args:
      text: the input, one character per step.
      values: ``[len(text)]`` gate values in ``[0, 1]`` (e.g. one unit's forget gate).
      title: figure title.
      line_width: characters per line (text also breaks at newlines).

    Example:
      >>> from gatenets.inspect import text_heatmap
      >>> fig = text_heatmap("if x:\\n  y", [0.9, 0.9, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.8])
      >>> "".join(t.get_text() for t in fig.axes[0].texts)
      'if x:↵  y'
    """
    values = _check_text(text, values)
    lines: list[list[tuple[str, float]]] = [[]]
    for char, value in zip(text, values, strict=True):
        if char == "\n":
            lines[-1].append(("\u21b5", value))
            lines.append([])
            continue
        if len(lines[-1]) >= line_width:
            lines.append([])
        lines[-1].append((char, value))
    width = max(1, max(len(line) for line in lines))
    fig = Figure(figsize=(0.12 * width + 0.8, 0.22 * len(lines) + 0.6), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["coolwarm"]
    for row, line in enumerate(lines):
        for column, (char, value) in enumerate(line):
            ax.add_patch(_cell(column, row, cmap(value)))
            ax.text(
                column + 0.5,
                row + 0.5,
                char,
                ha="center",
                va="center",
                fontsize=7,
                family="monospace",
            )
    ax.set_xlim(0, width)
    ax.set_ylim(len(lines), 0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def _cell(column: int, row: int, color: Any) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((column, row), 1, 1, facecolor=color, edgecolor="none")


def text_heatmap_html(text: str, values: Any) -> str:
    """The same colouring as :func:`text_heatmap` as an HTML fragment (inline styles only).

    Example:
      >>> from gatenets.inspect import text_heatmap_html
      >>> text_heatmap_html("a<", [0.0, 1.0]).count("<span")
      2
    """
    values = _check_text(text, values)
    cmap = colormaps["coolwarm"]
    spans = []
    for char, value in zip(text, values, strict=True):
        r, g, b, _ = (int(255 * c) for c in cmap(float(value)))
        shown = "\u21b5<br>" if char == "\n" else html.escape(char).replace(" ", "&nbsp;")
        spans.append(
            f'<span style="background:rgb({r},{g},{b})" title="{value:.3f}">{shown}</span>'
        )
    return '<div class="text-heatmap">' + "".join(spans) + "</div>"


def gradient_plot(profiles: Sequence[GradientProfile], *, title: str = "") -> Figure:
    """``‖∂L/∂h_t‖`` (relative to each model's largest) against ``t`` on a log scale.

    Steps where a gradient underflowed to exactly zero are left out (a gap in the line).

    Example:
      >>> import numpy as np
      >>> from gatenets.inspect import GradientProfile, gradient_plot
      >>> fig = gradient_plot([GradientProfile(np.array([1e-4, 1e-2, 1.0]), "lstm")])
      >>> fig.axes[0].get_lines()[0].get_ydata().tolist()
      [0.0001, 0.01, 1.0]
    """
    if not profiles:
        raise ValueError("profiles is empty: give at least one GradientProfile.")
    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.subplots()
    lowest = 1.0
    for profile in profiles:
        relative = profile.relative
        # A gradient that underflowed to zero has no place on a log axis: leave a gap.
        shown = np.where(relative > 0, relative, np.nan)
        if np.any(relative > 0):
            lowest = min(lowest, float(np.min(relative[relative > 0])))
        ax.semilogy(shown, label=profile.label)
    ax.set_ylim(lowest / 3, 3)
    ax.set_xlabel("step t", fontsize=9)
    ax.set_ylabel("‖∂L/∂h_t‖ / max", fontsize=9)
    ax.set_title(title or "gradient through time", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 110) -> str:
    """Writes ``fig`` as a PNG at ``path`` atomically (temporary file, then rename).

    Example:
      >>> import os, pathlib, tempfile
      >>> from matplotlib.figure import Figure
      >>> from gatenets.inspect import save_figure
      >>> path = save_figure(Figure(), os.path.join(tempfile.mkdtemp(), "empty.png"))
      >>> pathlib.Path(path).read_bytes()[1:4]
      b'PNG'
    """
    path = os.fspath(path)

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=dpi)

    _atomic_write(path, write, ".png.tmp")
    return path
