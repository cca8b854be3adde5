// gatenets gate explorer: one page, no network, no library. The data is the JSON in
// <script id="gatenets-data">; gate values are base64 little-endian uint16, value = q / 65535,
// time-major ([steps, units]). Every picture is a canvas, so 512 units x 1000 steps stay fast.
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("gatenets-data").textContent);
  const $ = (id) => document.getElementById(id);
  const DPR = window.devicePixelRatio || 1;
  const UNIT_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

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

  const state = { gate: 0, example: 0, units: [], head: 0 };

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
  // JSON has no infinity: a unit that never forgets has a null time constant.
  function tau(v) { return v === null ? "\u221e" : v.toFixed(2); }

  // Blue (0) through light grey (0.5) to red (1), as matplotlib's coolwarm in the static PNGs.
  const STOPS = [[59, 76, 192], [221, 221, 221], [180, 4, 38]];
  function rgb(v) {
    const t = Math.min(1, Math.max(0, v)) * 2;
    const i = t < 1 ? 0 : 1;
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

  function fillUnitList() {
    const g = gate();
    const list = $("unit-list");
    list.innerHTML = "";
    for (let u = 0; u < g.units; u++) {
      const option = document.createElement("option");
      option.value = String(u);
      option.textContent = unitLabel(g, u) + "  mean " + g.mean[u].toFixed(3) + ", left " +
        g.left_saturated[u].toFixed(3) + ", right " + g.right_saturated[u].toFixed(3);
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
    const g = gate();
    const v = values(state.example, g.name);
    const steps = v.length / g.units;
    const spread = [];
    for (let u = 0; u < g.units; u++) {
      let s = 0, s2 = 0;
      for (let t = 0; t < steps; t++) { const x = v[t * g.units + u]; s += x; s2 += x * x; }
      spread.push([s2 / steps - (s / steps) * (s / steps), u]);
    }
    spread.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    return spread.slice(0, count).map((p) => p[1]).sort((a, b) => a - b);
  }

  function selectGate(name) {
    const index = GATES.findIndex((g) => g.name === name);
    if (index < 0) throw new Error("unknown gate " + name);
    state.gate = index;
    state.units = busiestUnits(Math.min(3, gate().units));
    syncControls();
    fillUnitList();
    drawAll();
  }

  function selectUnits(units) {
    const g = gate();
    state.units = unique(units.map(Number).filter((u) => u >= 0 && u < g.units)).slice(0, UNIT_COLORS.length);
    syncUnitList();
    drawScatter();
    drawTimeline();
    drawHeatmap();
  }

  function toggleUnit(unit, add) {
    if (!add) return selectUnits([unit]);
    if (state.units.includes(unit)) return selectUnits(state.units.filter((u) => u !== unit));
    return selectUnits(state.units.concat([unit]));
  }

  // ---------------------------------------------------------------------------------------
  // Saturation scatter: one point per unit, left saturation (x) against right saturation (y).

  const SC = { left: 46, top: 12, size: 300, bottom: 40 };

  function scatterXY(u) {
    const g = gate();
    return {
      x: SC.left + g.left_saturated[u] * SC.size,
      y: SC.top + (1 - g.right_saturated[u]) * SC.size,
    };
  }

  function drawScatter() {
    const canvas = $("scatter");
    const ctx = sizeCanvas(canvas, SC.left + SC.size + 14, SC.top + SC.size + SC.bottom);
    const g = gate();
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(SC.left, SC.top, SC.size, SC.size);
    ctx.setLineDash([4, 4]);
    ctx.beginPath();
    ctx.moveTo(SC.left, SC.top);
    ctx.lineTo(SC.left + SC.size, SC.top + SC.size);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#333";
    ctx.font = "11px sans-serif";
    ctx.textAlign = "center";
    for (const t of [0, 0.5, 1]) {
      ctx.fillText(String(t), SC.left + t * SC.size, SC.top + SC.size + 14);
      ctx.fillText(String(t), SC.left - 16, SC.top + (1 - t) * SC.size + 4);
    }
    ctx.fillText("fraction left-saturated (< " + DATA.left + ")", SC.left + SC.size / 2, SC.top + SC.size + 32);
    ctx.save();
    ctx.translate(12, SC.top + SC.size / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText("fraction right-saturated (> " + DATA.right + ")", 0, 0);
    ctx.restore();
    for (let u = 0; u < g.units; u++) {
      const p = scatterXY(u);
      ctx.fillStyle = css(g.mean[u]);
      ctx.globalAlpha = 0.75;
      ctx.beginPath();
      ctx.arc(p.x, p.y, 3.5, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    state.units.forEach((u, k) => {
      const p = scatterXY(u);
      ctx.strokeStyle = UNIT_COLORS[k];
      ctx.lineWidth = 2.5;
      ctx.beginPath();
      ctx.arc(p.x, p.y, 7, 0, 2 * Math.PI);
      ctx.stroke();
    });
  }

  function nearestUnit(point) {
    const g = gate();
    let best = -1, bestDistance = 64;  // within 8 px
    for (let u = 0; u < g.units; u++) {
      const p = scatterXY(u);
      const d = (p.x - point.x) ** 2 + (p.y - point.y) ** 2;
      if (d < bestDistance) { best = u; bestDistance = d; }
    }
    return best;
  }

  function scatterEvents() {
    const canvas = $("scatter");
    canvas.addEventListener("click", (event) => {
      const unit = nearestUnit(localPoint(canvas, event));
      if (unit >= 0) toggleUnit(unit, event.shiftKey || event.ctrlKey || event.metaKey);
    });
    canvas.addEventListener("mousemove", (event) => {
      const unit = nearestUnit(localPoint(canvas, event));
      const g = gate();
      $("scatter-readout").textContent = unit < 0 ? "\u00a0" : unitLabel(g, unit) + ": mean " +
        fmt(g.mean[unit]) + ", left-saturated " + fmt(g.left_saturated[unit]) +
        ", right-saturated " + fmt(g.right_saturated[unit]) +
        (g.time_constant ? ", \u03c4 " + tau(g.time_constant[unit]) + " steps" : "");
    });
  }

  // ---------------------------------------------------------------------------------------
  // Timeline: the chosen units' gate over the input, under the tokens (text) or as lines.

  const TL = { label: 96, row: 24, lineHeight: 180, inputHeight: 70, gap: 14 };
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
    return { text: false, cell: Math.max(2, Math.min(14, 1100 / steps)), steps: steps };
  }

  function drawTimeline() {
    const canvas = $("timeline");
    const g = gate();
    const ex = example();
    const layout = timelineLayout();
    const units = state.units;
    const width = TL.label + layout.steps * layout.cell + 10;
    const v = values(state.example, g.name);
    drawn = {};
    for (const u of units) {
      const series = new Array(layout.steps);
      for (let t = 0; t < layout.steps; t++) series[t] = v[t * g.units + u];
      drawn[u] = series;
    }
    canvas.dataset.units = units.join(",");
    canvas.dataset.mode = layout.text ? "text" : "line";
    canvas.dataset.cellWidth = String(layout.cell);
    canvas.dataset.labelWidth = String(TL.label);
    canvas.dataset.rowHeight = String(TL.row);
    if (layout.text) {
      const ctx = sizeCanvas(canvas, width, Math.max(1, units.length) * TL.row + 4);
      ctx.font = "13px monospace";
      ctx.textBaseline = "middle";
      units.forEach((u, row) => {
        const y = row * TL.row;
        ctx.fillStyle = UNIT_COLORS[row];
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
      return;
    }
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
    units.forEach((u, k) => {
      ctx.fillStyle = UNIT_COLORS[k];
      ctx.fillText("unit " + u, 4, 16 + 14 * k);
      ctx.strokeStyle = UNIT_COLORS[k];
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      for (let t = 0; t < layout.steps; t++) {
        const y = TL.lineHeight * (1 - drawn[u][t]) + 0.5;
        if (t === 0) ctx.moveTo(x(t), y); else ctx.lineTo(x(t), y);
      }
      ctx.stroke();
    });
    if (inputs.length) {
      const top = TL.lineHeight + TL.gap;
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
  }

  function timelineEvents() {
    const canvas = $("timeline");
    canvas.addEventListener("mousemove", (event) => {
      const p = localPoint(canvas, event);
      const layout = timelineLayout();
      const t = Math.floor((p.x - TL.label) / layout.cell);
      const ex = example();
      if (t < 0 || t >= layout.steps || !state.units.length) { $("timeline-readout").textContent = "\u00a0"; return; }
      const token = ex.tokens ? ex.tokens[t] : null;
      let units = state.units;
      if (layout.text) {
        const row = Math.floor(p.y / TL.row);
        if (row < 0 || row >= units.length) { $("timeline-readout").textContent = "\u00a0"; return; }
        units = [units[row]];
      }
      $("timeline-readout").textContent = "step " + ex.steps[t] + quoted(token) + " \u00b7 " +
        units.map((u) => "unit " + u + ": " + fmt(drawn[u][t])).join(", ");
    });
  }

  // ---------------------------------------------------------------------------------------
  // Heatmap: units (rows) x steps (columns), tokens under the columns.

  const HM = { label: 44, tokens: 18 };
  let heatImage = null, heatKey = "";

  function heatLayout() {
    const g = gate();
    const steps = example().steps.length;
    return {
      cell: Math.max(1, Math.min(14, Math.floor(1100 / steps))),
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
    for (let t = 0; t < steps; t++) {
      for (let u = 0; u < g.units; u++) {
        const c = rgb(v[t * g.units + u]);
        const i = 4 * (u * steps + t);
        image.data[i] = c[0]; image.data[i + 1] = c[1]; image.data[i + 2] = c[2]; image.data[i + 3] = 255;
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
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(heatBitmap(), HM.label, 0, layout.steps * layout.cell, layout.units * layout.row);
    ctx.font = "10px sans-serif";
    ctx.fillStyle = "#333";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil(14 / layout.row));
    for (let u = 0; u < layout.units; u += every) ctx.fillText(String(u), HM.label - 10, (u + 0.5) * layout.row);
    state.units.forEach((u, k) => {
      ctx.fillStyle = UNIT_COLORS[k];
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

  function heatmapEvents() {
    const canvas = $("heatmap");
    canvas.addEventListener("mousemove", (event) => {
      const p = localPoint(canvas, event);
      const layout = heatLayout();
      const t = Math.floor((p.x - HM.label) / layout.cell);
      const u = Math.floor(p.y / layout.row);
      if (t < 0 || t >= layout.steps || u < 0 || u >= layout.units) {
        $("heatmap-readout").textContent = "\u00a0";
        return;
      }
      const g = gate();
      const ex = example();
      const v = values(state.example, g.name)[t * g.units + u];
      $("heatmap-readout").textContent = unitLabel(g, u) + " \u00b7 step " + ex.steps[t] +
        quoted(ex.tokens ? ex.tokens[t] : null) + " \u00b7 value " + fmt(v);
    });
    canvas.addEventListener("click", (event) => {
      const p = localPoint(canvas, event);
      const layout = heatLayout();
      const u = Math.floor(p.y / layout.row);
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
    select.addEventListener("change", () => { state.head = Number(select.value); drawAttention(); });
    const canvas = $("attention");
    canvas.addEventListener("mousemove", (event) => {
      const p = localPoint(canvas, event);
      const ex = example();
      const steps = ex.steps.length;
      const cell = Number(canvas.dataset.cellWidth);
      const k = Math.floor((p.x - HM.label) / cell), q = Math.floor(p.y / cell);
      if (k < 0 || k >= steps || q < 0 || q >= steps) { $("attention-readout").textContent = "\u00a0"; return; }
      const w = attentionValues()[(state.head * steps + q) * steps + k];
      const token = (t) => (ex.tokens ? " " + JSON.stringify(ex.tokens[t]) : "");
      $("attention-readout").textContent = "head " + state.head + " \u00b7 query step " + ex.steps[q] +
        token(q) + " \u00b7 key step " + ex.steps[k] + token(k) + " \u00b7 weight " + fmt(w);
    });
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
      for (const text of [row.gate, fmt(row.baseline), fmt(row.ablated),
        (row.change !== null && row.change >= 0 ? "+" : "") + fmt(row.change)]) {
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

  function drawAll() {
    $("gate-summary").textContent = gate().name + ": " + gate().units + " units, mean " +
      fmt(gate().mean.reduce((a, b) => a + b, 0) / gate().units) + " over all inspected steps";
    drawScatter();
    drawTimeline();
    drawHeatmap();
    drawAttention();
  }

  function init() {
    for (const id of ["layer", "direction", "gate"]) {
      $(id).addEventListener("change", () => chooseFromControls(id));
    }
    const exampleSelect = $("example");
    DATA.examples.forEach((ex, k) => {
      const option = document.createElement("option");
      option.value = String(k);
      option.textContent = "sequence " + ex.index + " (" + ex.steps.length + " steps)";
      exampleSelect.appendChild(option);
    });
    exampleSelect.addEventListener("change", () => {
      state.example = Number(exampleSelect.value);
      drawAll();
    });
    $("unit-list").addEventListener("change", () => {
      selectUnits(Array.from($("unit-list").selectedOptions).map((o) => Number(o.value)));
    });
    $("clear-units").addEventListener("click", () => selectUnits([]));
    scatterEvents();
    timelineEvents();
    heatmapEvents();
    attentionEvents();
    fillAblation();
    $("attention-section").hidden = !DATA.attention;
    $("ablation-section").hidden = !DATA.ablation;
    const first = GATES.find((g) => g.gate === "forget") || GATES.find((g) => g.gate === "update") || GATES[0];
    selectGate(first.name);
  }

  // For scripts and tests: the state, the values drawn, and where a unit's point is.
  window.gatenetsExplorer = {
    state: state,
    gates: GATES.map((g) => g.name),
    selectGate: selectGate,
    selectUnits: selectUnits,
    timelineSeries: () => JSON.parse(JSON.stringify(drawn)),
    // One sequence's text, or with null the text of every sequence.
    tokens: (k) => (k === null ? DATA.examples : [DATA.examples[k === undefined ? state.example : k]])
      .map((ex) => (ex.tokens || []).join("")).join(""),
    scatterPoint: (unit) => {
      const rect = $("scatter").getBoundingClientRect();
      const p = scatterXY(unit);
      return { x: rect.left + p.x, y: rect.top + p.y };
    },
  };

  init();
})();
