"""The interactive gate explorer: one self-contained HTML page to click through a model's gates.

:func:`explorer_data` gathers what the page shows from a :class:`~gatenets.GateTrace` and its
statistics; :func:`write_explorer` writes the page. The page holds its data as inline JSON and
its script (``explorer.js``, a small vanilla script shipped inside the package) inline: it
opens offline in any browser and fetches nothing. The page is built by a
:class:`~gatenets.inspect._template.Template` that places each value once (a title holding
``{{DATA}}`` stays that text), its data is JSON with ``<``, ``>`` and ``&`` escaped, and its
content-security policy runs only the page's own script, named by its SHA-256: text from a
title, a note, a run directory or the input cannot run as script.

On the page a user chooses a layer, direction and gate; clicks units in the saturation scatter
(coincident points spread apart; a dragged box chooses many; the wheel zooms) or picks them
from a sortable list, to see their gate over the input, drawn under the characters for text
and as lines over the input for numbers; hovers the units × steps heatmap (a tooltip at the
cursor reads value, step and input); searches, as LSTMVis does, for the places where the units
on over a chosen range are on together, and matches units against annotation tracks; sees
attention weights per head for attention layers, the ablation table, and with
:func:`compare_explorer_data` two models side by side. The view lives in the URL fragment; the
chosen values export as CSV or JSON. Everything is drawn on canvases no wider than the page.

Gate values are stored as 16-bit integers ``round(65535 · g)`` (an error of at most
``1 / 131070 ≈ 7.6e-6``), base64-encoded, time-major.
"""

from __future__ import annotations

import base64
import html
import inspect as _pyinspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

from gatenets.gates import GateTrace
from gatenets.inspect._template import Template, content_security_policy, script_json
from gatenets.inspect.export import _atomic_write
from gatenets.inspect.statistics import GateStatistics

QUANTUM = 1.0 / 65535.0
"""The spacing of stored gate values: a value on the page differs from the trace by at most
half of it."""


def _encode(values: np.ndarray) -> str:
    """``values`` in [0, 1] as base64 of little-endian uint16 ``round(65535 · v)``."""
    quantized = np.round(np.clip(np.asarray(values, np.float64), 0.0, 1.0) * 65535.0)
    return base64.b64encode(quantized.astype("<u2").tobytes()).decode("ascii")


def _floats(values: Any, digits: int = 6) -> list[float | None]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in np.ravel(values)]


def attention_weights(model: Any, inputs: Any, mask: Any = None) -> np.ndarray | None:
    """``[batch, heads, query, key]`` attention weights of a model that can return them
    (``return_attention_weights=True``, as gatenets' attention layers), else None.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.inspect.explorer import attention_weights
      >>> layer = gatenets.GatedAttention(4, 2, rngs=nnx.Rngs(0))
      >>> attention_weights(layer, jnp.ones((1, 3, 4))).shape
      (1, 2, 3, 3)
      >>> attention_weights(gatenets.GRU(2, 3, rngs=nnx.Rngs(0)), jnp.ones((1, 3, 2))) is None
      True
    """
    try:
        parameters = _pyinspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return None
    if "return_attention_weights" not in parameters:
        return None
    kwargs = {"return_attention_weights": True}
    if mask is not None:
        kwargs["mask"] = mask
    result = model(inputs, **kwargs)
    return np.asarray(result[-1], np.float64)


def _tokens(inputs: np.ndarray, decode: Callable[[Any], str] | None) -> list[str] | None:
    """One string per step of one sequence's integer inputs (``decode`` of each id, or the id
    itself), or None for float inputs."""
    if not np.issubdtype(inputs.dtype, np.integer) or inputs.ndim != 1:
        return None
    if decode is None:
        return [str(int(i)) for i in inputs]
    return [decode(inputs[t : t + 1]) for t in range(inputs.shape[0])]


def _numeric_inputs(inputs: np.ndarray, max_features: int) -> list[list[float]]:
    """Up to ``max_features`` input features of one sequence, ``[feature][step]``."""
    if np.issubdtype(inputs.dtype, np.integer):
        return []
    flat = np.asarray(inputs, np.float64).reshape(inputs.shape[0], -1)
    return [_floats(flat[:, k], 5) for k in range(min(max_features, flat.shape[1]))]


def _check_examples(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")


def _check_arrays(flat: Mapping[str, np.ndarray], stats, mask, inputs, attention) -> Any:
    """Raises naming the first argument that does not fit the trace; returns ``attention``
    as float64 (or None)."""
    if inputs.shape[:2] != mask.shape:
        raise ValueError(
            f"inputs must be [batch, time, …] with the trace's batch and time {mask.shape}; "
            f"got shape {inputs.shape}."
        )
    missing = [name for name in flat if name not in stats]
    if missing:
        raise ValueError(
            f"stats has no entry for the trace's gates {missing}; pass the statistics of the "
            "same model."
        )
    if attention is None:
        return None
    attention = np.asarray(attention, np.float64)
    batch, time = mask.shape
    if attention.ndim != 4 or attention.shape[0] != batch or attention.shape[2:] != (time, time):
        raise ValueError(
            f"attention must be [batch, heads, query, key] = ({batch}, heads, {time}, "
            f"{time}); got shape {attention.shape}."
        )
    return attention


def _check_tracks(tracks: Mapping[str, Any] | None, mask: np.ndarray) -> dict[str, np.ndarray]:
    """``tracks`` as float64 ``[batch, time]`` arrays, or a ValueError naming the bad one."""
    checked = {}
    for name, track in (tracks or {}).items():
        array = np.asarray(track, np.float64)
        if array.shape != mask.shape:
            raise ValueError(
                f"tracks[{name!r}] must be [batch, time] = {mask.shape} like the trace's mask; "
                f"got shape {array.shape}."
            )
        checked[str(name)] = array
    return checked


def _state_entries(
    states: Mapping[str, Any] | None, mask: np.ndarray
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Page entries for per-step states (``{name: [batch, time, units…]}``, any real values)
    and their values mapped to [0, 1]: a state is shown over ``[-m, m]``, ``m`` the larger of
    1 and its largest magnitude at valid steps; "saturated" means beyond ``±0.9 m`` (a tanh
    state such as an LSTM's or GRU's output has ``m = 1``)."""
    entries, mapped = [], {}
    for name, state in (states or {}).items():
        array = np.asarray(state, np.float64)
        if array.shape[:2] != mask.shape or array.ndim < 3:
            raise ValueError(
                f"states[{name!r}] must be [batch, time, units…] with the trace's batch and "
                f"time {mask.shape}; got shape {array.shape}."
            )
        flat = array.reshape(*mask.shape, -1)
        valid = flat[mask]
        bound = max(1.0, float(np.max(np.abs(valid), initial=0.0)))
        path, _, gate = str(name).rpartition("/")
        entries.append(
            {
                "name": str(name),
                "path": path,
                "gate": gate,
                "units": flat.shape[-1],
                "unit_shape": list(array.shape[2:]),
                "mean": _floats((valid.mean(axis=0) / bound + 1.0) / 2.0),
                "left_saturated": _floats((valid <= -0.9 * bound).mean(axis=0)),
                "right_saturated": _floats((valid >= 0.9 * bound).mean(axis=0)),
                "time_constant": None,
                "kind": "state",
                "range": [-bound, bound],
            }
        )
        mapped[str(name)] = (flat / bound + 1.0) / 2.0
    return entries, mapped


def _gate_entry(name: str, s: GateStatistics) -> dict[str, Any]:
    path, _, gate = name.rpartition("/")
    return {
        "name": name,
        "path": path,
        "gate": gate,
        "units": s.units,
        "unit_shape": list(s.unit_shape),
        "mean": _floats(s.mean),
        "left_saturated": _floats(s.left_saturated),
        "right_saturated": _floats(s.right_saturated),
        "time_constant": None if s.time_constant is None else _floats(s.time_constant, 4),
    }


def _example_entry(b, steps, flat, inputs, decode, labels) -> dict[str, Any]:
    entry = {
        "index": b,
        "steps": [int(t) for t in steps],
        "tokens": _tokens(inputs[b][steps], decode),
        "inputs": _numeric_inputs(inputs[b][steps], 4),
        "values": {
            name: _encode(value[b][steps].reshape(len(steps), -1)) for name, value in flat.items()
        },
    }
    if labels is not None:
        entry["label"] = str(labels[b])
    return entry


def _finite(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with NaN and infinite floats as None (JSON has neither)."""
    return {
        str(k): None if isinstance(v, float) and not math.isfinite(v) else v
        for k, v in values.items()
    }


def _ablation_entry(ablation: tuple[Sequence[Any], str, Any] | None) -> dict[str, Any] | None:
    if ablation is None:
        return None
    results, metric, value = ablation
    rows = []
    for r in results:
        # A NaN metric (a gate whose ablation diverges) is null in JSON.
        baseline, ablated, change = _floats([r.baseline, r.ablated, r.ablated - r.baseline], 12)
        rows.append({"gate": r.gate, "baseline": baseline, "ablated": ablated, "change": change})
    return {"metric": str(metric), "value": str(value), "rows": rows}


def explorer_data(
    trace: GateTrace,
    stats: Mapping[str, GateStatistics],
    inputs: Any,
    *,
    decode: Callable[[Any], str] | None = None,
    ablation: tuple[Sequence[Any], str, Any] | None = None,
    attention: Any = None,
    examples: int = 4,
    max_steps: int = 1000,
    title: str = "gatenets gate explorer",
    notes: Sequence[str] = (),
    source: str | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    tracks: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    states: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the explorer page shows, as a JSON-ready dict.

    Args:
      trace: gates of one batch (``[batch, time, …]`` each) with its mask; the page shows the
        valid steps of its first ``examples`` sequences that have any.
      stats: per-unit statistics (for the scatter and the unit list), by the trace's names.
      inputs: the batch's inputs, ``[batch, time]`` integer ids or ``[batch, time, …]`` numbers.
      decode: maps an array of ids to text; each step's token is ``decode`` of its id.
      ablation: ``(results, metric name, override value)`` as
        :attr:`~gatenets.inspect.ReportData.ablation`.
      attention: ``[batch, heads, query, key]`` attention weights of the same batch, or None.
      examples: how many sequences to include (the pattern search looks through all of them).
      max_steps: keep at most this many valid steps of each sequence.
      title: the page's title.
      notes: paragraphs under the title.
      source: where the sequences come from, said on the page (``"my.txt, characters 0–4095
        in 16 sequences of 256"``).
      checkpoint: what was inspected, said on the page: ``{"run", "step", "validation",
        "metric"}`` (any may be missing).
      tracks: annotation tracks for the pattern search, ``{name: [batch, time] numbers}``
        (NaN where unknown); the page adds its own for text (space, inside quotes, bracket
        depth, indentation, line position).
      labels: one short label per sequence of the batch, shown in the sequence menu.
      states: per-step states to show beside the gates, ``{name: [batch, time, units]}``
        (``"output/hidden state"``); any real values, drawn over ``[-m, m]`` (see
        :func:`_state_entries`).

    Returns:
      ``{"title", "notes", "left", "right", "gates": [...], "examples": [...], "ablation",
      "attention", "source", "checkpoint", "tracks"}``; see :func:`write_explorer`.

    Example:
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import gate_statistics
      >>> from gatenets.inspect.explorer import QUANTUM, _encode, explorer_data
      >>> g = GRUGates(np.full((2, 3, 4), 0.25), np.full((2, 3, 4), 0.75))
      >>> trace = GateTrace({"forward": g}, np.array([[1, 1, 1], [1, 1, 0]], bool))
      >>> data = explorer_data(trace, gate_statistics(trace), np.zeros((2, 3), np.int32))
      >>> [g["name"] for g in data["gates"]], [e["steps"] for e in data["examples"]]
      (['forward/reset', 'forward/update'], [[0, 1, 2], [0, 1]])
      >>> data["examples"][1]["tokens"]
      ['0', '0']
    """
    flat = {name: np.asarray(value) for name, value in trace.items()}
    mask = np.asarray(trace.mask, bool)
    inputs = np.asarray(inputs)
    _check_examples("examples", examples)
    _check_examples("max_steps", max_steps)
    attention = _check_arrays(flat, stats, mask, inputs, attention)
    tracks = _check_tracks(tracks, mask)
    state_entries, state_values = _state_entries(states, mask)
    if labels is not None and len(labels) != mask.shape[0]:
        raise ValueError(f"labels must have one entry per sequence ({mask.shape[0]}); got "
                         f"{len(labels)}.")  # fmt: skip
    shown = [int(b) for b in np.flatnonzero(mask.any(axis=1))[:examples]]
    if not shown:
        raise ValueError("trace.mask is False everywhere: no sequence to show.")
    steps = {b: np.flatnonzero(mask[b])[:max_steps] for b in shown}
    first = next(iter(stats.values()))
    return {
        "title": title,
        "notes": list(notes),
        "left": first.left,
        "right": first.right,
        "gates": [_gate_entry(name, stats[name]) for name in flat] + state_entries,
        "examples": [
            _example_entry(b, steps[b], {**flat, **state_values}, inputs, decode, labels)
            for b in shown
        ],
        "ablation": _ablation_entry(ablation),
        "attention": None
        if attention is None
        else {
            "heads": int(attention.shape[1]),
            "examples": [_encode(attention[b][:, steps[b]][:, :, steps[b]]) for b in shown],
        },
        "source": None if source is None else str(source),
        "checkpoint": None if checkpoint is None else _finite(checkpoint),
        "tracks": {name: [_floats(t[b][steps[b]]) for b in shown] for name, t in tracks.items()}
        or None,
    }


def _decode(text: str) -> np.ndarray:
    """Inverse of :func:`_encode`: the stored values as float64."""
    return np.frombuffer(base64.b64decode(text), "<u2").astype(np.float64) / 65535.0


def _label(text: str) -> str:
    # A "/" in a label would split it into layers on the page.
    return str(text).replace("/", "\u2215")


def _saturation_rows(first, second, labels) -> list[dict[str, Any]]:
    """Per gate name of either page, each page's mean, left and right saturation (averaged
    over units), or None where a page has no such gate."""
    by_name = [{g["name"]: g for g in data["gates"]} for data in (first, second)]
    names = list(by_name[0]) + [n for n in by_name[1] if n not in by_name[0]]
    rows = []
    for name in names:
        row: dict[str, Any] = {"gate": name}
        for label, gates in zip(labels, by_name, strict=True):
            g = gates.get(name)
            for field in ("mean", "left_saturated", "right_saturated"):
                values = [v for v in g[field] if v is not None] if g else []
                row[f"{label}/{field}"] = round(float(np.mean(values)), 6) if values else None
        rows.append(row)
    return rows


def _difference_gate(name, a, b, labels) -> dict[str, Any]:
    """The page entry of ``b - a`` for gate ``name``: its scatter places units where ``b``
    has them, coloured by the difference of the means mapped from [-1, 1] to [0, 1]."""
    mean = [
        None if x is None or y is None else round((y - x + 1.0) / 2.0, 6)
        for x, y in zip(a["mean"], b["mean"], strict=True)
    ]
    path = f"{labels[1]} \u2212 {labels[0]}/{b['path']}" if b["path"] else labels[1]
    return {**b, "name": f"{path}/{b['gate']}", "path": path, "mean": mean, "difference": True,
            "time_constant": None}  # fmt: skip


def compare_explorer_data(
    first: Mapping[str, Any], second: Mapping[str, Any], *, labels: Sequence[str] = ("A", "B")
) -> dict[str, Any]:
    """One page of two :func:`explorer_data` results on the same sequences (two checkpoints
    of a run, or two runs on the same text): every gate of each under its label
    (``"step 200/layer0/forward/forget"``), and for each gate both have with the same units,
    the difference ``second − first`` (stored as ``(d + 1) / 2``; the page shows ``d`` in
    [−1, 1]), and a table of each gate's saturation in both.

    Raises:
      ValueError: when the two do not show the same sequences (steps and tokens).

    Example:
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import gate_statistics
      >>> from gatenets.inspect.explorer import compare_explorer_data, explorer_data
      >>> def page(value):
      ...     g = GRUGates(np.full((1, 2, 3), value), np.full((1, 2, 3), value))
      ...     trace = GateTrace({"forward": g}, np.ones((1, 2), bool))
      ...     return explorer_data(trace, gate_statistics(trace), np.ones((1, 2, 1)))
      >>> both = compare_explorer_data(page(0.25), page(0.75), labels=("step 1", "step 2"))
      >>> [g["name"] for g in both["gates"]][-2:]
      ['step 2 − step 1/forward/reset', 'step 2 − step 1/forward/update']
    """
    labels = [_label(x) for x in labels]
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ValueError(f"labels must be two different names; got {labels}.")
    for a, b in zip(first["examples"], second["examples"], strict=False):
        if a["steps"] != b["steps"] or a["tokens"] != b["tokens"]:
            raise ValueError(
                f"first and second must show the same sequences; sequence {a['index']} has "
                f"steps or tokens that differ."
            )
    if len(first["examples"]) != len(second["examples"]):
        raise ValueError("first and second must show the same number of sequences.")
    gates, examples = [], [dict(e, values={}) for e in first["examples"]]
    for label, data in zip(labels, (first, second), strict=True):
        for g in data["gates"]:
            path = f"{label}/{g['path']}" if g["path"] else label
            gates.append({**g, "name": f"{path}/{g['gate']}", "path": path})
            for k, e in enumerate(data["examples"]):
                examples[k]["values"][gates[-1]["name"]] = e["values"][g["name"]]
    second_gates = {g["name"]: g for g in second["gates"]}
    for a in first["gates"]:
        b = second_gates.get(a["name"])
        if b is None or b["units"] != a["units"]:
            continue
        entry = _difference_gate(a["name"], a, b, labels)
        gates.append(entry)
        for k in range(len(examples)):
            d = _decode(second["examples"][k]["values"][b["name"]])
            d = d - _decode(first["examples"][k]["values"][a["name"]])
            examples[k]["values"][entry["name"]] = _encode((d + 1.0) / 2.0)
    rows = _saturation_rows(first, second, labels)
    return {**first, "gates": gates, "examples": examples, "attention": None,
            "ablation": first.get("ablation"),
            "comparison": {"labels": labels, "rows": rows}}  # fmt: skip


def _resource(name: str) -> str:
    return resources.files("gatenets.inspect").joinpath(name).read_text(encoding="utf-8")


def _page_template() -> Template:
    return Template(_resource("explorer.html"))


def explorer_page(data: Mapping[str, Any]) -> str:
    """The explorer's HTML for :func:`explorer_data` output: template, data and script in one
    string.

    Example:
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import gate_statistics
      >>> from gatenets.inspect.explorer import explorer_data, explorer_page
      >>> g = GRUGates(np.full((1, 2, 3), 0.5), np.full((1, 2, 3), 0.5))
      >>> trace = GateTrace({"forward": g}, np.ones((1, 2), bool))
      >>> page = explorer_page(explorer_data(trace, gate_statistics(trace), np.ones((1, 2, 1))))
      >>> 'id="gatenets-data"' in page, "http" in page.replace("http-equiv", "")
      (True, False)
    """
    script = _resource("explorer.js")
    style = _resource("explorer.css")
    # The page's own script and style are placed raw: they must not end their element.
    for name, text in (("explorer.js", script), ("explorer.css", style)):
        if any(mark in text.lower() for mark in ("</script", "</style", "<!--")):
            raise RuntimeError(f"{name} holds a tag that would end its element; escape it there.")
    title = html.escape(str(data.get("title", "gatenets gate explorer")))
    return _page_template().render(
        POLICY=html.escape(content_security_policy(scripts=(script,), styles=(style,))),
        TITLE=title,
        STYLE=style,
        NOTES="".join(f'<p class="note">{html.escape(str(n))}</p>' for n in data.get("notes", ())),
        DATA=script_json(data),
        SCRIPT=script,
    )


def write_explorer(
    directory: str | os.PathLike, data: Mapping[str, Any], *, filename: str = "explorer.html"
) -> str:
    """Writes the explorer page for :func:`explorer_data` output into ``directory``
    (atomically) and returns its path.

    Example:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import gate_statistics
      >>> from gatenets.inspect.explorer import explorer_data, write_explorer
      >>> g = GRUGates(np.full((1, 2, 3), 0.5), np.full((1, 2, 3), 0.5))
      >>> trace = GateTrace({"forward": g}, np.ones((1, 2), bool))
      >>> data = explorer_data(trace, gate_statistics(trace), np.ones((1, 2, 1)))
      >>> os.path.basename(write_explorer(tempfile.mkdtemp(), data))
      'explorer.html'
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    page = explorer_page(data)
    path = os.path.join(directory, filename)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as stream:
            stream.write(page)

    _atomic_write(path, write, ".html.tmp")
    return path
