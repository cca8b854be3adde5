"""A small causal transformer of gated blocks: the ``"attention"`` model of the tasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets._typing import Array
from gatenets.attention import GatedAttention
from gatenets.blocks import GatedFeedForward
from gatenets.gates import merge_traces, resolve_overrides

POSITIONS = ("sinusoidal", "learned")
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


class GatedTransformer(nnx.Module):
    r"""A stack of pre-norm causal gated-attention blocks, with the call of a recurrent stack.

    .. math::
        x^{(0)}_t = W_{in} u_t + b_{in} + p_t \\
        a^{(k)} = x^{(k)} + \mathrm{GatedAttention}_{causal}(\mathrm{LN}(x^{(k)})) \\
        x^{(k+1)} = a^{(k)} + \mathrm{GatedFeedForward}(\mathrm{LN}(a^{(k)})) \\
        y = \mathrm{LN}(x^{(K)})

    :math:`p_t` is the sinusoidal encoding of step :math:`t` or a learned vector per step.
    Padded steps are never attended to, so an output at a valid step is the same whatever the
    padding holds. Gate traces name each part ``"block{k}/attention"`` (the sigmoid on each
    head's output) and ``"block{k}/feed_forward"`` (SwiGLU's sigmoid factor).

    Args:
      in_features: size of each input step.
      hidden_features: width of the residual stream.
      num_layers: number of blocks.
      num_heads: attention heads; None takes the largest of 4, 2, 1 that divides
        ``hidden_features``.
      feedforward_features: hidden units of each feed-forward block; None means
        ``2 * hidden_features``.
      positions: ``"sinusoidal"`` or ``"learned"``.
      max_length: the longest sequence, needed by learned positions.
      rngs: random streams for parameter initialisation.

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
        positions: str = "sinusoidal",
        max_length: int | None = None,
        rngs: nnx.Rngs,
    ):
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int; got {num_layers!r}.")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}.")
        if positions == "learned" and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(
                f"max_length must be a positive int with learned positions; got {max_length!r}."
            )
        if num_heads is None:
            num_heads = next(n for n in (4, 2, 1) if hidden_features % n == 0)
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
            [GatedAttention(hidden_features, num_heads, rngs=rngs) for _ in range(num_layers)]
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
    def paths(self) -> tuple[str, ...]:
        """Names of the parts in gate traces and overrides."""
        return tuple(f"block{k}/{part}" for k in range(self.num_layers) for part in PARTS)

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        mask: Array | None = None,
        return_carry: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, Any] | None = None,
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

        Returns:
          ``outputs`` ``[batch, time, hidden_features]``, preceded by None with
          ``return_carry`` and followed by the trace with ``return_gates``.
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
        x = self.project(inputs)
        if self.position_embed is None:
            x = x + jnp.asarray(sinusoidal_positions(time, self.hidden_features), x.dtype)[None]
        else:
            x = x + self.position_embed(jnp.arange(time))[None]
        traces = []
        for k in range(self.num_layers):
            sublayers = (
                ("attention", self.attention_norms[k], self.attentions[k], {"causal": True}),
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
                if return_gates:
                    out, trace = out
                    traces.append(trace.prefixed(f"block{k}"))
                x = x + out
        result: tuple = (self.final_norm(x),)
        if return_carry:
            result = (None, *result)
        if return_gates:
            result = (*result, merge_traces(traces))
        return result[0] if len(result) == 1 else result


def _own(overrides: dict[str, Any], layer: nnx.Module) -> dict[str, Any] | None:
    """The overrides of the gates ``layer`` has: a block-wide scope names both layers' gates."""
    own = {name: value for name, value in overrides.items() if name in layer.gate_names}
    return own or None
