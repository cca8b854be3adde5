"""Sigmoid-gated position-wise layers: the SwiGLU/GLU feed-forward block and a binary head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gatenets import _layers
from gatenets._layers import scoped
from gatenets._typing import Array, Dtype, Initializer
from gatenets.gates import (
    GateOverride,
    apply_overrides,
    check_gate_names,
    sequence_mask,
    zero_invalid,
)

ACTIVATIONS = ("silu", "sigmoid")


class GatedFeedForwardGates(NamedTuple):
    """Post-sigmoid gate of :class:`GatedFeedForward`.

    Attributes:
      hidden: ``[batch, time, hidden_features]``, the sigmoid factor on each hidden unit.
    """

    hidden: Array


class BinaryHeadGates(NamedTuple):
    """The output sigmoid of :class:`BinaryHead`.

    Attributes:
      probability: ``[batch, time]`` probability of the positive class.
    """

    probability: Array


def _check_position_wise_call(
    layer: Any,
    inputs: Any,
    mask: Array | None,
    seq_lengths: Array | None,
    return_gates: Any,
    gate_overrides: Any,
) -> Array | None:
    """The checks a position-wise layer's call starts with; returns the ``[batch, time]``
    mask of valid steps when gates or a mask are asked for, else None."""
    where = type(layer).__name__
    _layers.check_static_flag(return_gates, "return_gates", where)
    _layers.check_feature_inputs(inputs, layer.in_features, where)
    check_gate_names(gate_overrides, layer.gate_names, where)
    if return_gates or mask is not None or seq_lengths is not None:
        return _trace_mask(inputs, mask, seq_lengths, where)
    return None


def _trace_mask(
    inputs: Array, mask: Array | None, seq_lengths: Array | None, where: str
) -> Array | None:
    """The ``[batch, time]`` mask of a position-wise layer, which needs 3-D inputs to have one."""
    if inputs.ndim != 3:
        raise ValueError(
            f"{where}: return_gates, mask and seq_lengths need inputs of shape [batch, time, "
            f"in_features]; got {tuple(inputs.shape)}."
        )
    return sequence_mask(inputs.shape[0], inputs.shape[1], seq_lengths=seq_lengths, mask=mask)


class GatedFeedForward(nnx.Module):
    r"""Gated linear unit feed-forward block: SwiGLU (Shazeer, 2020) or the sigmoid GLU.

    .. math::
        A = X W^{gate} + b^{gate}, \qquad G = \sigma(A) \\
        H = (A \odot G) \odot (X W^{up} + b^{up}) \quad (\texttt{activation="silu"}) \\
        H = G \odot (X W^{up} + b^{up}) \quad (\texttt{activation="sigmoid"}) \\
        Y = H W^{down} + b^{down}

    :math:`\operatorname{SiLU}(a) = a\,\sigma(a)`, so SwiGLU hides a sigmoid gate :math:`G` on
    every hidden unit; that factor is the gate returned and overridden. ``"sigmoid"`` gives
    the original GLU of Dauphin et al. (2017).

    Args:
      in_features: size of the last axis of the inputs.
      hidden_features: number of hidden units.
      out_features: size of the output; defaults to ``in_features``.
      activation: ``"silu"`` (SwiGLU) or ``"sigmoid"`` (GLU).
      use_bias: whether the three projections have biases (LLaMA-style blocks do not).
      kernel_init: initialiser of the kernels.
      bias_init: initialiser of the biases.
      dtype: compute dtype; None promotes inputs and parameters.
      param_dtype: dtype of the parameters.
      precision: matrix-product precision (:class:`jax.lax.Precision`) of the three
        projections, as in :class:`flax.nnx.Linear`; None is JAX's default (TF32 for float32
        on NVIDIA GPUs).
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets import GatedFeedForward
      >>> ffn = GatedFeedForward(4, 16, rngs=nnx.Rngs(0))
      >>> y, trace = ffn(jnp.ones((2, 3, 4)), return_gates=True)
      >>> y.shape, trace.gates["feed_forward"].hidden.shape
      ((2, 3, 4), (2, 3, 16))

    References:
      Shazeer, "GLU Variants Improve Transformer", 2020, arXiv:2002.05202;
      Dauphin et al., "Language Modeling with Gated Convolutional Networks", ICML 2017.
    """

    gate_names = ("hidden",)

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        out_features: int | None = None,
        activation: str = "silu",
        use_bias: bool = False,
        kernel_init: Initializer = _layers.default_kernel_init,
        bias_init: Initializer = _layers.default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ):
        where = type(self).__name__
        _layers.check_int(in_features, "in_features", where=where)
        _layers.check_int(hidden_features, "hidden_features", where=where)
        if out_features is None:
            out_features = in_features
        _layers.check_int(out_features, "out_features", where=where)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"{where}: activation must be one of {ACTIVATIONS}; got {activation!r}."
            )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.out_features = out_features
        self.activation = activation

        dense = _layers.LinearSettings(
            use_bias, kernel_init, bias_init, dtype, param_dtype, precision, rngs
        ).factory(nnx.Linear)
        self.gate = dense(in_features, hidden_features)
        self.up = dense(in_features, hidden_features)
        self.down = dense(hidden_features, out_features)

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        mask: Array | None = None,
        seq_lengths: Array | None = None,
        return_gates: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
    ) -> Any:
        """Applies the block at every position.

        Args:
          inputs: ``[..., in_features]``; ``[batch, time, in_features]`` when gates or a mask
            are asked for.
          mask: ``[batch, time]`` booleans, True at real steps (used by the trace only: the
            block is position-wise, so padding cannot leak into valid steps).
          seq_lengths: ``[batch]`` integers, the alternative to ``mask``.
          return_gates: also return a :class:`~gatenets.GateTrace` with the gate under the
            path ``"feed_forward"`` (static).
          gate_overrides: ``{"hidden": constant_or_function}`` replacing the sigmoid factor.

        Returns:
          ``[..., out_features]``, or ``(output, trace)``.
        """
        valid = _check_position_wise_call(
            self, inputs, mask, seq_lengths, return_gates, gate_overrides
        )

        pre_gate = self.gate(inputs)
        gates = apply_overrides(GatedFeedForwardGates(jax.nn.sigmoid(pre_gate)), gate_overrides)
        gate = gates.hidden.astype(pre_gate.dtype)
        activated = pre_gate * gate if self.activation == "silu" else gate
        output = self.down(activated * self.up(inputs))
        if not return_gates:
            return output
        return output, _layers.gate_trace({"feed_forward": gates}, valid, *inputs.shape[:2])


class BinaryHead(nnx.Module):
    r"""Linear map to one logit per position, for binary classification.

    .. math::
        z = x \cdot w + b, \qquad p = \sigma(z), \\
        \mathcal{L}(z, y) = -y \log \sigma(z) - (1 - y) \log(1 - \sigma(z))

    The loss is :func:`optax.sigmoid_binary_cross_entropy`, which works on the logit for
    numerical stability. The head's sigmoid is its output, so its "gate" is the probability
    :math:`p`: ``return_gates=True`` returns it, and an override of ``"probability"`` replaces
    :math:`p` and returns the matching logit :math:`\log p - \log(1 - p)`, so a loss computed
    downstream sees the overridden value.

    Args:
      in_features: size of the last axis of the inputs.
      use_bias: whether the logit has a bias.
      kernel_init: initialiser of the ``[in_features, 1]`` kernel.
      bias_init: initialiser of the bias.
      dtype: compute dtype; None promotes inputs and parameters.
      param_dtype: dtype of the parameters.
      precision: matrix-product precision (:class:`jax.lax.Precision`) of the logit, as in
        :class:`flax.nnx.Linear`; None is JAX's default.
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets import BinaryHead
      >>> head = BinaryHead(3, rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 5, 3))
      >>> head(x).shape, head.probability(x).shape
      ((2, 5), (2, 5))
      >>> loss = head.loss(x, jnp.ones((2, 5)), seq_lengths=jnp.array([5, 2]))
      >>> loss.shape
      ()

    References:
      Cox, "The Regression Analysis of Binary Sequences", JRSS B 20(2), 1958.
    """

    gate_names = ("probability",)

    def __init__(
        self,
        in_features: int,
        *,
        use_bias: bool = True,
        kernel_init: Initializer = _layers.default_kernel_init,
        bias_init: Initializer = _layers.default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ):
        _layers.check_int(in_features, "in_features", where=type(self).__name__)
        self.in_features = in_features
        settings = _layers.LinearSettings(
            use_bias, kernel_init, bias_init, dtype, param_dtype, precision, rngs
        )
        self.linear = settings.factory(nnx.Linear)(in_features, 1)

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        mask: Array | None = None,
        seq_lengths: Array | None = None,
        return_gates: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
    ) -> Any:
        """The logits of ``inputs``.

        Args:
          inputs: ``[..., in_features]``; ``[batch, time, in_features]`` when gates or a mask
            are asked for.
          mask: ``[batch, time]`` booleans, True at real steps (for the trace).
          seq_lengths: ``[batch]`` integers, the alternative to ``mask``.
          return_gates: also return a :class:`~gatenets.GateTrace` with the probability under
            the path ``"head"`` (static).
          gate_overrides: ``{"probability": constant_or_function}``.

        Returns:
          ``[...]`` logits (the feature axis removed), or ``(logits, trace)``.
        """
        valid = _check_position_wise_call(
            self, inputs, mask, seq_lengths, return_gates, gate_overrides
        )
        logits = self.linear(inputs)[..., 0]
        if not (return_gates or gate_overrides):
            return logits
        gates = apply_overrides(BinaryHeadGates(jax.nn.sigmoid(logits)), gate_overrides)
        if gate_overrides:
            probability = gates.probability
            logits = jnp.log(probability) - jnp.log1p(-probability)
        if not return_gates:
            return logits
        return logits, _layers.gate_trace({"head": gates}, valid, *inputs.shape[:2])

    def probability(self, inputs: Array, **kwargs: Any) -> Array:
        """:math:`\\sigma(z)`: the probability of the positive class, ``[...]``.

        Keyword arguments (``gate_overrides``, ...) are those of ``__call__``.
        """
        return jax.nn.sigmoid(self(inputs, **kwargs))

    def loss(
        self,
        inputs: Array,
        labels: Array,
        *,
        mask: Array | None = None,
        seq_lengths: Array | None = None,
    ) -> Array:
        """Mean sigmoid binary cross-entropy over valid positions.

        Padded positions are zeroed, inputs and labels alike, before anything is computed from
        them: NaN, inf or a padding label such as -1 there changes neither the loss nor its
        gradients.

        Args:
          inputs: ``[..., in_features]``.
          labels: targets in [0, 1], shaped like the logits (``inputs.shape[:-1]``); checked
            at valid positions when concrete (under ``jit`` their values are unknown and
            unchecked).
          mask: ``[batch, time]`` booleans, True at positions that count.
          seq_lengths: ``[batch]`` integers, the alternative to ``mask``.

        Returns:
          the scalar mean loss (float32).

        Raises:
          ValueError: when a valid label is outside [0, 1] or not a number.

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> from gatenets import BinaryHead
          >>> head = BinaryHead(2, rngs=nnx.Rngs(0))
          >>> head.loss(jnp.ones((1, 3, 2)), jnp.array([[1.0, 0.0, 2.0]]))
          Traceback (most recent call last):
          ...
          ValueError: BinaryHead.loss: labels must be in [0, 1] at valid positions; got 2.0 at index (0, 2).
        """  # noqa: E501
        where = "BinaryHead.loss"
        _layers.check_feature_inputs(inputs, self.in_features, where)
        labels = jnp.asarray(labels)
        valid = None
        if mask is not None or seq_lengths is not None:
            valid = _trace_mask(inputs, mask, seq_lengths, where)
            inputs = zero_invalid(valid, jnp.asarray(inputs))
        logits = self(inputs)
        if labels.shape != logits.shape:
            raise ValueError(
                f"{where}: labels must have the shape of the logits, inputs.shape[:-1] "
                f"= {logits.shape}; got {labels.shape}."
            )
        if valid is not None:
            labels = jnp.where(valid, labels, jnp.zeros((), labels.dtype))
        _check_labels(labels, where)
        losses = optax.sigmoid_binary_cross_entropy(
            logits.astype(jnp.float32), labels.astype(jnp.float32)
        )
        if valid is None:
            return jnp.mean(losses)
        count = jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)
        return jnp.sum(jnp.where(valid, losses, 0.0)) / count


def _check_labels(labels: Array, where: str) -> None:
    """Raises naming the first label outside [0, 1] (NaN included), when ``labels`` is
    concrete; traced labels pass unchecked."""
    if isinstance(labels, jax.core.Tracer):
        return
    values = np.asarray(labels, np.float64)
    bad = np.argwhere(~((values >= 0.0) & (values <= 1.0)))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{where}: labels must be in [0, 1] at valid positions; got {values[index]} at "
            f"index {index}."
        )
