// gatenets gate explorer: one page, no network, no library. The data is the JSON in
// <script id="gatenets-data">; gate values are base64 little-endian uint16, value = q / 65535,
// time-major ([steps, units]). Every picture is a canvas, so 512 units x 10,000 steps stay fast.
(function () {
  "use strict";

  const STARTED = performance.now();
  const DATA = JSON.parse(document.getElementById("gatenets-data").textContent);
  // Milliseconds since the script started, at each stage of loading (for benchmarks).
  const TIMINGS = { parsed: performance.now() - STARTED };
  const mark = (name) => { TIMINGS[name] = performance.now() - STARTED; };
  const $ = (id) => document.getElementById(id);
  const DPR = window.devicePixelRatio || 1;
  const UNIT_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const unitColor = (k) => UNIT_COLORS[k % UNIT_COLORS.length];

  // ---------------------------------------------------------------------------------------
  // Data.

  function decode(b64) {
    const bin = atob(b64);
    const out = new Float32Array(bin.length / 2);
    for (let i = 0; i < out.length; i++) {
      out[i] = (bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)) / 65535;
    }
    return out;
  }

  const cache = new Map();
  function values(example, gate) {
    const key = example + "|" + gate;
    if (!cache.has(key)) cache.set(key, decode(DATA.examples[example].values[gate]));
    return cache.get(key);
  }

  const GATES = DATA.gates.map((g, index) => {
    const parts = g.path ? g.path.split("/") : [];
    const last = parts.length ? parts[parts.length - 1] : "";
    const direction = last === "forward" || last === "backward" ? last : "(one)";
    const layerParts = direction === "(one)" ? parts : parts.slice(0, -1);
    return Object.assign({}, g, {
      index: index,
      layer: layerParts.length ? layerParts.join("/") : "(model)",
      direction: direction,
    });
  });

  const state = {
    gate: 0, example: 0, units: [], head: 0, sort: "unit", zoom: null, range: null,
    threshold: 0.5, track: "", matches: [],
  };

  function gate() { return GATES[state.gate]; }
  function example() { return DATA.examples[state.example]; }

  function unitLabel(g, unit) {
    const shape = g.unit_shape;
    if (shape.length === 2) {
      return "unit " + unit + " (head " + Math.floor(unit / shape[1]) + ", dim " +
        (unit % shape[1]) + ")";
    }
    if (shape.length === 1 && g.path === "attention") return "unit " + unit + " (head " + unit + ")";
    return "unit " + unit;
  }

  function shownToken(token) {
    if (token === "\n") return "\u21b5";
    if (token === "\t") return "\u2192";
    if (token === " ") return "\u00b7";
    return token;
  }

  function quoted(token) { return token === null ? "" : " \u00b7 input " + JSON.stringify(token); }

  function fmt(v) { return v === null ? "nan" : v.toFixed(4); }
  // A difference gate stores (d + 1) / 2 for d = second - first in [-1, 1].
  function shown(g, v) {
    // A state stores (x - lo) / (hi - lo) for x in its range [lo, hi].
    if (g.kind === "state") return fmt(g.range[0] + v * (g.range[1] - g.range[0]));
    if (!g.difference) return fmt(v);
    const d = 2 * v - 1;
    return (d >= 0 ? "+" : "") + d.toFixed(4);
  }
  // Four significant digits: a metric of 0.00091 is not 0.0009.
  function sig(v) { return v === null ? "nan" : v.toPrecision(4); }
  // JSON has no infinity: a unit that never forgets has a null time constant.
  function tau(v) { return v === null ? "\u221e" : v.toFixed(2); }

  // matplotlib's coolwarm at nine points, as the report's pictures: blue 0, grey 0.5, red 1.
  const STOPS = [[59, 76, 192], [98, 130, 234], [141, 176, 254], [185, 208, 249],
    [221, 220, 220], [245, 196, 172], [244, 152, 122], [221, 95, 75], [180, 4, 38]];
  function rgb(v) {
    const t = Math.min(1, Math.max(0, v)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(t));
    const f = t - i;
    const a = STOPS[i], b = STOPS[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function css(v) { const c = rgb(v); return "rgb(" + (c[0] | 0) + "," + (c[1] | 0) + "," + (c[2] | 0) + ")"; }

  function sizeCanvas(canvas, width, height) {
    canvas.width = Math.round(width * DPR);
    canvas.height = Math.round(height * DPR);
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(DPR, 0, 0, DPR, 0, 0);
    return ctx;
  }

  function localPoint(canvas, event) {
    const rect = canvas.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  // The width a picture may take without widening the page.
  function available(id) { return Math.max(200, $(id).clientWidth - 4); }

  // ---------------------------------------------------------------------------------------
  // Read-outs: a line under each picture and a tooltip at the cursor. Anything that changes
  // what a picture shows clears them, so no read-out describes a picture no longer drawn.

  const READOUTS = ["scatter-readout", "timeline-readout", "heatmap-readout", "attention-readout"];

  function readout(id, text, event) {
    $(id).textContent = text || "\u00a0";
    const tip = $("tooltip");
    if (!text || !event) { tip.hidden = true; return; }
    tip.textContent = text;
    tip.hidden = false;
    const margin = 14, w = tip.offsetWidth, h = tip.offsetHeight;
    let x = event.clientX + margin, y = event.clientY + margin;
    if (x + w > window.innerWidth - 4) x = Math.max(4, event.clientX - margin - w);
    if (y + h > window.innerHeight - 4) y = Math.max(4, event.clientY - margin - h);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  function clearReadouts() {
    for (const id of READOUTS) $(id).textContent = "\u00a0";
    $("tooltip").hidden = true;
  }

  // ---------------------------------------------------------------------------------------
  // Controls: layer, direction, gate, example, units.

  function fillSelect(select, options, chosen) {
    select.innerHTML = "";
    for (const value of options) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      select.appendChild(option);
    }
    select.value = options.includes(chosen) ? chosen : options[0];
  }

  function unique(list) { return list.filter((v, i) => list.indexOf(v) === i); }

  function syncControls() {
    const g = gate();
    fillSelect($("layer"), unique(GATES.map((x) => x.layer)), g.layer);
    fillSelect($("direction"), unique(GATES.filter((x) => x.layer === g.layer).map((x) => x.direction)), g.direction);
    fillSelect($("gate"), unique(GATES.filter((x) => x.layer === g.layer && x.direction === g.direction).map((x) => x.gate)), g.gate);
    $("example").value = String(state.example);
  }

  function chooseFromControls(changed) {
    const layer = $("layer").value;
    let direction = $("direction").value;
    let name = $("gate").value;
    let match = GATES.filter((x) => x.layer === layer);
    if (changed === "layer" || !match.some((x) => x.direction === direction)) {
      const current = gate();
      direction = match.some((x) => x.direction === current.direction) ? current.direction : match[0].direction;
    }
    match = match.filter((x) => x.direction === direction);
    if (!match.some((x) => x.gate === name)) {
      const current = gate();
      name = match.some((x) => x.gate === current.gate) ? current.gate : match[0].gate;
    }
    selectGate(match.find((x) => x.gate === name).name);
  }

  // Per unit, the variance of its gate over the shown sequence.
  function spreads() {
    const g = gate();
    const v = values(state.example, g.name);
    const steps = v.length / g.units;
    const out = new Float64Array(g.units);
    for (let u = 0; u < g.units; u++) {
      let s = 0, s2 = 0;
      for (let t = 0; t < steps; t++) { const x = v[t * g.units + u]; s += x; s2 += x * x; }
      out[u] = steps ? s2 / steps - (s / steps) * (s / steps) : 0;
    }
    return out;
  }

  // The units in the list's order: by index, or by a statistic, largest first.
  function sortedUnits() {
    const g = gate();
    const units = Array.from({ length: g.units }, (_, u) => u);
    if (state.sort === "unit") return units;
    let key;
    if (state.sort === "mean") key = g.mean;
    else if (state.sort === "left") key = g.left_saturated;
    else if (state.sort === "right") key = g.right_saturated;
    else if (state.sort === "tau") key = g.time_constant ? g.time_constant.map((x) => (x === null ? Infinity : x)) : g.mean.map(() => 0);
    else key = spreads();
    return units.sort((a, b) => (key[b] === key[a] ? a - b : (key[b] > key[a] ? 1 : -1)));
  }

  function fillUnitList() {
    const g = gate();
    const list = $("unit-list");
    list.innerHTML = "";
    for (const u of sortedUnits()) {
      const option = document.createElement("option");
      option.value = String(u);
      option.textContent = unitLabel(g, u) + (g.difference || g.kind === "state" ? "  mean " + shown(g, g.mean[u]) : "  mean " + g.mean[u].toFixed(3)) + ", left " +
        g.left_saturated[u].toFixed(3) + ", right " + g.right_saturated[u].toFixed(3) +
        (g.time_constant ? ", \u03c4 " + tau(g.time_constant[u]) : "");
      list.appendChild(option);
    }
    syncUnitList();
  }

  function syncUnitList() {
    const chosen = new Set(state.units);
    for (const option of $("unit-list").options) option.selected = chosen.has(Number(option.value));
    $("selected-units").textContent = state.units.length
      ? "showing " + state.units.map((u) => unitLabel(gate(), u)).join(", ")
      : "no unit chosen: click a point in the scatter or pick from the list";
  }

  // The units whose gate varies most over the shown sequence: a useful first view.
  function busiestUnits(count) {
    const spread = Array.from(spreads(), (s, u) => [s, u]);
    spread.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    return spread.slice(0, count).map((p) => p[1]).sort((a, b) => a - b);
  }

  function selectGate(name, units) {
    const index = GATES.findIndex((g) => g.name === name);
    if (index < 0) throw new Error("unknown gate " + name);
    state.gate = index;
    state.zoom = null;
    state.units = [];
    layoutScatter();
    state.units = units ? validUnits(units) : busiestUnits(Math.min(3, gate().units));
    mark("units");
    state.matches = [];
    syncControls();
    fillUnitList();
    clearReadouts();
    mark("lists");
    drawAll();
  }

  function selectExample(k) {
    state.example = Math.max(0, Math.min(DATA.examples.length - 1, k));
    state.range = null;
    syncControls();
    if (state.sort === "spread") fillUnitList();
    clearReadouts();
    drawAll();
  }

  function validUnits(units) {
    const g = gate();
    return unique(units.map(Number).filter((u) => Number.isInteger(u) && u >= 0 && u < g.units));
  }

  function selectUnits(units) {
    state.units = validUnits(units);
    syncUnitList();
    clearReadouts();
    drawScatter();
    drawTimeline();
    drawHeatmap();
    drawCorrelations();
    saveView();
  }

  function toggleUnit(unit, add) {
    if (!add) return selectUnits([unit]);
    if (state.units.includes(unit)) return selectUnits(state.units.filter((u) => u !== unit));
    return selectUnits(state.units.concat([unit]));
  }

  // ---------------------------------------------------------------------------------------
  // The view in the URL fragment: gate, sequence, units, range, sort, track, threshold.

  function saveView() {
    const view = new URLSearchParams();
    view.set("gate", gate().name);
    view.set("example", String(state.example));
    view.set("units", state.units.join(","));
    if (state.range) view.set("range", state.range.join("-"));
    if (state.sort !== "unit") view.set("sort", state.sort);
    if (state.track) view.set("track", state.track);
    view.set("threshold", String(state.threshold));
    try { history.replaceState(null, "", "#" + view.toString()); } catch (e) { /* file: in some browsers */ }
  }

  function loadView() {
    const view = new URLSearchParams(location.hash.slice(1));
    const name = view.get("gate");
    const first = GATES.find((g) => g.gate === "forget") || GATES.find((g) => g.gate === "update") || GATES[0];
    state.example = Math.max(0, Math.min(DATA.examples.length - 1, Number(view.get("example")) || 0));
    if (view.has("sort")) state.sort = view.get("sort");
    if (view.has("track") && trackNames().includes(view.get("track"))) state.track = view.get("track");
    const threshold = Number(view.get("threshold"));
    if (view.has("threshold") && threshold >= 0 && threshold <= 1) state.threshold = threshold;
    const known = GATES.some((g) => g.name === name);
    const units = view.has("units") && known ? view.get("units").split(",").filter((x) => x !== "") : null;
    $("unit-sort").value = state.sort;
    $("threshold").value = String(state.threshold);
    selectGate(known ? name : first.name, units);
    const range = (view.get("range") || "").split("-").map(Number);
    if (range.length === 2 && range.every(Number.isInteger)) setRange(range[0], range[1]);
  }

  // ---------------------------------------------------------------------------------------
  // Saturation scatter: one point per unit, left saturation (x) against right saturation (y).
  // Points that would cover each other are moved along a small spiral until each has its own
  // place, so every unit can be clicked; the wheel zooms, a drag chooses the units in a box.

  const SC = { left: 46, top: 12, size: 300, bottom: 40, spacing: 7 };
  let points = [];

  function view() { return state.zoom || { x0: 0, x1: 1, y0: 0, y1: 1 }; }

  function basePoint(u) {
    const g = gate(), z = view();
    return {
      x: SC.left + (g.left_saturated[u] - z.x0) / (z.x1 - z.x0) * SC.size,
      y: SC.top + (1 - (g.right_saturated[u] - z.y0) / (z.y1 - z.y0)) * SC.size,
    };
  }

  function layoutScatter() {
    const g = gate();
    const grid = new Map();
    const cell = SC.spacing;
    const key = (x, y) => Math.floor(x / cell) + "," + Math.floor(y / cell);
    const free = (x, y) => {
      const cx = Math.floor(x / cell), cy = Math.floor(y / cell);
      for (let i = cx - 1; i <= cx + 1; i++) {
        for (let j = cy - 1; j <= cy + 1; j++) {
          for (const p of grid.get(i + "," + j) || []) {
            if ((p.x - x) ** 2 + (p.y - y) ** 2 < cell * cell) return false;
          }
        }
      }
      return true;
    };
    points = new Array(g.units);
    for (let u = 0; u < g.units; u++) {
      const base = basePoint(u);
      const inside = base.x >= SC.left - 0.5 && base.x <= SC.left + SC.size + 0.5 &&
        base.y >= SC.top - 0.5 && base.y <= SC.top + SC.size + 0.5;
      if (!inside) { points[u] = null; continue; }
      // Candidates off the plot (around a corner) are skipped, so every point stays visible.
      const onPlot = (q) => q.x >= SC.left - 5 && q.x <= SC.left + SC.size + 5 &&
        q.y >= SC.top - 5 && q.y <= SC.top + SC.size + 5;
      let p = base;
      for (let k = 1; !free(p.x, p.y) && k < 20000; k++) {
        const r = 3.5 * Math.sqrt(k), angle = k * 2.399963;
        const q = { x: base.x + r * Math.cos(angle), y: base.y + r * Math.sin(angle) };
        if (onPlot(q)) p = q;
      }
      points[u] = p;
      const k = key(p.x, p.y);
      if (!grid.has(k)) grid.set(k, []);
      grid.get(k).push(p);
    }
  }

  function drawScatter() {
    const canvas = $("scatter");
    const ctx = sizeCanvas(canvas, SC.left + SC.size + 14, SC.top + SC.size + SC.bottom);
    const g = gate(), z = view();
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(SC.left, SC.top, SC.size, SC.size);
    ctx.fillStyle = "#333";
    ctx.font = "11px sans-serif";
    ctx.textAlign = "center";
    for (const t of [0, 0.5, 1]) {
      ctx.fillText(+(z.x0 + t * (z.x1 - z.x0)).toFixed(3) + "", SC.left + t * SC.size, SC.top + SC.size + 14);
      ctx.fillText(+(z.y0 + t * (z.y1 - z.y0)).toFixed(3) + "", SC.left - 20, SC.top + (1 - t) * SC.size + 4);
    }
    const isState = g.kind === "state";
    ctx.fillText("fraction " + (isState ? "\u2264 " + fmt(-0.9 * g.range[1]) : "left-saturated (< " + DATA.left + ")"), SC.left + SC.size / 2, SC.top + SC.size + 32);
    ctx.save();
    ctx.translate(10, SC.top + SC.size / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText("fraction " + (isState ? "\u2265 " + fmt(0.9 * g.range[1]) : "right-saturated (> " + DATA.right + ")"), 0, 0);
    ctx.restore();
    ctx.save();
    ctx.beginPath();
    ctx.rect(SC.left - 8, SC.top - 8, SC.size + 16, SC.size + 16);
    ctx.clip();
    for (let u = 0; u < g.units; u++) {
      if (!points[u]) continue;
      ctx.fillStyle = css(g.mean[u]);
      ctx.globalAlpha = 0.85;
      ctx.beginPath();
      ctx.arc(points[u].x, points[u].y, 3.2, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    state.units.forEach((u, k) => {
      if (!points[u]) return;
      ctx.strokeStyle = unitColor(k);
      ctx.lineWidth = 2.5;
      ctx.beginPath();
      ctx.arc(points[u].x, points[u].y, 6, 0, 2 * Math.PI);
      ctx.stroke();
    });
    ctx.restore();
    if (box) {
      ctx.strokeStyle = "#333";
      ctx.setLineDash([3, 3]);
      ctx.strokeRect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0);
      ctx.setLineDash([]);
    }
  }

  function nearestUnit(point) {
    let best = -1, bestDistance = 36;  // within 6 px
    points.forEach((p, u) => {
      if (!p) return;
      const d = (p.x - point.x) ** 2 + (p.y - point.y) ** 2;
      if (d < bestDistance) { best = u; bestDistance = d; }
    });
    return best;
  }

  function scatterText(unit) {
    const g = gate();
    if (g.kind === "state") {
      return unitLabel(g, unit) + ": mean " + shown(g, g.mean[unit]) + ", at or below " +
        fmt(-0.9 * g.range[1]) + " " + fmt(g.left_saturated[unit]) + " of steps, at or above " +
        fmt(0.9 * g.range[1]) + " " + fmt(g.right_saturated[unit]);
    }
    if (g.difference) {
      return unitLabel(g, unit) + ": mean difference " + shown(g, g.mean[unit]) +
        " (placed at the second's saturation: left " + fmt(g.left_saturated[unit]) + ", right " +
        fmt(g.right_saturated[unit]) + ")";
    }
    return unitLabel(g, unit) + ": mean " + fmt(g.mean[unit]) + ", left-saturated " +
      fmt(g.left_saturated[unit]) + ", right-saturated " + fmt(g.right_saturated[unit]) +
      (g.time_constant ? ", \u03c4 " + tau(g.time_constant[unit]) + " steps" : "");
  }

  let box = null, pressed = null;

  function zoomAt(point, factor) {
    const z = view();
    const fx = (point.x - SC.left) / SC.size, fy = 1 - (point.y - SC.top) / SC.size;
    const cx = z.x0 + fx * (z.x1 - z.x0), cy = z.y0 + fy * (z.y1 - z.y0);
    const w = Math.min(1, Math.max(0.002, (z.x1 - z.x0) * factor));
    const h = Math.min(1, Math.max(0.002, (z.y1 - z.y0) * factor));
    const clamp = (lo, span) => Math.min(1 - span, Math.max(0, lo));
    const x0 = clamp(cx - fx * w, w), y0 = clamp(cy - fy * h, h);
    state.zoom = w >= 1 && h >= 1 ? null : { x0: x0, x1: x0 + w, y0: y0, y1: y0 + h };
    layoutScatter();
    drawScatter();
  }

  function scatterEvents() {
    const canvas = $("scatter");
    canvas.addEventListener("mousedown", (event) => { pressed = localPoint(canvas, event); });
    canvas.addEventListener("mousemove", (event) => {
      const p = localPoint(canvas, event);
      if (pressed && (event.buttons & 1) && Math.hypot(p.x - pressed.x, p.y - pressed.y) > 4) {
        box = { x0: Math.min(p.x, pressed.x), x1: Math.max(p.x, pressed.x), y0: Math.min(p.y, pressed.y), y1: Math.max(p.y, pressed.y) };
        drawScatter();
        return;
      }
      const unit = nearestUnit(p);
      readout("scatter-readout", unit < 0 ? "" : scatterText(unit), event);
    });
    canvas.addEventListener("mouseleave", () => readout("scatter-readout", ""));
    window.addEventListener("mouseup", (event) => {
      if (!pressed) return;
      const add = event.shiftKey || event.ctrlKey || event.metaKey;
      if (box) {
        const inside = [];
        points.forEach((p, u) => {
          if (p && p.x >= box.x0 && p.x <= box.x1 && p.y >= box.y0 && p.y <= box.y1) inside.push(u);
        });
        box = null;
        pressed = null;
        selectUnits(add ? state.units.concat(inside) : inside);
        return;
      }
      pressed = null;
      if (event.target !== canvas) return;
      const unit = nearestUnit(localPoint(canvas, event));
      if (unit >= 0) toggleUnit(unit, add);
    });
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      zoomAt(localPoint(canvas, event), event.deltaY > 0 ? 1.25 : 0.8);
    }, { passive: false });
    $("reset-zoom").addEventListener("click", () => { state.zoom = null; layoutScatter(); drawScatter(); });
  }

  // ---------------------------------------------------------------------------------------
  // Annotation tracks: one number per step of a sequence. For text the page computes five
  // from the sequence's own characters (what came before the sequence is not known: each
  // sequence starts outside quotes and brackets, at the start of a line); the data may add
  // more (DATA.tracks: {name: [one array per sequence]}).

  const TEXT_TRACKS = {
    "space": (tokens) => tokens.map((t) => (/^\s+$/.test(t) ? 1 : 0)),
    "inside quotes": (tokens) => {
      let open = null;
      return tokens.map((t) => {
        if (t === "\n") { open = null; return 0; }
        if (open === null && (t === "'" || t === '"')) { open = t; return 1; }
        if (open !== null && t === open) { open = null; return 1; }
        return open === null ? 0 : 1;
      });
    },
    "bracket depth": (tokens) => {
      let depth = 0;
      return tokens.map((t) => {
        if ("([{".includes(t) && t.length === 1) { depth += 1; return depth; }
        const inside = depth;
        if (")]}".includes(t) && t.length === 1) depth = Math.max(0, depth - 1);
        return inside;
      });
    },
    "indentation": (tokens) => {
      let indent = 0, leading = true;
      return tokens.map((t) => {
        if (t === "\n") { indent = 0; leading = true; return 0; }
        if (leading && (t === " " || t === "\t")) { indent += t === "\t" ? 4 : 1; return indent; }
        leading = false;
        return indent;
      });
    },
    "line position": (tokens) => {
      let position = 0;
      return tokens.map((t) => { const p = position; position = t === "\n" ? 0 : position + 1; return p; });
    },
  };

  function trackNames() {
    const own = DATA.examples[0].tokens ? Object.keys(TEXT_TRACKS) : [];
    return own.concat(Object.keys(DATA.tracks || {}));
  }

  const trackCache = new Map();
  function trackValues(k, name) {
    const key = k + "|" + name;
    if (!trackCache.has(key)) {
      const ex = DATA.examples[k];
      const given = DATA.tracks && DATA.tracks[name];
      const series = given ? given[k].map((x) => (x === null ? NaN : x)) : TEXT_TRACKS[name](ex.tokens);
      trackCache.set(key, Float64Array.from(series));
    }
    return trackCache.get(key);
  }

  // ---------------------------------------------------------------------------------------
  // Timeline: the chosen units' gate over the input, under the tokens (text) or as lines,
  // with the annotation track as its last row and the chosen range outlined.

  const TL = { label: 110, row: 22, lineHeight: 180, inputHeight: 70, gap: 14 };
  let drawn = {};

  function timelineLayout() {
    const ex = example();
    const steps = ex.steps.length;
    if (ex.tokens) {
      const ctx = $("timeline").getContext("2d");
      ctx.font = "13px monospace";
      let widest = 0;
      for (const t of ex.tokens) widest = Math.max(widest, ctx.measureText(shownToken(t)).width);
      // Browsers refuse canvases wider than 32767 device pixels: long sequences of wide
      // tokens get narrower cells.
      const fits = Math.floor((30000 / DPR - TL.label) / Math.max(1, steps));
      const cell = Math.min(80, Math.max(11, Math.ceil(widest) + 4), Math.max(1, fits));
      return { text: true, cell: cell, steps: steps };
    }
    // Fit the width: a canvas wider than the page costs seconds to paint at 10,000 steps.
    const width = available("timeline-scroll") - TL.label - 10;
    return { text: false, cell: Math.min(14, width / steps), steps: steps };
  }

  function timelineRows() { return state.units.length + (state.track ? 1 : 0); }

  function drawTrackRow(ctx, layout, y) {
    const track = trackValues(state.example, state.track);
    let hi = 0;
    for (const x of track) if (x > hi) hi = x;
    ctx.fillStyle = "#333";
    ctx.textAlign = "left";
    ctx.fillText(state.track.slice(0, 14), 4, y + TL.row / 2);
    ctx.textAlign = "center";
    for (let t = 0; t < layout.steps; t++) {
      const level = hi > 0 && !Number.isNaN(track[t]) ? track[t] / hi : 0;
      ctx.fillStyle = "rgba(30, 120, 60, " + (0.08 + 0.8 * level).toFixed(3) + ")";
      ctx.fillRect(TL.label + t * layout.cell, y + 1, layout.cell, TL.row - 2);
      if (layout.cell >= 11) {
        ctx.fillStyle = level > 0.6 ? "#fff" : "#111";
        ctx.fillText(String(track[t]).slice(0, 2), TL.label + (t + 0.5) * layout.cell, y + TL.row / 2 + 1);
      }
    }
  }

  function drawRange(ctx, layout, height) {
    if (!state.range) return;
    const [a, b] = state.range;
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 2;
    ctx.strokeRect(TL.label + a * layout.cell + 1, 1, (b - a + 1) * layout.cell - 2, height - 2);
  }

  function drawTextTimeline(canvas, layout, width) {
    const ex = example();
    const height = Math.max(1, timelineRows()) * TL.row + 4;
    const ctx = sizeCanvas(canvas, width, height);
    ctx.font = "13px monospace";
    ctx.textBaseline = "middle";
    state.units.forEach((u, row) => {
      const y = row * TL.row;
      ctx.fillStyle = unitColor(row);
      ctx.textAlign = "left";
      ctx.fillText("unit " + u, 4, y + TL.row / 2);
      ctx.textAlign = "center";
      for (let t = 0; t < layout.steps; t++) {
        const x = TL.label + t * layout.cell;
        ctx.fillStyle = css(drawn[u][t]);
        ctx.fillRect(x, y + 1, layout.cell, TL.row - 2);
        ctx.fillStyle = drawn[u][t] > 0.8 || drawn[u][t] < 0.2 ? "#fff" : "#111";
        ctx.fillText(shownToken(ex.tokens[t]), x + layout.cell / 2, y + TL.row / 2 + 1);
      }
    });
    if (state.track) drawTrackRow(ctx, layout, state.units.length * TL.row);
    drawRange(ctx, layout, height);
  }

  function drawLineTimeline(canvas, layout, width) {
    const ex = example();
    const inputs = ex.inputs || [];
    const height = TL.lineHeight + (inputs.length ? TL.gap + TL.inputHeight : 0) + 24;
    const ctx = sizeCanvas(canvas, width, height);
    const x = (t) => TL.label + (t + 0.5) * layout.cell;
    ctx.strokeStyle = "#bbb";
    ctx.lineWidth = 1;
    ctx.strokeRect(TL.label, 0.5, layout.steps * layout.cell, TL.lineHeight);
    ctx.fillStyle = "#333";
    ctx.font = "11px sans-serif";
    ctx.textAlign = "right";
    for (const level of [0, 0.5, 1]) ctx.fillText(String(level), TL.label - 4, TL.lineHeight * (1 - level) + 4);
    ctx.textAlign = "left";
    state.units.forEach((u, k) => {
      ctx.fillStyle = unitColor(k);
      ctx.fillText("unit " + u, 4, 16 + 14 * k);
      ctx.strokeStyle = unitColor(k);
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      for (let t = 0; t < layout.steps; t++) {
        const y = TL.lineHeight * (1 - drawn[u][t]) + 0.5;
        if (t === 0) ctx.moveTo(x(t), y); else ctx.lineTo(x(t), y);
      }
      ctx.stroke();
    });
    const top = TL.lineHeight + TL.gap;
    if (inputs.length) {
      ctx.fillStyle = "#555";
      ctx.fillText("input", 4, top + 12);
      ctx.strokeStyle = "#bbb";
      ctx.lineWidth = 1;
      ctx.strokeRect(TL.label, top, layout.steps * layout.cell, TL.inputHeight);
      inputs.forEach((feature, k) => {
        let lo = Infinity, hi = -Infinity;
        for (const a of feature) { lo = Math.min(lo, a); hi = Math.max(hi, a); }
        const span = hi > lo ? hi - lo : 1;
        ctx.strokeStyle = ["#444", "#999", "#6a3d9a", "#b15928"][k % 4];
        ctx.beginPath();
        feature.forEach((a, t) => {
          const y = top + TL.inputHeight - 4 - ((a - lo) / span) * (TL.inputHeight - 8);
          if (t === 0) ctx.moveTo(x(t), y); else ctx.lineTo(x(t), y);
        });
        ctx.stroke();
      });
    }
    ctx.fillStyle = "#333";
    ctx.textAlign = "center";
    const every = Math.max(1, Math.ceil(60 / layout.cell));
    for (let t = 0; t < layout.steps; t += every) ctx.fillText(String(ex.steps[t]), x(t), height - 6);
    drawRange(ctx, layout, TL.lineHeight);
  }

  function drawTimeline() {
    const canvas = $("timeline");
    const g = gate();
    const layout = timelineLayout();
    const width = TL.label + layout.steps * layout.cell + 10;
    const v = values(state.example, g.name);
    drawn = {};
    for (const u of state.units) {
      const series = new Array(layout.steps);
      for (let t = 0; t < layout.steps; t++) series[t] = v[t * g.units + u];
      drawn[u] = series;
    }
    canvas.dataset.units = state.units.join(",");
    canvas.dataset.mode = layout.text ? "text" : "line";
    canvas.dataset.cellWidth = String(layout.cell);
    canvas.dataset.labelWidth = String(TL.label);
    canvas.dataset.rowHeight = String(TL.row);
    if (layout.text) drawTextTimeline(canvas, layout, width);
    else drawLineTimeline(canvas, layout, width);
    $("range-summary").textContent = state.range
      ? "range: steps " + example().steps[state.range[0]] + "\u2013" + example().steps[state.range[1]] +
        (example().tokens ? " " + JSON.stringify(example().tokens.slice(state.range[0], state.range[1] + 1).join("")) : "")
      : "no range chosen: drag across the steps above";
  }

  function timelineStep(event) {
    const p = localPoint($("timeline"), event);
    const layout = timelineLayout();
    return { t: Math.floor((p.x - TL.label) / layout.cell), p: p, layout: layout };
  }

  function timelineText(event) {
    const { t, p, layout } = timelineStep(event);
    const ex = example();
    if (t < 0 || t >= layout.steps || !timelineRows()) return "";
    const token = ex.tokens ? ex.tokens[t] : null;
    let units = state.units;
    if (layout.text) {
      const row = Math.floor(p.y / TL.row);
      if (row < 0 || row >= timelineRows()) return "";
      if (row === state.units.length) {
        return "step " + ex.steps[t] + quoted(token) + " \u00b7 " + state.track + ": " + trackValues(state.example, state.track)[t];
      }
      units = [units[row]];
    }
    if (!units.length) return "";
    return "step " + ex.steps[t] + quoted(token) + " \u00b7 " +
      units.map((u) => "unit " + u + ": " + shown(gate(), drawn[u][t])).join(", ");
  }

  function setRange(a, b) {
    const steps = example().steps.length;
    const lo = Math.max(0, Math.min(a, b)), hi = Math.min(steps - 1, Math.max(a, b));
    state.range = lo <= hi ? [lo, hi] : null;
    drawTimeline();
    saveView();
  }

  function timelineEvents() {
    const canvas = $("timeline");
    let start = null;
    canvas.addEventListener("mousedown", (event) => { start = timelineStep(event).t; });
    canvas.addEventListener("mousemove", (event) => {
      if (start !== null && (event.buttons & 1)) {
        const t = timelineStep(event).t;
        if (t !== start) { setRange(start, t); }
      }
      readout("timeline-readout", timelineText(event), event);
    });
    canvas.addEventListener("mouseup", (event) => {
      if (start === null) return;
      const t = timelineStep(event).t;
      if (t === start) setRange(t, t); else setRange(start, t);
      start = null;
    });
    canvas.addEventListener("mouseleave", () => readout("timeline-readout", ""));
    // A drag that ends outside the timeline ends there too: no stale start for the next one.
    window.addEventListener("mouseup", (event) => { if (event.target !== canvas) start = null; });
  }

  // ---------------------------------------------------------------------------------------
  // Colour bar: the code every picture of gate values uses (and the report's).

  function drawColorbar() {
    const canvas = $("colorbar");
    const width = 260, left = 80;
    const ctx = sizeCanvas(canvas, left + width + 30, 30);
    for (let i = 0; i < width; i++) {
      ctx.fillStyle = css(i / (width - 1));
      ctx.fillRect(left + i, 2, 1.2, 12);
    }
    ctx.fillStyle = "#333";
    ctx.font = "11px sans-serif";
    ctx.textAlign = "right";
    const g = gate();
    ctx.fillText(g.difference ? "difference" : g.kind === "state" ? "state" : "gate value", left - 8, 12);
    ctx.textAlign = "center";
    for (const v of [0, 0.25, 0.5, 0.75, 1]) {
      const label = g.kind === "state" ? +(g.range[0] + v * (g.range[1] - g.range[0])).toFixed(2)
        : g.difference ? 2 * v - 1 : v;
      ctx.fillText(String(label), left + v * (width - 1), 27);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Heatmap: units (rows) x steps (columns), tokens under the columns, as wide as the page.

  const HM = { label: 44, tokens: 18 };
  let heatImage = null, heatKey = "";

  function heatLayout() {
    const g = gate();
    const steps = example().steps.length;
    const width = available("heatmap-scroll") - HM.label - 8;
    // Whole pixels while every step gets one; past that the picture fits the width and each
    // pixel averages its steps (a canvas wider than the page takes seconds to paint).
    const fit = width / steps;
    return {
      cell: fit >= 1 ? Math.min(14, Math.floor(fit)) : fit,
      row: Math.max(1, Math.min(12, Math.floor(640 / g.units))),
      steps: steps,
      units: g.units,
    };
  }

  function heatBitmap() {
    const g = gate();
    const key = state.example + "|" + g.name;
    if (key === heatKey) return heatImage;
    const v = values(state.example, g.name);
    const steps = example().steps.length;
    const off = document.createElement("canvas");
    off.width = steps;
    off.height = g.units;
    const octx = off.getContext("2d");
    const image = octx.createImageData(steps, g.units);
    const lut = new Uint8ClampedArray(3 * 256);
    for (let i = 0; i < 256; i++) { const c = rgb(i / 255); lut[3 * i] = c[0]; lut[3 * i + 1] = c[1]; lut[3 * i + 2] = c[2]; }
    for (let t = 0; t < steps; t++) {
      for (let u = 0; u < g.units; u++) {
        const level = 3 * Math.round(255 * v[t * g.units + u]);
        const i = 4 * (u * steps + t);
        image.data[i] = lut[level]; image.data[i + 1] = lut[level + 1]; image.data[i + 2] = lut[level + 2]; image.data[i + 3] = 255;
      }
    }
    octx.putImageData(image, 0, 0);
    heatImage = off;
    heatKey = key;
    return off;
  }

  function drawHeatmap() {
    const canvas = $("heatmap");
    const layout = heatLayout();
    const ex = example();
    const width = HM.label + layout.steps * layout.cell + 8;
    const height = layout.units * layout.row + HM.tokens + 4;
    const ctx = sizeCanvas(canvas, width, height);
    canvas.dataset.labelWidth = String(HM.label);
    canvas.dataset.cellWidth = String(layout.cell);
    canvas.dataset.rowHeight = String(layout.row);
    ctx.imageSmoothingEnabled = layout.cell < 1;
    ctx.drawImage(heatBitmap(), HM.label, 0, layout.steps * layout.cell, layout.units * layout.row);
    ctx.font = "10px sans-serif";
    ctx.fillStyle = "#333";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil(14 / layout.row));
    for (let u = 0; u < layout.units; u += every) ctx.fillText(String(u), HM.label - 10, (u + 0.5) * layout.row);
    state.units.forEach((u, k) => {
      ctx.fillStyle = unitColor(k);
      ctx.fillRect(HM.label - 7, u * layout.row, 5, Math.max(2, layout.row));
    });
    ctx.textAlign = "center";
    ctx.fillStyle = "#222";
    const top = layout.units * layout.row + HM.tokens / 2 + 2;
    if (ex.tokens && layout.cell >= 7) {
      ctx.font = "11px monospace";
      for (let t = 0; t < layout.steps; t++) {
        ctx.fillText(shownToken(ex.tokens[t]).slice(0, 2), HM.label + (t + 0.5) * layout.cell, top);
      }
    } else {
      const stride = Math.max(1, Math.ceil(50 / layout.cell));
      for (let t = 0; t < layout.steps; t += stride) {
        ctx.fillText(ex.tokens ? shownToken(ex.tokens[t]) : String(ex.steps[t]), HM.label + (t + 0.5) * layout.cell, top);
      }
    }
  }

  function heatmapCell(event) {
    const p = localPoint($("heatmap"), event);
    const layout = heatLayout();
    return { t: Math.floor((p.x - HM.label) / layout.cell), u: Math.floor(p.y / layout.row), layout: layout, p: p };
  }

  function heatmapEvents() {
    const canvas = $("heatmap");
    canvas.addEventListener("mousemove", (event) => {
      const { t, u, layout } = heatmapCell(event);
      if (t < 0 || t >= layout.steps || u < 0 || u >= layout.units) { readout("heatmap-readout", ""); return; }
      const g = gate();
      const ex = example();
      const v = values(state.example, g.name)[t * g.units + u];
      readout("heatmap-readout", unitLabel(g, u) + " \u00b7 step " + ex.steps[t] +
        quoted(ex.tokens ? ex.tokens[t] : null) + " \u00b7 " + (g.difference ? "difference " : "value ") + shown(g, v), event);
    });
    canvas.addEventListener("mouseleave", () => readout("heatmap-readout", ""));
    canvas.addEventListener("click", (event) => {
      const { u, layout, p } = heatmapCell(event);
      if (u >= 0 && u < layout.units && p.x >= HM.label) toggleUnit(u, true);
    });
  }

  // ---------------------------------------------------------------------------------------
  // Attention weights: queries (rows) x keys (columns), per head.

  function drawAttention() {
    if (!DATA.attention) return;
    const ex = example();
    const steps = ex.steps.length;
    const w = attentionValues();
    const cell = Math.max(1, Math.min(14, Math.floor(560 / steps)));
    const canvas = $("attention");
    const ctx = sizeCanvas(canvas, HM.label + steps * cell + 8, steps * cell + HM.tokens + 4);
    canvas.dataset.cellWidth = String(cell);
    canvas.dataset.labelWidth = String(HM.label);
    const off = document.createElement("canvas");
    off.width = steps;
    off.height = steps;
    const octx = off.getContext("2d");
    const image = octx.createImageData(steps, steps);
    const base = state.head * steps * steps;
    let peak = 0;
    for (let i = 0; i < steps * steps; i++) peak = Math.max(peak, w[base + i]);
    for (let i = 0; i < steps * steps; i++) {
      const level = 255 - Math.round(255 * w[base + i] / (peak || 1));
      image.data[4 * i] = level; image.data[4 * i + 1] = level; image.data[4 * i + 2] = 255;
      image.data[4 * i + 3] = 255;
    }
    octx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, HM.label, 0, steps * cell, steps * cell);
    ctx.fillStyle = "#222";
    ctx.font = "11px monospace";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    if (ex.tokens && cell >= 7) {
      for (let t = 0; t < steps; t++) {
        const token = shownToken(ex.tokens[t]).slice(0, 2);
        ctx.fillText(token, HM.label + (t + 0.5) * cell, steps * cell + HM.tokens / 2 + 2);
        ctx.fillText(token, HM.label - 10, (t + 0.5) * cell);
      }
    }
  }

  function attentionValues() {
    const key = "attention|" + state.example;
    if (!cache.has(key)) cache.set(key, decode(DATA.attention.examples[state.example]));
    return cache.get(key);
  }

  function attentionEvents() {
    if (!DATA.attention) return;
    const select = $("head");
    for (let h = 0; h < DATA.attention.heads; h++) {
      const option = document.createElement("option");
      option.value = String(h);
      option.textContent = "head " + h;
      select.appendChild(option);
    }
    select.addEventListener("change", () => { state.head = Number(select.value); clearReadouts(); drawAttention(); });
    const canvas = $("attention");
    canvas.addEventListener("mousemove", (event) => {
      const p = localPoint(canvas, event);
      const ex = example();
      const steps = ex.steps.length;
      const cell = Number(canvas.dataset.cellWidth);
      const k = Math.floor((p.x - HM.label) / cell), q = Math.floor(p.y / cell);
      if (k < 0 || k >= steps || q < 0 || q >= steps) { readout("attention-readout", ""); return; }
      const w = attentionValues()[(state.head * steps + q) * steps + k];
      const token = (t) => (ex.tokens ? " " + JSON.stringify(ex.tokens[t]) : "");
      readout("attention-readout", "head " + state.head + " \u00b7 query step " + ex.steps[q] +
        token(q) + " \u00b7 key step " + ex.steps[k] + token(k) + " \u00b7 weight " + fmt(w), event);
    });
    canvas.addEventListener("mouseleave", () => readout("attention-readout", ""));
  }

  // ---------------------------------------------------------------------------------------
  // Ablation table.

  function fillAblation() {
    if (!DATA.ablation) return;
    const a = DATA.ablation;
    const body = $("ablation-body");
    $("ablation-head").innerHTML = "";
    for (const text of ["gate set to " + a.value, a.metric, "ablated", "change"]) {
      const th = document.createElement("th");
      th.textContent = text;
      $("ablation-head").appendChild(th);
    }
    for (const row of a.rows) {
      const tr = document.createElement("tr");
      for (const text of [row.gate, sig(row.baseline), sig(row.ablated),
        (row.change !== null && row.change >= 0 ? "+" : "") + sig(row.change)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      if (GATES.some((g) => g.name === row.gate)) {
        tr.className = "link";
        tr.title = "show this gate";
        tr.addEventListener("click", () => selectGate(row.gate));
      }
      body.appendChild(tr);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Pattern search (as LSTMVis): the units on over a range, and the places in every shown
  // sequence where they are on together; units against an annotation track.

  function unitsOnOverRange() {
    if (!state.range) return [];
    const g = gate();
    const v = values(state.example, g.name);
    const on = [];
    for (let u = 0; u < g.units; u++) {
      let all = true;
      for (let t = state.range[0]; t <= state.range[1] && all; t++) all = v[t * g.units + u] >= state.threshold;
      if (all) on.push(u);
    }
    return on;
  }

  function findMatches() {
    const g = gate();
    const chosen = state.units, theta = state.threshold;
    const isChosen = new Uint8Array(g.units);
    for (const u of chosen) isChosen[u] = 1;
    const others = g.units - chosen.length;
    const length = state.range ? state.range[1] - state.range[0] + 1 : 1;
    const matches = [];
    DATA.examples.forEach((ex, k) => {
      const v = values(k, g.name);
      const steps = ex.steps.length;
      let start = -1, othersOff = 0, othersOn = 0;
      for (let t = 0; t <= steps; t++) {
        let on = t < steps && chosen.length > 0;
        for (let i = 0; on && i < chosen.length; i++) on = v[t * g.units + chosen[i]] >= theta;
        if (on) {
          if (start < 0) { start = t; othersOff = 0; othersOn = 0; }
          let count = 0;
          for (let u = 0; u < g.units; u++) if (!isChosen[u] && v[t * g.units + u] >= theta) count++;
          othersOn += count;
          othersOff += others ? (others - count) / others : 1;
        } else if (start >= 0) {
          const n = t - start;
          matches.push({
            example: k, start: start, end: t - 1,
            score: (Math.min(n, length) / Math.max(n, length)) * (othersOff / n),
            othersOn: othersOn / n,
          });
          start = -1;
        }
      }
    });
    matches.sort((a, b) => b.score - a.score || a.example - b.example || a.start - b.start);
    return matches;
  }

  function matchText(m) {
    const ex = DATA.examples[m.example];
    if (!ex.tokens) return "";
    const text = ex.tokens.slice(m.start, m.end + 1).join("");
    return text.length > 40 ? text.slice(0, 39) + "\u2026" : text;
  }

  function search() {
    state.matches = findMatches();
    const body = $("matches");
    body.innerHTML = "";
    $("search-summary").textContent = state.units.length
      ? state.matches.length + " places where units " + state.units.join(", ") + " of " + gate().name +
        " are all \u2265 " + state.threshold + " in the " + DATA.examples.length + " shown sequences" +
        (state.matches.length > 200 ? " (the best 200 listed)" : "")
      : "choose units first (click, drag a box, or choose the units on over a range)";
    state.matches.slice(0, 200).forEach((m, rank) => {
      const tr = document.createElement("tr");
      tr.className = "link";
      const ex = DATA.examples[m.example];
      const cells = [String(rank + 1), String(ex.index), ex.steps[m.start] + "\u2013" + ex.steps[m.end],
        matchText(m), m.score.toFixed(3), m.othersOn.toFixed(1)];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (i === 3) td.className = "text";
        tr.appendChild(td);
      });
      tr.addEventListener("click", () => jumpTo(m));
      body.appendChild(tr);
    });
  }

  function jumpTo(m) {
    if (m.example !== state.example) selectExample(m.example);
    setRange(m.start, m.end);
    const layout = timelineLayout();
    const scroller = $("timeline-scroll");
    scroller.scrollLeft = Math.max(0, TL.label + m.start * layout.cell - scroller.clientWidth / 3);
    $("timeline").scrollIntoView({ block: "center" });
  }

  function correlations() {
    if (!state.track) return [];
    const g = gate();
    const n = new Float64Array(1), st = [0, 0];
    const su = new Float64Array(g.units), suu = new Float64Array(g.units), sut = new Float64Array(g.units);
    DATA.examples.forEach((ex, k) => {
      const v = values(k, g.name), track = trackValues(k, state.track);
      for (let t = 0; t < ex.steps.length; t++) {
        const y = track[t];
        if (Number.isNaN(y)) continue;
        n[0] += 1; st[0] += y; st[1] += y * y;
        for (let u = 0; u < g.units; u++) {
          const x = v[t * g.units + u];
          su[u] += x; suu[u] += x * x; sut[u] += x * y;
        }
      }
    });
    const count = n[0], vy = st[1] / count - (st[0] / count) ** 2;
    return Array.from({ length: g.units }, (_, u) => {
      const vx = suu[u] / count - (su[u] / count) ** 2;
      const cov = sut[u] / count - (su[u] / count) * (st[0] / count);
      const r = vx > 0 && vy > 0 ? cov / Math.sqrt(vx * vy) : null;
      return { unit: u, r: r === null ? null : Math.max(-1, Math.min(1, r)) };
    });
  }

  function drawCorrelations() {
    const body = $("correlations");
    body.innerHTML = "";
    if (!state.track) return;
    const ranked = correlations().filter((c) => c.r !== null)
      .sort((a, b) => Math.abs(b.r) - Math.abs(a.r) || a.unit - b.unit).slice(0, 12);
    for (const c of ranked) {
      const tr = document.createElement("tr");
      tr.className = "link";
      for (const text of [unitLabel(gate(), c.unit), (c.r >= 0 ? "+" : "") + c.r.toFixed(3)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => toggleUnit(c.unit, true));
      body.appendChild(tr);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Export: the chosen units' values over the chosen range (or the whole sequence).

  function selection() {
    const ex = example();
    const [a, b] = state.range || [0, ex.steps.length - 1];
    const g = gate(), v = values(state.example, g.name);
    const steps = [], tokens = [], units = {};
    for (const u of state.units) units[u] = [];
    for (let t = a; t <= b; t++) {
      steps.push(ex.steps[t]);
      tokens.push(ex.tokens ? ex.tokens[t] : null);
      for (const u of state.units) units[u].push(Number(v[t * g.units + u].toFixed(6)));
    }
    return { gate: g.name, sequence: ex.index, steps: steps, tokens: ex.tokens ? tokens : null, units: units };
  }

  function exportText(format) {
    const s = selection();
    if (format === "json") return JSON.stringify(s, null, 1);
    const quote = (x) => '"' + String(x).replace(/"/g, '""') + '"';
    const head = ["step"].concat(s.tokens ? ["token"] : [], state.units.map((u) => "unit " + u));
    const rows = [head.map(quote).join(",")];
    s.steps.forEach((step, i) => {
      rows.push([String(step)].concat(s.tokens ? [quote(s.tokens[i])] : [],
        state.units.map((u) => String(s.units[u][i]))).join(","));
    });
    return rows.join("\n") + "\n";
  }

  function download(format) {
    const blob = new Blob([exportText(format)], { type: format === "json" ? "application/json" : "text/csv" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "gates-" + gate().name.replace(/\//g, "-") + "-sequence-" + example().index + "." + format;
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  // ---------------------------------------------------------------------------------------

  function drawAll() {
    const g = gate();
    const mean = g.mean.reduce((a, b) => a + b, 0) / g.units;
    $("gate-summary").textContent = g.name + ": " + g.units + " units, " +
      (g.kind === "state" ? "mean " + shown(g, mean) + " over the shown sequences"
        : g.difference ? "mean difference " + shown(g, mean) + " over the shown sequences"
        : "mean " + fmt(mean) + " over all inspected steps");
    drawScatter();
    mark("scatter");
    drawTimeline();
    mark("timeline");
    drawHeatmap();
    mark("heatmap");
    drawAttention();
    drawCorrelations();
    drawColorbar();
    saveView();
  }

  function fillComparison() {
    const c = DATA.comparison;
    $("comparison-section").hidden = !c;
    if (!c) return;
    const head = $("comparison-head");
    const fields = [["mean", "mean"], ["left_saturated", "left-sat."], ["right_saturated", "right-sat."]];
    const titles = ["gate"];
    for (const label of c.labels) for (const f of fields) titles.push(label + " " + f[1]);
    for (const text of titles) {
      const th = document.createElement("th");
      th.textContent = text;
      head.appendChild(th);
    }
    for (const row of c.rows) {
      const tr = document.createElement("tr");
      const cells = [row.gate];
      for (const label of c.labels) for (const f of fields) cells.push(fmt(row[label + "/" + f[0]] ?? null));
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      $("comparison-body").appendChild(tr);
    }
  }

  function describeSource() {
    const parts = [];
    const c = DATA.checkpoint;
    if (c) {
      parts.push("checkpoint: " + (c.run || "") + (c.step === null || c.step === undefined ? "" : " step " + c.step) +
        (c.validation === null || c.validation === undefined ? "" : ", validation " + (c.metric || "loss") + " " + sig(c.validation)));
    }
    if (DATA.source) parts.push("sequences: " + DATA.source);
    $("provenance").textContent = parts.join(" \u00b7 ");
  }

  function init() {
    for (const id of ["layer", "direction", "gate"]) {
      $(id).addEventListener("change", () => chooseFromControls(id));
    }
    const exampleSelect = $("example");
    DATA.examples.forEach((ex, k) => {
      const option = document.createElement("option");
      option.value = String(k);
      option.textContent = "sequence " + ex.index + " (" + ex.steps.length + " steps)" + (ex.label ? " " + ex.label : "");
      exampleSelect.appendChild(option);
    });
    exampleSelect.addEventListener("change", () => selectExample(Number(exampleSelect.value)));
    $("unit-list").addEventListener("change", () => {
      selectUnits(Array.from($("unit-list").selectedOptions).map((o) => Number(o.value)));
    });
    $("unit-sort").addEventListener("change", () => { state.sort = $("unit-sort").value; fillUnitList(); saveView(); });
    $("clear-units").addEventListener("click", () => selectUnits([]));
    $("export-csv").addEventListener("click", () => download("csv"));
    $("export-json").addEventListener("click", () => download("json"));
    fillSelect($("track"), [""].concat(trackNames()), "");
    $("track").options[0].textContent = "(none)";
    $("track").addEventListener("change", () => { state.track = $("track").value; drawTimeline(); drawCorrelations(); saveView(); });
    $("threshold").addEventListener("change", () => {
      const t = Number($("threshold").value);
      if (t >= 0 && t <= 1) state.threshold = t;
      $("threshold").value = String(state.threshold);
      saveView();
    });
    $("units-on").addEventListener("click", () => selectUnits(unitsOnOverRange()));
    $("search").addEventListener("click", search);
    scatterEvents();
    timelineEvents();
    heatmapEvents();
    attentionEvents();
    fillAblation();
    fillComparison();
    mark("controls");
    describeSource();
    drawColorbar();
    $("attention-section").hidden = !DATA.attention;
    $("ablation-section").hidden = !DATA.ablation;
    let width = window.innerWidth;
    window.addEventListener("resize", () => {
      if (window.innerWidth === width) return;
      width = window.innerWidth;
      drawTimeline();
      drawHeatmap();
    });
    loadView();
    mark("view");
    $("track").value = state.track;
    drawTimeline();
    drawCorrelations();
    mark("drawn");
  }

  // For scripts and tests: the state, the values drawn, where a unit's point is, and the
  // pattern search, annotation tracks and export the buttons use.
  window.gatenetsExplorer = {
    state: state,
    started: STARTED,
    timings: TIMINGS,
    gates: GATES.map((g) => g.name),
    selectGate: selectGate,
    selectUnits: selectUnits,
    selectExample: selectExample,
    setRange: setRange,
    timelineSeries: () => JSON.parse(JSON.stringify(drawn)),
    // One sequence's text, or with null the text of every sequence.
    tokens: (k) => (k === null ? DATA.examples : [DATA.examples[k === undefined ? state.example : k]])
      .map((ex) => (ex.tokens || []).join("")).join(""),
    scatterPoint: (unit) => {
      const rect = $("scatter").getBoundingClientRect();
      const p = points[unit];
      return p ? { x: rect.left + p.x, y: rect.top + p.y } : null;
    },
    unitsOnOverRange: unitsOnOverRange,
    search: () => { search(); return state.matches.map((m) => Object.assign({}, m)); },
    jumpTo: (rank) => jumpTo(state.matches[rank]),
    trackNames: trackNames,
    track: (k, name) => Array.from(trackValues(k, name)),
    correlations: correlations,
    exportText: exportText,
  };

  init();
  document.addEventListener("DOMContentLoaded", () => mark("domcontentloaded"));
  window.addEventListener("load", () => mark("load"));
})();
