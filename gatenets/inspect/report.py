"""A self-contained HTML report of a model's gates, in three steps each callable alone:
:func:`collect_report` runs the model (statistics, first trace, ablation), :func:`report_figures`
draws the pictures, :func:`write_report` writes the page; :func:`inspect_model` does all three.

The report is one HTML file with every picture inlined as a ``data:image/png;base64`` URI and
inline styles only: it opens offline in any browser and fetches nothing. It runs no script:
its content-security policy allows none, and every text that comes from the user (title,
notes, gate names) is escaped. The PNGs are also
written beside it. Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure

from gatenets.inspect import plots
from gatenets.inspect._template import Template, content_security_policy
from gatenets.inspect.ablation import AblationResult, ablate
from gatenets.inspect.explorer import (
    attention_weights,
    compare_explorer_data,
    explorer_data,
    write_explorer,
)
from gatenets.inspect.export import _atomic_write
from gatenets.inspect.probe import GradientProfile
from gatenets.inspect.statistics import (
    GateStatistics,
    _progress,
    accumulate,
    finalize,
    gate_statistics,
    iterate_batches,
    run_with_gates,
    split_batch,
    summary_table,
)

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em;
       max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; font-family: monospace; }
img { max-width: 100%; }
.caption { color: #555; font-size: 0.9em; max-width: 60em; }
.text-heatmap { font-family: monospace; font-size: 0.85em; line-height: 1.5; }
"""


_PAGE = Template(
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    '<meta http-equiv="Content-Security-Policy" content="{{POLICY}}">'
    "<title>{{TITLE}}</title><style>{{STYLE}}</style></head><body>{{BODY}}</body></html>\n"
)
_STYLE_ATTRIBUTE = re.compile(r"""\sstyle\s*=\s*(?:"([^"]*)"|'([^']*)')""")


def _page(title: str, body: str) -> str:
    """The report page: ``body`` (trusted HTML) under an escaped ``title``. Its policy runs no
    script and applies only the report's style sheet and the style attributes ``body`` holds
    (the text heatmap's colours), each by its SHA-256."""
    attributes = [html.unescape(a or b) for a, b in _STYLE_ATTRIBUTE.findall(body)]
    policy = content_security_policy(styles=(_STYLE,), style_attributes=attributes)
    return _PAGE.render(
        POLICY=html.escape(policy), TITLE=html.escape(title), STYLE=_STYLE, BODY=body
    )


class ReportFiles(NamedTuple):
    """Paths written by :func:`write_report`: the HTML file and each PNG by figure name, and
    the interactive explorer page when :func:`inspect_model` wrote one."""

    html: str
    images: dict[str, str]
    explorer: str | None = None


class ReportFigure(NamedTuple):
    """A picture for the report: its name (the PNG's file name), figure and caption."""

    name: str
    figure: Figure
    caption: str


def _png_bytes(fig: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _stats_table(stats: Mapping[str, GateStatistics]) -> str:
    first = next(iter(stats.values()))
    head = (
        "<tr><th>gate</th><th>units</th><th>mean</th><th>std</th>"
        f"<th>left-sat. (&lt;{first.left:g})</th><th>right-sat. (&gt;{first.right:g})</th>"
        "<th>median &tau; (steps)</th></tr>"
    )
    rows = []
    for r in summary_table(stats):
        tau = "" if r.median_time_constant is None else f"{r.median_time_constant:.2f}"
        rows.append(
            f"<tr><td>{html.escape(r.gate)}</td><td>{r.units}</td><td>{r.mean:.3f}</td>"
            f"<td>{r.std:.3f}</td><td>{r.left_saturated:.3f}</td>"
            f"<td>{r.right_saturated:.3f}</td><td>{tau}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _ablation_table(results: Sequence[AblationResult], metric: str, value: Any) -> str:
    head = (
        f"<tr><th>gate set to {html.escape(str(value))}</th><th>{html.escape(metric)}</th>"
        "<th>ablated</th><th>change</th></tr>"
    )
    rows = [
        # Four significant digits: an MSE of 0.00091 is not 0.0009.
        f"<tr><td>{html.escape(r.gate)}</td><td>{r.baseline:#.4g}</td><td>{r.ablated:#.4g}</td>"
        f"<td>{r.change:+#.4g}</td></tr>"
        for r in results
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(
    directory: str | os.PathLike,
    *,
    stats: Mapping[str, GateStatistics],
    figures: Sequence[ReportFigure] = (),
    title: str = "gatenets gate report",
    notes: Sequence[str] = (),
    fragments: Mapping[str, str] | None = None,
    ablation: tuple[Sequence[AblationResult], str, Any] | None = None,
    filename: str = "report.html",
    dpi: int = 110,
) -> ReportFiles:
    """Writes ``report.html`` (self-contained) and one PNG per figure into ``directory``.

    Args:
      directory: output directory (created if needed).
      stats: gate statistics for the table.
      figures: pictures with names and captions, in order.
      title: page title.
      notes: paragraphs of plain text shown under the title (escaped).
      fragments: ``{heading: trusted HTML}`` sections such as
        :func:`~gatenets.inspect.plots.text_heatmap_html` output. Their style attributes are
        allowed by the page's policy; scripts and event handlers in them do not run.
      ablation: ``(results, metric name, override value)`` for an ablation table.
      filename: name of the HTML file.
      dpi: resolution of the PNGs.

    Returns:
      :class:`ReportFiles`.

    Example:
      >>> import os, pathlib, tempfile
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import gate_statistics, write_report
      >>> g = GRUGates(np.full((1, 4, 2), 0.05), np.full((1, 4, 2), 0.95))
      >>> stats = gate_statistics(GateTrace({"forward": g}, np.ones((1, 4), bool)))
      >>> files = write_report(tempfile.mkdtemp(), stats=stats)
      >>> os.path.basename(files.html), 'forward/update' in pathlib.Path(files.html).read_text()
      ('report.html', True)
    """
    if not stats:
        raise ValueError("stats is empty: nothing to report.")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    images: dict[str, str] = {}
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f"<p>{html.escape(n)}</p>" for n in notes]
    body += ["<h2>Gate statistics</h2>", _stats_table(stats)]
    body.append(
        '<p class="caption">Per gate, averaged over units: mean value (gate sparsity), '
        "standard deviation over valid steps, fraction of steps saturated on each side, and "
        "for gates that set how much of its past a unit keeps (LSTM and minLSTM forget, GRU "
        "and minGRU update) the median time constant &tau; = &minus;1 / ln(mean share kept "
        "per step), in steps.</p>"
    )
    if ablation is not None:
        results, metric, value = ablation
        body += ["<h2>Gate ablation</h2>", _ablation_table(results, metric, value)]
    for item in figures:
        data = _png_bytes(item.figure, dpi)
        path = os.path.join(directory, f"{item.name}.png")

        def write_png(tmp, data=data):
            with open(tmp, "wb") as f:
                f.write(data)

        _atomic_write(path, write_png, ".png.tmp")
        images[item.name] = path
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        body.append(f"<h2>{html.escape(item.name.replace('_', ' '))}</h2>")
        body.append(f'<img alt="{html.escape(item.name)}" src="{uri}">')
        body.append(f'<p class="caption">{html.escape(item.caption)}</p>')
    for heading, fragment in (fragments or {}).items():
        body += [f"<h2>{html.escape(heading)}</h2>", fragment]
    page = _page(title, "".join(body))
    html_path = os.path.join(directory, filename)

    def write_html(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)

    _atomic_write(html_path, write_html, ".html.tmp")
    return ReportFiles(html_path, images)


def _heatmap_gate(names: Sequence[str]) -> str:
    for wanted in ("forget", "update", "output"):
        for name in names:
            if name.rsplit("/", 1)[-1] == wanted:
                return name
    return names[0]


class ReportData(NamedTuple):
    """What :func:`collect_report` gathers from a model for a report.

    Attributes:
      stats: gate statistics over every batch, by gate name.
      trace: the :class:`~gatenets.GateTrace` of the first batch (for per-step pictures).
      inputs: the first batch's inputs.
      ablation: ``(results, metric name, override value)``, or None without a metric.
      profiles: gradient-through-time profiles, as given.
      attention: the first batch's ``[batch, heads, query, key]`` attention weights, for a
        model that returns them (``return_attention_weights``), else None.
    """

    stats: dict[str, GateStatistics]
    trace: Any
    inputs: np.ndarray
    ablation: tuple[list[AblationResult], str, Any] | None
    profiles: tuple[GradientProfile, ...]
    attention: np.ndarray | None = None


class ReportContent(NamedTuple):
    """What :func:`report_figures` draws: the pictures in order and the HTML sections."""

    figures: list[ReportFigure]
    fragments: dict[str, str]


def collect_report(
    model: Any,
    data: Any,
    *,
    metric_fn: Callable[[Any, Any], Any] | None = None,
    metric_name: str = "metric",
    ablation_value: Any = 0.0,
    ablation_batches: int = 2,
    profiles: Sequence[GradientProfile] = (),
    max_batches: int | None = None,
    progress: bool = True,
    left: float = 0.1,
    right: float = 0.9,
    bins: int = 20,
) -> ReportData:
    """Runs ``model`` over ``data``: streamed statistics, the first batch's trace and, with
    ``metric_fn``, the ablation of each gate over the first ``ablation_batches`` batches.

    Args:
      model: called as ``model(inputs, mask=…, return_gates=True, gate_overrides=…)``.
      data: a batch or an iterable of batches (arrays or ``Batch(inputs, targets, mask)``).
      metric_fn: ``metric_fn(outputs, batch) -> scalar``; adds the ablation.
      metric_name: name of the metric in the ablation table.
      ablation_value: the override for the ablation (0 closes a gate, 1 opens it).
      ablation_batches: batches used for the ablation.
      profiles: gradient-through-time profiles for the gradient picture (kept as given).
      max_batches: stop after this many batches (for endless iterators).
      progress: show a progress bar while collecting.
      left: left-saturation threshold.
      right: right-saturation threshold.
      bins: histogram bins.

    Returns:
      :class:`ReportData`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.inspect.report import collect_report
      >>> gru = gatenets.GRU(2, 3, rngs=nnx.Rngs(0))
      >>> data = collect_report(gru, [jnp.ones((2, 5, 2))] * 3, progress=False)
      >>> data.stats["layer0/forward/reset"].count, data.inputs.shape, data.ablation
      (30, (2, 5, 2), None)
    """
    iterator = iterate_batches(data, max_batches)
    kept = list(itertools.islice(iterator, max(1, ablation_batches)))
    if not kept:
        raise ValueError("data is empty: no batch to inspect.")
    accumulators = None
    first_trace = None
    total = None if max_batches is None else max_batches
    for batch in _progress(itertools.chain(kept, iterator), progress, total, "collecting gates"):
        inputs, mask = split_batch(batch)
        _, trace = run_with_gates(model, inputs, mask)
        if first_trace is None:
            first_trace = trace
        accumulators = accumulate(accumulators, trace, left=left, right=right, bins=bins)
    ablation = None
    if metric_fn is not None:
        results = ablate(model, kept, metric_fn, value=ablation_value)
        ablation = (results, metric_name, ablation_value)
    first_inputs, first_mask = split_batch(kept[0])
    return ReportData(
        stats=finalize(accumulators),
        trace=first_trace,
        inputs=np.asarray(first_inputs),
        ablation=ablation,
        profiles=tuple(profiles),
        attention=_attention(model, first_inputs, first_mask),
    )


MAX_ATTENTION_STEPS = 2048
"""Longest sequence whose attention weights a task model's report computes."""


def _attention(model: Any, inputs: Any, mask: Any) -> np.ndarray | None:
    """The ``[batch, heads, query, key]`` weights the explorer draws: the model's own (a
    gatenets attention layer), else the first block's of a task model whose ``transformer``
    is a :class:`~gatenets.tasks.GatedTransformer` (``gatenets run --model attention``), for
    sequences of at most :data:`MAX_ATTENTION_STEPS` steps."""
    weights = attention_weights(model, inputs, mask)
    transformer = getattr(model, "transformer", None)
    # Weights are a [T, T] array per head: a long sequence's gates stream, its weights do not.
    if weights is not None or transformer is None or np.shape(inputs)[1] > MAX_ATTENTION_STEPS:
        return weights
    x = np.asarray(inputs)
    if getattr(model, "embed", None) is not None:
        x = model.embed(x)
    _, per_block = transformer(x, mask=mask, return_attention_weights=True)
    return np.asarray(per_block[0], np.float64)


def _text_figure(
    text: str, values: np.ndarray, gate: str, units: Sequence[int]
) -> tuple[ReportFigure, str, str]:
    """The text heatmap of the unit among ``units`` whose gate varies most over ``text``:
    the figure, its HTML section heading and the section."""
    unit = units[int(np.argmax(values[:, units].std(axis=0)))]
    shown = slice(0, min(len(text), 480))
    caption = (
        f"Input characters coloured by unit {unit} of {gate} (blue 0, red 1): the unit "
        "whose gate varies most over this text."
    )
    figure = ReportFigure(
        "text_heatmap",
        plots.text_heatmap(text[shown], values[shown, unit], title=f"{gate}, unit {unit}"),
        caption,
    )
    fragment = (
        plots.text_heatmap_html(text[shown], values[shown, unit])
        + f'<p class="caption">{html.escape(caption)}</p>'
    )
    return figure, f"Text coloured by {gate}, unit {unit}", fragment


def report_figures(
    data: ReportData, *, decode: Callable[[Any], str] | None = None
) -> ReportContent:
    """The report's pictures: saturation scatter, histograms, the heatmap of the forget (or
    update, or output) gate over the first sequence with a valid step, the text heatmap when
    ``decode`` is given and the inputs are integer ids, and the gradient picture when
    ``data`` holds profiles.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.inspect.report import collect_report, report_figures
      >>> lstm = gatenets.LSTM(2, 3, rngs=nnx.Rngs(0))
      >>> data = collect_report(lstm, [jnp.ones((2, 5, 2))], progress=False)
      >>> [figure.name for figure in report_figures(data).figures]
      ['saturation', 'histograms', 'heatmap']
    """
    trace = data.trace
    gate = _heatmap_gate(list(data.stats))
    # The first sequence with a valid step (a leading empty sequence has nothing to show).
    example = int(np.argmax(np.asarray(trace.mask).any(axis=1)))
    valid = np.asarray(trace.mask)[example]
    values = np.asarray(trace.flat()[gate])[example][valid].reshape(int(valid.sum()), -1)
    # The units that move most in this sequence show the most in a heatmap.
    units = sorted(np.argsort(-values.std(axis=0))[:16].tolist())
    figures = [
        ReportFigure(
            "saturation",
            plots.saturation_scatter(data.stats),
            "One point per unit: the fraction of steps its gate is below the left threshold "
            "(x) against above the right threshold (y). Points on the diagonal act as "
            "switches; points near the origin are used in their graded range.",
        ),
        ReportFigure(
            "histograms",
            plots.gate_histograms(data.stats),
            "Distribution of each gate's values over all units and valid steps.",
        ),
        ReportFigure(
            "heatmap",
            plots.gate_heatmap(trace, gate, example=example, units=units),
            f"{gate} over sequence {example} of the first batch, for the {len(units)} units "
            "whose gate varies most in it (blue 0, red 1).",
        ),
    ]
    fragments = {}
    if decode is not None and np.issubdtype(data.inputs.dtype, np.integer):
        text = decode(data.inputs[example][valid])
        figure, heading, fragment = _text_figure(text, values, gate, units)
        figures.append(figure)
        fragments[heading] = fragment
    if data.profiles:
        figures.append(
            ReportFigure(
                "gradient_through_time",
                plots.gradient_plot(data.profiles),
                "Norm of the gradient of the loss with respect to the hidden state at step t, "
                "relative to its largest value. A plain sigmoid RNN's gradient vanishes "
                "exponentially with distance from the loss; the LSTM's cell state carries it "
                "back through its forget gates.",
            )
        )
    return ReportContent(figures, fragments)


def _compared_page(collected: ReportData, compare, options) -> dict[str, Any]:
    """The explorer data of the first batch for ``collected``'s model and the second model
    of ``compare``, side by side (statistics of that batch for both)."""
    second, first_label, second_label = compare
    # The states given are the first model's: the comparison shows gates only.
    options = {k: v for k, v in options.items() if k != "states"}
    trace = collected.trace
    _, second_trace = run_with_gates(second, collected.inputs, trace.mask)
    thresholds = next(iter(collected.stats.values()))
    pages = [
        explorer_data(
            t,
            gate_statistics(t, left=thresholds.left, right=thresholds.right),
            collected.inputs,
            **options,
        )
        for t in (trace, second_trace)
    ]
    return compare_explorer_data(pages[0], pages[1], labels=(first_label, second_label))


def inspect_model(
    model: Any,
    data: Any,
    directory: str | os.PathLike,
    *,
    decode: Callable[[Any], str] | None = None,
    title: str = "gatenets gate report",
    notes: Sequence[str] = (),
    explorer: bool = True,
    explorer_options: Mapping[str, Any] | None = None,
    compare: tuple[Any, str, str] | None = None,
    **collect_options: Any,
) -> ReportFiles:
    """Runs a model over data and writes the full gate report and the interactive explorer.

    Statistics stream over every batch (running sums; a progress bar shows the collection);
    the first batch also gives the per-step pictures (heatmap, text heatmap) and, with
    ``metric_fn``, the first ``ablation_batches`` batches measure the ablation of each gate.
    It is :func:`collect_report`, then :func:`report_figures`, then :func:`write_report`;
    call them yourself to add or change a picture.

    Args:
      model: called as ``model(inputs, mask=…, return_gates=True, gate_overrides=…)``.
      data: a batch or an iterable of batches (arrays or ``Batch(inputs, targets, mask)``).
      directory: output directory.
      decode: maps a sequence of input ids to text; adds the character heatmap.
      title: report title.
      notes: paragraphs under the title.
      explorer: also write ``explorer.html``, the interactive page of
        :mod:`gatenets.inspect.explorer` (first batch's sequences, linked from the report).
      explorer_options: more arguments of
        :func:`~gatenets.inspect.explorer.explorer_data` (``examples``, ``max_steps``,
        ``source``, ``checkpoint``, ``tracks``, ``labels``).
      compare: ``(second model, label of model, label of second)``: the explorer shows both
        on the first batch, side by side and as differences
        (:func:`~gatenets.inspect.explorer.compare_explorer_data`); its scatter and tables
        then count that batch only, for both.
      **collect_options: passed to :func:`collect_report`: ``metric_fn`` (adds the ablation
        table), ``metric_name``, ``ablation_value``, ``ablation_batches``, ``profiles`` (adds
        the gradient picture), ``max_batches``, ``progress``, ``left``, ``right``, ``bins``.

    Returns:
      :class:`ReportFiles`.

    Example:
      >>> import os, tempfile
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> lstm = gatenets.LSTM(2, 4, rngs=nnx.Rngs(0))
      >>> batches = [jnp.ones((2, 6, 2)), jnp.zeros((2, 6, 2))]
      >>> files = gatenets.inspect.inspect_model(lstm, batches, tempfile.mkdtemp(), progress=False)
      >>> sorted(files.images), os.path.basename(files.explorer)
      (['heatmap', 'histograms', 'saturation'], 'explorer.html')
    """
    collected = collect_report(model, data, **collect_options)
    content = report_figures(collected, decode=decode)
    fragments = dict(content.fragments)
    explorer_path = None
    if explorer:
        options = dict(
            decode=decode,
            title=title.replace("report", "explorer"),
            notes=notes,
            **(explorer_options or {}),
        )
        if compare is None:
            page = explorer_data(
                collected.trace,
                collected.stats,
                collected.inputs,
                ablation=collected.ablation,
                attention=collected.attention,
                **options,
            )
        else:
            page = _compared_page(collected, compare, options)
        explorer_path = write_explorer(directory, page)
        fragments = {
            # Named, not linked: the report references nothing outside itself.
            "Interactive explorer": "<p>Open <code>explorer.html</code>, beside this page, to "
            "choose a gate, click units and hover the heatmap (offline, like this page).</p>",
            **fragments,
        }
    files = write_report(
        directory,
        stats=collected.stats,
        figures=content.figures,
        title=title,
        notes=notes,
        fragments=fragments,
        ablation=collected.ablation,
    )
    return files._replace(explorer=explorer_path)
