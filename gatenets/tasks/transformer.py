"""A small causal transformer of gated blocks: the ``"attention"`` model of the tasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._layers import check_int, scoped
from gatenets._typing import Array
from gatenets.attention import GatedAttention, RoPE
from gatenets.blocks import GatedFeedForward
from gatenets.gates import merge_traces, resolve_overrides

POSITIONS = ("rope", "sinusoidal", "learned")
PARTS = ("attention", "feed_forward")
"""The parts of a block, in the order they run, as gate traces name them."""


def sinusoidal_positions(length: int, features: int) -> np.ndarray:
    """The positional encoding of Vaswani et al. (2017), ``[length, features]`` float32.

    Even columns hold :math:`\\sin(t / 10000^{2i/d})`, odd columns :math:`\\cos` of the same
    angle.

    Example:
      >>> from gatenets.tasks.transformer import sinusoidal_positions
      >>> sinusoidal_positions(3, 4)[:, :2].astype(float).round(3).tolist()
      [[0.0, 1.0], [0.841, 0.54], [0.909, -0.416]]
    """
    angles = np.arange(length)[:, None] / 10000.0 ** (
        2 * (np.arange(features)[None, :] // 2) / features
    )
    return np.where(np.arange(features) % 2 == 0, np.sin(angles), np.cos(angles)).astype(np.float32)


def _sinusoidal_position(step: Array, features: int) -> Array:
    """Row ``step`` (a traced int) of :func:`sinusoidal_positions`, ``[features]`` float32."""
    exponents = 2 * (np.arange(features) // 2) / features
    angles = jnp.asarray(step, jnp.float32) / jnp.asarray(10000.0**exponents, jnp.float32)
    return jnp.where(np.arange(features) % 2 == 0, jnp.sin(angles), jnp.cos(angles))


def _check_layout(hidden_features, num_layers, num_heads, positions, max_length, rope) -> int:
    """Checks the transformer's arguments; returns the number of heads (chosen when None)."""
    check_int(num_layers, "num_layers")
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}.")
    if positions == "learned" and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(
            f"max_length must be a positive int with learned positions; got {max_length!r}."
        )
    if rope is not None and positions != "rope":
        raise ValueError(f"rope is used with positions='rope' only; got positions={positions!r}.")
    if num_heads is not None:
        return num_heads
    # Rotary positions rotate pairs of features: with them, heads of an even size.
    even = positions == "rope"
    for n in (4, 2, 1):
        if hidden_features % n == 0 and not (even and (hidden_features // n) % 2):
            return n
    raise ValueError(
        f"positions='rope' rotates pairs of features and needs an even head size; "
        f"hidden_features={hidden_features} is odd. Use positions='sinusoidal'."
    )


class GatedTransformer(nnx.Module):
    r"""A stack of pre-norm causal gated-attention blocks, with the call of a recurrent stack.

    .. math::
        x^{(0)}_t = W_{in} u_t + b_{in} + p_t \\
        a^{(k)} = x^{(k)} + \mathrm{GatedAttention}_{causal}(\mathrm{LN}(x^{(k)})) \\
        x^{(k+1)} = a^{(k)} + \mathrm{GatedFeedForward}(\mathrm{LN}(a^{(k)})) \\
        y = \mathrm{LN}(x^{(K)})

    :math:`p_t` is 0 with ``positions="rope"`` (the default: rotary positions,
    :class:`~gatenets.RoPE` in the Llama/Qwen layout, rotate queries and keys inside every
    attention layer, so attention sees only the distance between steps), the sinusoidal
    encoding of step
    :math:`t`, or a learned vector per step.
    Padded steps are never attended to, so an output at a valid step is the same whatever the
    padding holds. Gate traces name each part ``"block{k}/attention"`` (the sigmoid on each
    head's output) and ``"block{k}/feed_forward"`` (SwiGLU's sigmoid factor).

    Args:
      in_features: size of each input step.
      hidden_features: width of the residual stream.
      num_layers: number of blocks.
      num_heads: attention heads; None takes the largest of 4, 2, 1 that divides
        ``hidden_features`` (into heads of an even size with ``"rope"``).
      feedforward_features: hidden units of each feed-forward block; None means
        ``2 * hidden_features``.
      positions: ``"rope"``, ``"sinusoidal"`` or ``"learned"``.
      max_length: the longest sequence, needed by learned positions.
      rope: the rotary embedding of ``positions="rope"``; None means ``RoPE()`` (every
        feature of each head rotated, base 10,000).
      rngs: random streams for parameter initialisation.

    Decoding: :meth:`init_cache`, then ``decode=True`` with one step per call, each attention
    layer reading and filling its key/value cache. Past the cache's length each layer keeps
    the latest steps (a sliding window); that equals recomputing the window from scratch when
    attention sees only distances (``"rope"``) and there is one block
    (:attr:`decode_matches_window`).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets.tasks import GatedTransformer
      >>> stack = GatedTransformer(2, 8, num_layers=2, rngs=nnx.Rngs(0))
      >>> y, trace = stack(jnp.ones((3, 5, 2)), return_gates=True)
      >>> y.shape, sorted(trace.flat())[:2]
      ((3, 5, 8), ['block0/attention/output', 'block0/feed_forward/hidden'])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_layers: int = 1,
        num_heads: int | None = None,
        feedforward_features: int | None = None,
        positions: str = "rope",
        max_length: int | None = None,
        rope: RoPE | None = None,
        rngs: nnx.Rngs,
    ):
        num_heads = _check_layout(
            hidden_features, num_layers, num_heads, positions, max_length, rope
        )
        if positions == "rope" and rope is None:
            rope = RoPE()
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.out_features = hidden_features
        self.num_layers = num_layers
        self.positions = positions
        self.max_length = max_length
        self.project = nnx.Linear(in_features, hidden_features, rngs=rngs)
        self.position_embed = (
            nnx.Embed(max_length, hidden_features, rngs=rngs) if positions == "learned" else None
        )
        self.attention_norms = nnx.List(
            [nnx.LayerNorm(hidden_features, rngs=rngs) for _ in range(num_layers)]
        )
        self.attentions = nnx.List(
            [
                GatedAttention(hidden_features, num_heads, rope=rope, rngs=rngs)
                for _ in range(num_layers)
            ]
        )
        self.feedforward_norms = nnx.List(
            [nnx.LayerNorm(hidden_features, rngs=rngs) for _ in range(num_layers)]
        )
        self.feedforwards = nnx.List(
            [
                GatedFeedForward(
                    hidden_features, feedforward_features or 2 * hidden_features, rngs=rngs
                )
                for _ in range(num_layers)
            ]
        )
        self.final_norm = nnx.LayerNorm(hidden_features, rngs=rngs)

    @property
    def decode_matches_window(self) -> bool:
        """Whether decoding past the cache's length computes what recomputing the last
        ``max_length`` steps from scratch computes: true with rotary positions (attention
        sees distances only) and one block (with more, a cached key of a deeper block
        remembers steps that have left the window)."""
        return self.positions == "rope" and self.num_layers == 1

    def init_cache(self, input_shape: tuple[int, ...], dtype: Any = jnp.float32) -> None:
        """Makes every attention layer's key/value cache for ``decode=True``.

        Args:
          input_shape: ``(batch, max_length, in_features)``.
          dtype: dtype of the cached keys and values.
        """
        shape = tuple(input_shape)
        if len(shape) != 3 or shape[2] != self.in_features:
            raise ValueError(
                "input_shape must be (batch, max_length, in_features) = (batch, max_length, "
                f"{self.in_features}); got {shape!r}."
            )
        for attention in self.attentions:
            attention.init_cache((shape[0], shape[1], self.hidden_features), dtype)

    @property
    def paths(self) -> tuple[str, ...]:
        """Names of the parts in gate traces and overrides."""
        return tuple(f"block{k}/{part}" for k in range(self.num_layers) for part in PARTS)

    def _add_positions(self, x: Array, decode: bool) -> Array:
        """``x`` plus the sinusoidal or learned positions of its steps (RoPE acts inside the
        attention instead); while decoding, the position of the cache's next step."""
        if decode:
            cache_index = self.attentions[0].cache_index
            if cache_index is None:
                raise ValueError("decode=True needs caches; call init_cache(input_shape) first.")
            step = cache_index[...]
            if self.positions == "sinusoidal":
                x = x + _sinusoidal_position(step, self.hidden_features).astype(x.dtype)[None, None]
            elif self.positions == "learned":
                x = x + self.position_embed(jnp.minimum(step, self.max_length - 1)[None])[None]
        elif self.positions == "sinusoidal":
            time = x.shape[1]
            x = x + jnp.asarray(sinusoidal_positions(time, self.hidden_features), x.dtype)[None]
        elif self.positions == "learned":
            x = x + self.position_embed(jnp.arange(x.shape[1]))[None]
        return x

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        mask: Array | None = None,
        return_carry: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, Any] | None = None,
        decode: bool = False,
        return_attention_weights: bool = False,
    ):
        """Runs the blocks over ``inputs``, each step seeing itself and the steps before it.

        Args:
          inputs: ``[batch, time, in_features]``.
          initial_carry: must be None: attention keeps no carry between calls.
          mask: ``[batch, time]`` booleans, True at valid steps.
          return_carry: put None (the carry it does not have) before the outputs, as a
            recurrent stack puts its carries.
          return_gates: also return a :class:`~gatenets.GateTrace` of every block.
          gate_overrides: ``{gate: value}`` for every block (``"output"`` for attention,
            ``"hidden"`` for feed-forward), or scoped by path: ``{"block1": {"output": 0.0}}``,
            ``{"block0/feed_forward": {"hidden": 1.0}}``.
          decode: one step ``[batch, 1, in_features]`` against the caches made by
            :meth:`init_cache` (static; no ``mask``). Learned positions past
            ``max_length`` reuse the last learned vector.
          return_attention_weights: also return a tuple of each block's ``[batch, heads,
            query, key]`` softmax weights (static; they cost a ``[T, T]`` array per block).

        Returns:
          ``outputs`` ``[batch, time, hidden_features]``, preceded by None with
          ``return_carry`` and followed by the trace with ``return_gates``, then the weights
          with ``return_attention_weights``.
        """
        if initial_carry is not None:
            raise ValueError(
                "initial_carry: the attention model keeps no carry between calls; got "
                f"{type(initial_carry).__name__}, expected None."
            )
        if getattr(inputs, "ndim", None) != 3:
            raise ValueError(
                "inputs must be [batch, time, in_features]; got shape "
                f"{getattr(inputs, 'shape', type(inputs).__name__)}."
            )
        time = inputs.shape[1]
        if self.position_embed is not None and time > self.max_length:
            raise ValueError(
                f"inputs: {time} steps, more than the max_length {self.max_length} of the "
                "learned positions."
            )
        overrides = resolve_overrides(
            gate_overrides, self.paths, GatedAttention.gate_names + GatedFeedForward.gate_names
        )
        x = self._add_positions(self.project(inputs), decode)
        attention_settings = {"decode": True} if decode else {"causal": True}
        attention_settings["return_attention_weights"] = return_attention_weights
        traces, weights = [], []
        for k in range(self.num_layers):
            sublayers = (
                ("attention", self.attention_norms[k], self.attentions[k], attention_settings),
                ("feed_forward", self.feedforward_norms[k], self.feedforwards[k], {}),
            )
            for part, norm, layer, settings in sublayers:
                out = layer(
                    norm(x),
                    mask=mask,
                    return_gates=return_gates,
                    gate_overrides=_own(overrides[f"block{k}/{part}"], layer),
                    **settings,
                )
                if part == "attention" and return_attention_weights:
                    *out, block_weights = out
                    weights.append(block_weights)
                    out = out[0] if len(out) == 1 else tuple(out)
                if return_gates:
                    out, trace = out
                    traces.append(trace.prefixed(f"block{k}"))
                x = x + out
        result: tuple = (self.final_norm(x),)
        if return_carry:
            result = (None, *result)
        if return_gates:
            result = (*result, merge_traces(traces))
        if return_attention_weights:
            result = (*result, tuple(weights))
        return result[0] if len(result) == 1 else result


def _own(overrides: dict[str, Any], layer: nnx.Module) -> dict[str, Any] | None:
    """The overrides of the gates ``layer`` has: a block-wide scope names both layers' gates."""
    own = {name: value for name, value in overrides.items() if name in layer.gate_names}
    return own or None
