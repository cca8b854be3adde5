"""A small built-in character-level task, so that inspection works without a checkpoint.

The text is the source code of a few modules of Python's standard library (already on every
machine; nothing is downloaded): quotes, brackets, indentation and line lengths give a
character model long-range structure whose tracking shows up in its gates (Karpathy, Johnson &
Fei-Fei 2015). The model is ``Embed -> LSTM -> Linear``, trained with Adam on next-character
cross-entropy; a plain sigmoid RNN of the same size is the contrast for the gradient probe.
"""

from __future__ import annotations

import inspect as _pyinspect
import time as _time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gatenets.inspect.probe import PlainRNNCell
from gatenets.recurrent import LSTM

_SOURCES = ("textwrap", "string", "argparse", "json.decoder", "json.encoder")


class CharBatch(NamedTuple):
    """Character ids ``[batch, time]``: ``inputs`` and the next characters ``targets``."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None


class CharCorpus(NamedTuple):
    """A text and its character vocabulary."""

    text: str
    vocabulary: list[str]
    ids: np.ndarray

    def decode(self, ids: Any) -> str:
        return "".join(self.vocabulary[int(i)] for i in np.asarray(ids).reshape(-1))

    def batches(self, batch_size: int, length: int, *, seed: int) -> Iterator[CharBatch]:
        """Endless random windows of ``length + 1`` characters."""
        rng = np.random.default_rng(seed)
        while True:
            starts = rng.integers(0, len(self.ids) - length - 1, batch_size)
            windows = self.ids[starts[:, None] + np.arange(length + 1)]
            yield CharBatch(windows[:, :-1], windows[:, 1:], None)


def builtin_corpus(max_chars: int | None = None) -> CharCorpus:
    """The standard-library source text as a :class:`CharCorpus` (ASCII, tabs as spaces).

    Example:
      >>> from gatenets.inspect.builtin import builtin_corpus
      >>> corpus = builtin_corpus(max_chars=200)
      >>> corpus.decode(corpus.ids[:3]) == corpus.text[:3]
      True
      >>> batch = next(corpus.batches(2, 8, seed=0))
      >>> batch.inputs.shape, bool((batch.inputs[:, 1:] == batch.targets[:, :-1]).all())
      ((2, 8), True)
    """
    import importlib

    parts = [_pyinspect.getsource(importlib.import_module(name)) for name in _SOURCES]
    text = "".join(parts).replace("\t", "    ")
    text = "".join(c if 32 <= ord(c) < 127 or c == "\n" else "?" for c in text)
    if max_chars is not None:
        text = text[:max_chars]
    vocabulary = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocabulary)}
    ids = np.array([lookup[c] for c in text], np.int32)
    return CharCorpus(text, vocabulary, ids)


class CharModel(nnx.Module):
    """``Embed -> recurrent layer -> Linear`` next-character model.

    Called as ``model(ids, *, mask=None, return_gates=False, gate_overrides=None)``; returns
    logits ``[batch, time, vocab]`` (and a :class:`~gatenets.GateTrace` with ``return_gates``).

    Args:
      vocab_size: number of characters.
      hidden: recurrent state size.
      kind: ``"lstm"`` (gatenets LSTM, forget bias 1) or ``"plain"`` (sigmoid
        :class:`~gatenets.inspect.probe.PlainRNNCell`, which has no gates).
      rngs: random streams.
    """

    def __init__(self, vocab_size: int, hidden: int, *, kind: str = "lstm", rngs: nnx.Rngs):
        if kind not in ("lstm", "plain"):
            raise ValueError(f"kind must be 'lstm' or 'plain'; got {kind!r}.")
        self.kind = kind
        self.embed = nnx.Embed(vocab_size, hidden, rngs=rngs)
        if kind == "lstm":
            self.rnn = LSTM(hidden, hidden, rngs=rngs)
        else:
            self.rnn = PlainRNNCell(hidden, hidden, activation="sigmoid", rngs=rngs)
        self.head = nnx.Linear(hidden, vocab_size, rngs=rngs)

    @property
    def cell(self) -> Any:
        return self.rnn.cell if self.kind == "lstm" else self.rnn

    def __call__(self, ids, *, mask=None, return_gates=False, gate_overrides=None):
        x = self.embed(ids)
        if self.kind == "lstm":
            out = self.rnn(x, mask=mask, return_gates=return_gates, gate_overrides=gate_overrides)
            hidden, trace = out if return_gates else (out, None)
        else:
            if return_gates or gate_overrides:
                raise ValueError("a plain RNN has no gates to return or override.")
            hidden = _plain_scan(self.rnn, x)
            trace = None
        logits = self.head(hidden)
        return (logits, trace) if return_gates else logits


def _plain_scan(cell: PlainRNNCell, x: jax.Array) -> jax.Array:
    def body(carry, x_t):
        carry, h, _ = cell.step(carry, x_t)
        return carry, h

    carry = cell.initialize_carry((x.shape[0], cell.in_features))
    _, hs = jax.lax.scan(body, carry, cell.project(jnp.swapaxes(x, 0, 1)))
    return jnp.swapaxes(hs, 0, 1)


def cross_entropy(logits: jax.Array, batch: CharBatch) -> jax.Array:
    """Mean next-character cross-entropy in nats."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets))


def bits_per_char(logits: Any, batch: CharBatch) -> float:
    """Mean next-character cross-entropy in bits (the char-LM metric)."""
    return float(cross_entropy(logits, batch)) / float(np.log(2.0))


@nnx.jit
def _train_step(model, optimizer, inputs, targets):
    def loss_fn(model):
        logits = model(inputs)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train_char_model(
    corpus: CharCorpus,
    *,
    kind: str = "lstm",
    hidden: int = 64,
    steps: int = 300,
    batch_size: int = 32,
    length: int = 64,
    learning_rate: float = 1e-2,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> tuple[CharModel, list[float]]:
    """Trains a :class:`CharModel` on ``corpus``; returns it and the per-step losses (nats)."""
    model = CharModel(len(corpus.vocabulary), hidden, kind=kind, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(
        model,
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate)),
        wrt=nnx.Param,
    )
    losses: list[float] = []
    start = _time.perf_counter()
    batches = corpus.batches(batch_size, length, seed=seed)
    for step in range(1, steps + 1):
        batch = next(batches)
        losses.append(float(_train_step(model, optimizer, batch.inputs, batch.targets)))
        if log is not None and (step == 1 or step % max(1, steps // 5) == 0):
            ms = 1000 * (_time.perf_counter() - start) / step
            bits = np.mean(losses[-20:]) / np.log(2.0)
            log(f"{kind} step {step:4d}: {bits:.3f} bits/char ({ms:.1f} ms/step)")
    return model, losses
