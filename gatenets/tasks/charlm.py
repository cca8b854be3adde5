"""Character-level language modelling on the Python standard library's source, or any text."""

from __future__ import annotations

import hashlib
import math
import pathlib
import sysconfig
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._typing import Array
from gatenets.tasks.base import (
    Batch,
    SequenceModel,
    Task,
    check_int,
    check_split,
    cross_entropy,
    endless_batches,
    in_order,
)

STDLIB_FILES = (
    "argparse.py",
    "bisect.py",
    "collections/__init__.py",
    "dataclasses.py",
    "difflib.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "pprint.py",
    "random.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
)
"""The default corpus: these files of the running Python's standard library, in this order,
joined by newlines (about 530 kB on Python 3.11). The text differs a little between Python
versions, so bits per character are comparable only on the same version."""

SPLIT_FRACTIONS = {"train": (0.0, 0.9), "valid": (0.9, 0.95), "test": (0.95, 1.0)}


def stdlib_corpus() -> str:
    """The default corpus: :data:`STDLIB_FILES` read from the standard library, joined."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    return "\n".join((root / name).read_text(encoding="utf-8") for name in STDLIB_FILES)


class TextChangedError(ValueError):
    """The text file of a run is not the one it was trained on (its SHA-256 differs)."""


class CharLMTask(Task):
    """Character-level language modelling: predict each next character.

    The text (the standard library files :data:`STDLIB_FILES`, or ``text_file``) is split
    without shuffling: the first 90% trains, the next 5% validates, the last 5% tests. The
    vocabulary is the sorted set of characters of the whole text. Training batches are random
    windows of ``seq_len + 1`` characters; evaluation reads consecutive windows. Loss:
    cross-entropy; metric: bits per character, :math:`\\mathrm{CE} / \\ln 2`. Baseline: the
    unigram entropy of the training text in bits (a model that ignores context); there is no
    published number for this corpus.

    Options:
      text_file: path of a UTF-8 text file to model instead of the default corpus; kept as
        an absolute path, so that a run can be reloaded from any directory.
      seq_len: characters per training window.
      text_sha256: the SHA-256 of ``text_file`` (filled in when None). Given, as a saved run
        gives it back, a file whose contents changed since is refused, naming it: a resumed
        or inspected run never silently reads other data.

    Example:
      >>> from gatenets.tasks import get_task
      >>> task = get_task("charlm", seq_len=16)
      >>> batch = next(task.batches("train", 2, seed=0))
      >>> batch.inputs.shape, task.decode(task.encode("def f():")) == "def f():"
      ((2, 16), True)
    """

    name = "charlm"
    description = "character-level language model on Python stdlib source (or a text file)"
    metric = "bits_per_char"
    baseline_source = "unigram entropy of the training text (context-free model)"
    higher_is_better = False
    defaults = {
        "steps": 1000,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "hidden": 128,
        "eval_every": 250,
        "eval_batch_size": 64,
    }
    option_defaults = {"text_file": None, "seq_len": 100, "text_sha256": None}

    def __init__(self, **options):
        super().__init__(**options)
        seq_len = check_int(self.options["seq_len"], "seq_len", minimum=2)
        text_file = self.options["text_file"]
        if text_file is None:
            if self.options["text_sha256"] is not None:
                raise ValueError("text_sha256 is the checksum of text_file; give text_file too.")
            text = stdlib_corpus()
        else:
            path = pathlib.Path(text_file).absolute()
            if not path.is_file():
                raise FileNotFoundError(f"text_file: no such file {str(path)!r}.")
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            expected = self.options["text_sha256"]
            if expected is not None and expected != digest:
                raise TextChangedError(
                    f"text_file {str(path)!r} has changed since the run was trained on it "
                    f"(SHA-256 {digest[:16]}…, the run's {str(expected)[:16]}…); put the "
                    "original text back, or start a new run on the new text."
                )
            text = data.decode("utf-8")
            self.options["text_file"] = str(path)
            self.options["text_sha256"] = digest
        if not text:
            raise ValueError(f"text_file {text_file!r} is empty; a corpus needs text to model.")
        self.vocab: tuple[str, ...] = tuple(sorted(set(text)))
        self._index = {ch: i for i, ch in enumerate(self.vocab)}
        ids = self.encode(text)
        self._splits = {
            split: ids[int(low * len(ids)) : int(high * len(ids))]
            for split, (low, high) in SPLIT_FRACTIONS.items()
        }
        for split, part in self._splits.items():
            if len(part) < seq_len + 1:
                raise ValueError(
                    f"text is too short: the {split} split ({SPLIT_FRACTIONS[split]} of "
                    f"{len(ids)} characters) has {len(part)}, fewer than seq_len + 1 = "
                    f"{seq_len + 1}; give a longer text or a smaller seq_len."
                )
        counts = np.bincount(self._splits["train"], minlength=len(self.vocab))
        probabilities = counts[counts > 0] / counts.sum()
        self._unigram_bits = float(-(probabilities * np.log2(probabilities)).sum())

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def baseline(self) -> float:
        return self._unigram_bits

    @property
    def target(self) -> float:
        return 0.5 * self._unigram_bits

    @property
    def default_prompt(self) -> str:
        """``"def "`` when the vocabulary has its characters, else the text's first character."""
        if all(ch in self._index for ch in "def "):
            return "def "
        return self.vocab[int(self._splits["train"][0])]

    def encode(self, text: str) -> np.ndarray:
        """Character ids ``[len(text)]`` int32; raises on characters outside the vocabulary."""
        try:
            return np.array([self._index[ch] for ch in text], np.int32)
        except KeyError as err:
            raise ValueError(f"text: character {err.args[0]!r} is not in the vocabulary.") from None

    def decode(self, ids: Any) -> str:
        """The text of a sequence of character ids."""
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).reshape(-1))

    def make_model(self, model="lstm", hidden=None, *, rngs: nnx.Rngs, **kwargs):
        return SequenceModel(
            self.vocab_size,
            hidden or self.defaults["hidden"],
            self.vocab_size,
            model=model,
            embed_features=64,
            readout="all",
            rngs=rngs,
            **kwargs,
        )

    def batches(self, split: str, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Batch]:
        check_split(split)
        check_int(batch_size, "batch_size")
        ids, window = self._splits[split], self.options["seq_len"] + 1
        if split == "train":

            def draw(rng: np.random.Generator) -> Batch:
                return _windows(ids, rng.integers(0, len(ids) - window + 1, batch_size), window)

            yield from endless_batches(seed, start, draw)
            return
        # Consecutive windows overlapping by one character, so every character but the first
        # is predicted exactly once (up to the last partial window, which is dropped).
        count = (len(ids) - 1) // (window - 1)
        starts = np.arange(count) * (window - 1)
        for rows in in_order(count, batch_size):
            yield _windows(ids, starts[rows], window)

    def loss(self, outputs: Array, batch: Batch) -> Array:
        return cross_entropy(outputs, batch.targets, batch.mask)

    def metrics(self, outputs: Array, batch: Batch) -> dict[str, Array]:
        loss = self.loss(outputs, batch)
        return {"bits_per_char": loss / math.log(2.0), "cross_entropy": loss}

    def sample(
        self,
        model: SequenceModel,
        prompt: str = "def ",
        length: int = 200,
        *,
        temperature: float = 1.0,
        seed: int = 0,
        use_cache: bool = True,
    ) -> str:
        """Text generated by ``model`` after ``prompt``, one character at a time.

        A recurrent model carries its state from character to character. The attention model
        predicts each character from the last ``seq_len`` characters (the context it was
        trained on). With ``use_cache`` it reads the prompt's last ``seq_len`` characters
        once into its key/value caches and then decodes one character per step
        (:meth:`GatedTransformer.init_cache`), the whole generation in one compiled loop,
        as long as that computes what rereading the window computes: always while the text
        fits in the window, and past it when :attr:`GatedTransformer.decode_matches_window`
        (rotary positions and one block, the task's default model). Past the window a model
        without it rereads the last ``seq_len`` characters at every step, as
        ``use_cache=False`` does throughout. The text is the same either way (up to float
        rounding in the logits).

        Args:
          model: a model of this task (readout ``"all"`` over this vocabulary).
          prompt: text to start from (at least one character, all in the vocabulary).
          length: characters to generate.
          temperature: divides the logits before sampling: < 1 sharper, > 1 flatter.
          seed: sampling seed.
          use_cache: decode the attention model with its key/value caches.

        Returns:
          ``prompt`` followed by the generated characters.
        """
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number; got {temperature!r}.")
        check_int(length, "length", minimum=0)
        if not prompt:
            raise ValueError("prompt must hold at least one character; got ''.")
        if not isinstance(use_cache, bool):
            raise TypeError(f"use_cache must be a bool; got {type(use_cache).__name__}.")
        ids = self.encode(prompt)
        window = self.options["seq_len"]
        key = jax.random.key(seed)
        cached_steps = 0
        if model.recurrent:
            carry, logits = model(jnp.asarray(ids[None, :]), return_carry=True)
            last = logits[0, -1]
        elif use_cache and length > 0:
            # Generated characters that can be fed through the caches exactly: all of them
            # when decoding past the window matches the window, else those that fit in it.
            context = ids[-window:]
            fits = window - len(context)
            cached_steps = length - 1 if model.transformer.decode_matches_window else fits
            cached_steps = min(length - 1, cached_steps)
            # Decode a copy: the caches never become part of the caller's model (its state,
            # checkpoints and training stay as they were).
            model = nnx.clone(model)
            model.transformer.init_cache((1, window, model.transformer.in_features))
            for token in context:
                last = _decode_step(model, jnp.asarray(token, jnp.int32).reshape(1, 1))
        else:
            last = _window_step(model, *_window(ids, window))
        generated: list[int] = []
        if cached_steps > 0:
            # The first cached_steps + 1 characters in one compiled loop, with the same
            # random keys as the loop below.
            tokens, key = _generate(model, last, key, jnp.float32(temperature), cached_steps + 1)
            generated = [int(t) for t in np.asarray(tokens)]
            if len(generated) < length:  # the rest rereads the window (see above)
                context = np.concatenate([ids, np.asarray(generated, np.int32)])
                last = _window_step(model, *_window(context, window))
        for _ in range(length - len(generated)):
            key, subkey = jax.random.split(key)
            token = jax.random.categorical(subkey, last / temperature)
            generated.append(int(token))
            if model.recurrent:
                carry, logits = _next_step(model, carry, token.reshape(1, 1).astype(jnp.int32))
                last = logits[0, -1]
            elif len(generated) < length:
                context = np.concatenate([ids, np.asarray(generated, np.int32)])
                last = _window_step(model, *_window(context, window))
        return prompt + self.decode(generated)


def _window(ids: np.ndarray, window: int) -> tuple[Array, Array]:
    """The last ``window`` ids as a ``[1, window]`` batch, zero-padded on the right when there
    are fewer, and the index of the last real one. One shape for every step: one compile."""
    ids = ids[-window:]
    tokens = np.zeros((1, window), np.int32)
    tokens[0, : len(ids)] = ids
    return jnp.asarray(tokens), jnp.asarray(len(ids) - 1)


def _windows(ids: np.ndarray, starts: np.ndarray, window: int) -> Batch:
    """The batch of the ``window``-character windows of ``ids`` at ``starts``: inputs are each
    window's first ``window - 1`` characters, targets its last ``window - 1``."""
    chunk = ids[starts[:, None] + np.arange(window)[None, :]]
    return Batch(chunk[:, :-1], chunk[:, 1:], None)


@nnx.jit
def _next_step(model, carry, token):
    return model(token, initial_carry=carry, return_carry=True)


def _decode_logits(model, token):
    """Logits ``[vocab]`` after one more token ``[1, 1]`` through the caches."""
    x = model.embed(token)
    return model.head(model.transformer(x, decode=True))[0, -1]


_decode_step = nnx.jit(_decode_logits)


@nnx.jit(static_argnums=4)
def _generate(model, last, key, temperature, steps):
    """``steps`` characters sampled from ``last`` onwards, all but the last fed back through
    the caches: ``(tokens [steps], key)``."""
    graphdef, state = nnx.split(model)

    def body(carry, _):
        state, last, key = carry
        key, subkey = jax.random.split(key)
        token = jax.random.categorical(subkey, last / temperature)
        stepped = nnx.merge(graphdef, state)
        last = _decode_logits(stepped, token.reshape(1, 1).astype(jnp.int32))
        return (nnx.state(stepped), last, key), token

    (state, last, key), tokens = jax.lax.scan(body, (state, last, key), None, length=steps - 1)
    key, subkey = jax.random.split(key)
    final = jax.random.categorical(subkey, last / temperature)
    nnx.update(model, state)
    return jnp.concatenate([tokens, final[None]]), key


@nnx.jit
def _window_step(model, tokens, last):
    """Logits after ``tokens[0, last]``: a causal model never sees the padding after it."""
    return model(tokens)[0, last]
