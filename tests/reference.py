"""Independent NumPy references for the cells: a few lines each, written from the equations."""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def params(cell):
    """The cell's parameters as float64 NumPy arrays."""
    out = {}
    for name in (
        "kernel",
        "recurrent_kernel",
        "bias",
        "recurrent_bias",
        "peephole_weights",
        "proj_kernel",
    ):
        if hasattr(cell, name):
            out[name] = np.asarray(getattr(cell, name)[...], np.float64)
    return out


def lstm(cell, x, c0=None, h0=None):
    """x: [batch, time, in]. Returns (outputs [batch, time, out], c, h, gates dict of [b, t, H])."""
    p = params(cell)
    batch, time, _ = x.shape
    hidden = cell.hidden_features
    c = np.zeros((batch, hidden)) if c0 is None else np.asarray(c0, np.float64)
    h = np.zeros((batch, cell.output_features)) if h0 is None else np.asarray(h0, np.float64)
    W, U = p["kernel"], p["recurrent_kernel"]
    b = p.get("bias", 0.0) + p.get("recurrent_bias", 0.0)
    peep = p.get("peephole_weights", np.zeros((3, hidden)))
    outs, gates = [], {"input": [], "forget": [], "output": []}
    for t in range(time):
        z = x[:, t] @ W + h @ U + b
        zi, zf, zg, zo = (z[:, k * hidden : (k + 1) * hidden] for k in range(4))
        i = sigmoid(zi + peep[0] * c)
        f = sigmoid(zf + peep[1] * c)
        c = f * c + i * np.tanh(zg)
        o = sigmoid(zo + peep[2] * c)
        h = o * np.tanh(c)
        if "proj_kernel" in p:
            h = h @ p["proj_kernel"]
        outs.append(h)
        for name, value in zip(("input", "forget", "output"), (i, f, o), strict=True):
            gates[name].append(value)
    return np.stack(outs, 1), c, h, {k: np.stack(v, 1) for k, v in gates.items()}


def gru(cell, x, h0=None):
    """x: [batch, time, in]. Returns (outputs, h, gates dict)."""
    p = params(cell)
    batch, time, _ = x.shape
    H = cell.hidden_features
    h = np.zeros((batch, H)) if h0 is None else np.asarray(h0, np.float64)
    W, U = p["kernel"], p["recurrent_kernel"]
    bi = p.get("bias", np.zeros(3 * H))
    bh = p.get("recurrent_bias", np.zeros(3 * H))
    outs, gates = [], {"reset": [], "update": []}
    for t in range(time):
        xi = x[:, t] @ W + bi
        if cell.reset_after:
            hh = h @ U + bh
            r = sigmoid(xi[:, :H] + hh[:, :H])
            z = sigmoid(xi[:, H : 2 * H] + hh[:, H : 2 * H])
            n = np.tanh(xi[:, 2 * H :] + r * hh[:, 2 * H :])
        else:
            r = sigmoid(xi[:, :H] + h @ U[:, :H])
            z = sigmoid(xi[:, H : 2 * H] + h @ U[:, H : 2 * H])
            n = np.tanh(xi[:, 2 * H :] + (r * h) @ U[:, 2 * H :])
        h = (1 - z) * n + z * h
        outs.append(h)
        gates["reset"].append(r)
        gates["update"].append(z)
    return np.stack(outs, 1), h, {k: np.stack(v, 1) for k, v in gates.items()}
