"""Independent NumPy (float64) references for the attention layers, written from the papers'
equations with explicit loops over heads, and sharing nothing with gatenets but the weights."""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def allowed_keys(batch, time, lengths=None, causal=False):
    """``[batch, query, key]`` True where the query may attend to the key."""
    allowed = np.ones((batch, time, time), bool)
    if lengths is not None:
        for b, n in enumerate(lengths):
            allowed[b, :, n:] = False
    if causal:
        allowed &= np.tril(np.ones((time, time), bool))
    return allowed


def f64(x):
    return np.asarray(x, np.float64)


def rope(x, positions, rotary_dim=None, base=10000.0):
    """Hugging Face Llama's ``apply_rotary_pos_emb`` for one head: ``x`` ``[time, dim]``.

    ``inv_freq = 1 / base ** (arange(0, d, 2) / d)``, ``emb = cat(freqs, freqs)``,
    ``x * cos(emb) + rotate_half(x) * sin(emb)`` with ``rotate_half(x) = cat(-x2, x1)``, on
    the first ``rotary_dim`` features (the rest pass, as Qwen's partial rotary factor).
    """
    x = f64(x)
    d = x.shape[-1] if rotary_dim is None else rotary_dim
    inv_freq = 1.0 / base ** (np.arange(0, d, 2) / d)
    freqs = np.outer(np.asarray(positions, np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    rot, rest = x[..., :d], x[..., d:]
    rotate_half = np.concatenate([-rot[..., d // 2 :], rot[..., : d // 2]], axis=-1)
    return np.concatenate([rot * np.cos(emb) + rotate_half * np.sin(emb), rest], axis=-1)


def multi_head_attention(x, p, allowed, gate=None, gate_kind=None, rope_args=None):
    """Softmax attention with an optional gate on each head's output.

    ``p`` holds wq [F, H, D], bq [H, D], wk/wv [F, Hkv, D], bk/bv [Hkv, D], wo [H, D, O], bo [O],
    and for a gate wg [F, H, D] or [F, H] with bg. ``gate`` (if given) replaces the sigmoid.
    Returns (output, weights [B, H, T, T], gate values used).
    """
    x = f64(x)
    batch, time, _ = x.shape
    heads, head_dim = p["wq"].shape[1:]
    group = heads // p["wk"].shape[1]
    out_heads = np.zeros((batch, time, heads, head_dim))
    weights = np.zeros((batch, heads, time, time))
    for b in range(batch):
        for h in range(heads):
            q = x[b] @ p["wq"][:, h] + p["bq"][h]
            k = x[b] @ p["wk"][:, h // group] + p["bk"][h // group]
            v = x[b] @ p["wv"][:, h // group] + p["bv"][h // group]
            if rope_args is not None:
                q = rope(q, np.arange(time), **rope_args)
                k = rope(k, np.arange(time), **rope_args)
            logits = np.where(allowed[b], q @ k.T / np.sqrt(head_dim), -np.inf)
            weights[b, h] = softmax(logits)
            out_heads[b, :, h] = weights[b, h] @ v
    if gate_kind is not None:
        if gate is None:
            gate = sigmoid(np.tensordot(x, p["wg"], axes=([2], [0])) + p["bg"])
        gate = np.broadcast_to(gate, out_heads.shape[:2] + p["bg"].shape)
        out_heads = out_heads * (gate if gate_kind == "elementwise" else gate[..., None])
    output = np.einsum("bthd,hdo->bto", out_heads, p["wo"]) + p["bo"]
    return output, weights, gate


def gau(x, p, allowed, u_gate="silu", gate=None, max_relative_distance=None):
    """The GAU as documented: relu(q.k / sqrt(s) + r)^2 / (number of attended keys)."""
    x = f64(x)
    batch, time, _ = x.shape
    e = p["wo"].shape[0]
    s = p["gamma"].shape[1]
    a = x @ p["w"] + p["b"]
    pre_u, pre_v, pre_z = a[..., :e], a[..., e : 2 * e], a[..., 2 * e :]
    if gate is None:
        gate = sigmoid(pre_u)
    u = pre_u * gate if u_gate == "silu" else gate * np.ones_like(pre_u)
    v, z = silu(pre_v), silu(pre_z)
    out = np.zeros((batch, time, e))
    for b in range(batch):
        q = z[b] * p["gamma"][0] + p["beta"][0]
        k = z[b] * p["gamma"][1] + p["beta"][1]
        for i in range(time):
            row = np.zeros(e)
            keys = [j for j in range(time) if allowed[b, i, j]]
            for j in keys:
                logit = q[i] @ k[j] / np.sqrt(s)
                if max_relative_distance is not None:
                    d = int(np.clip(i - j, -max_relative_distance, max_relative_distance))
                    logit += p["rel"][d + max_relative_distance]
                row += max(logit, 0.0) ** 2 * v[b, j]
            out[b, i] = row / max(len(keys), 1)
    return (u * out) @ p["wo"] + p["bo"], gate


def sigmoid_attention(x, p, allowed, bias=None, weights_override=None, rope_args=None):
    """sigma(q.k / sqrt(d) + b) V with b = -log(number of attended keys) unless given."""
    x = f64(x)
    batch, time, _ = x.shape
    heads, head_dim = p["wq"].shape[1:]
    group = heads // p["wk"].shape[1]
    out_heads = np.zeros((batch, time, heads, head_dim))
    weights = np.zeros((batch, time, heads, time))
    for b in range(batch):
        n = np.maximum(allowed[b].sum(-1, keepdims=True), 1)
        for h in range(heads):
            q = x[b] @ p["wq"][:, h] + p["bq"][h]
            k = x[b] @ p["wk"][:, h // group] + p["bk"][h // group]
            v = x[b] @ p["wv"][:, h // group] + p["bv"][h // group]
            if rope_args is not None:
                q = rope(q, np.arange(time), **rope_args)
                k = rope(k, np.arange(time), **rope_args)
            b_row = -np.log(n) if bias is None else bias
            w = sigmoid(q @ k.T / np.sqrt(head_dim) + b_row)
            if weights_override is not None:
                w = np.full_like(w, weights_override)
            w = np.where(allowed[b], w, 0.0)
            weights[b, :, h] = w
            out_heads[b, :, h] = w @ v
    return np.einsum("bthd,hdo->bto", out_heads, p["wo"]) + p["bo"], weights


def route(x, kernel, expert_bias, top_k, scale=1.0, normalize=True):
    """DeepSeek-V3 routing for each token separately: returns (experts, weights, scores)."""
    scores = sigmoid(f64(x) @ f64(kernel))
    experts = np.zeros(scores.shape[:-1] + (top_k,), int)
    weights = np.zeros(scores.shape[:-1] + (top_k,))
    for index in np.ndindex(scores.shape[:-1]):
        s = scores[index]
        chosen = np.argsort(-(s + expert_bias), kind="stable")[:top_k]
        experts[index] = chosen
        w = s[chosen]
        weights[index] = (w / w.sum() if normalize else w) * scale
    return experts, weights, scores


def swiglu_expert(x, w_gate, w_up, w_down):
    return (silu(x @ w_gate) * (x @ w_up)) @ w_down
