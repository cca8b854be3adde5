"""The sigmoid router of DeepSeek-V3 with auxiliary-loss-free load balancing, and a small
mixture-of-experts layer built on it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets import _layers
from gatenets._layers import scoped
from gatenets._typing import Array, Dtype, Initializer
from gatenets.gates import GateOverride, apply_overrides, sequence_mask, zero_invalid

# Fan-in per expert: axis 0 indexes experts and must not count towards the fan-in.
_EXPERT_KERNEL_INIT = nnx.initializers.lecun_normal(batch_axis=(0,))


class RouterGates(NamedTuple):
    """Post-sigmoid gates of :class:`SigmoidRouter`.

    Attributes:
      scores: ``[batch, time, num_experts]`` affinity :math:`\\sigma(u_t \\cdot e_i)` of each
        token to each expert.
    """

    scores: Array


class Routing(NamedTuple):
    """What a :class:`SigmoidRouter` decided for a batch of tokens.

    Attributes:
      weights: ``[batch, time, top_k]`` float32 weights of the chosen experts (0 at padded
        steps).
      experts: ``[batch, time, top_k]`` int32 indices of the chosen experts, best biased score
        first.
      scores: ``[batch, time, num_experts]`` float32 sigmoid scores (after overrides).
      load: ``[num_experts]`` float32 share of the batch's (valid token, slot) pairs routed to
        each expert; it sums to 1. Pass it to ``update_bias``.
    """

    weights: Array
    experts: Array
    scores: Array
    load: Array


class ExpertBias(nnx.Variable):
    """The per-expert routing bias: state updated by :meth:`SigmoidRouter.update_bias`, not a
    trainable parameter, so ``nnx.Optimizer(..., wrt=nnx.Param)`` and ``nnx.grad`` leave it."""


class SigmoidRouter(nnx.Module):
    r"""Top-k mixture-of-experts router with sigmoid scores (DeepSeek-V3).

    .. math::
        s_{t,i} = \sigma(u_t \cdot e_i) \\
        \mathcal{K}_t = \operatorname{TopK}_i(s_{t,i} + b_i,\ k) \\
        g_{t,i} = \rho\, \frac{s_{t,i}}{\sum_{j \in \mathcal{K}_t} s_{t,j}}
            \ \text{for } i \in \mathcal{K}_t, \quad 0 \text{ otherwise} \\
        b_i \leftarrow b_i + \gamma \operatorname{sign}(\bar{\ell} - \ell_i)

    The bias :math:`b_i` only decides which experts are chosen; the weights come from the
    unbiased scores, normalised over the chosen experts (``normalize=False`` skips that) and
    multiplied by the routed scaling factor :math:`\rho`. Balancing needs no auxiliary loss:
    after each step, :meth:`update_bias` raises the bias of experts that received less than the
    mean load :math:`\bar\ell` and lowers it for those that received more. Scores and the
    choice are computed in float32, since bfloat16 rounding creates ties among the top-k.
    Node-limited (grouped) routing of the paper is not included.

    Args:
      in_features: size of the last axis of the inputs.
      num_experts: number of routed experts.
      top_k: experts chosen per token.
      routed_scaling_factor: :math:`\rho` (DeepSeek-V3 uses 2.5).
      normalize: normalise the chosen scores to sum to 1 before scaling.
      bias_update_rate: :math:`\gamma` (DeepSeek-V3 uses 0.001).
      kernel_init: initialiser of the expert centroids :math:`e_i`, ``[in_features,
        num_experts]``.
      param_dtype: dtype of the centroids.
      precision: matrix-product precision (:class:`jax.lax.Precision`) of the scores, as in
        :class:`flax.nnx.Linear`; None is JAX's default (TF32 for float32 on NVIDIA GPUs,
        which can change which experts win a close top-k).
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets import SigmoidRouter
      >>> router = SigmoidRouter(4, 8, top_k=2, rngs=nnx.Rngs(0))
      >>> routing = router(jnp.ones((2, 3, 4)))
      >>> routing.experts.shape, routing.weights.sum(-1).round(4).tolist()[0]
      ((2, 3, 2), [1.0, 1.0, 1.0])
      >>> router.update_bias(routing.load)  # every token chose the same two experts
      >>> int((router.expert_bias[...] < 0).sum()), int((router.expert_bias[...] > 0).sum())
      (2, 6)

    References:
      DeepSeek-AI, "DeepSeek-V3 Technical Report", 2024, arXiv:2412.19437, section 2.1.2;
      Wang et al., "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts",
      2024, arXiv:2408.15664.
    """

    gate_names = ("scores",)

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        *,
        top_k: int,
        routed_scaling_factor: float = 1.0,
        normalize: bool = True,
        bias_update_rate: float = 1e-3,
        kernel_init: Initializer = _layers.default_kernel_init,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ):
        where = type(self).__name__
        _layers.check_int(in_features, "in_features", where=where)
        _layers.check_int(num_experts, "num_experts", where=where)
        _layers.check_int(top_k, "top_k", where=where)
        if top_k > num_experts:
            raise ValueError(
                f"{where}: top_k must be at most num_experts = {num_experts}; got top_k={top_k}."
            )
        for name, value in (
            ("routed_scaling_factor", routed_scaling_factor),
            ("bias_update_rate", bias_update_rate),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{where}: {name} must be a float; got {value!r}.")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{where}: {name} must be finite and >= 0; got {value!r}.")
        _layers.check_static_flag(normalize, "normalize", where)
        self.in_features = in_features
        self.num_experts = num_experts
        self.top_k = top_k
        self.routed_scaling_factor = float(routed_scaling_factor)
        self.normalize = normalize
        self.bias_update_rate = float(bias_update_rate)
        self.precision = precision
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, num_experts), param_dtype))
        self.expert_bias = ExpertBias(jnp.zeros((num_experts,), jnp.float32))

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
        """Routes each token of ``inputs`` to ``top_k`` experts.

        Args:
          inputs: ``[batch, time, in_features]``.
          mask: ``[batch, time]`` booleans, True at real steps (padding gets no weight and no
            load).
          seq_lengths: ``[batch]`` integers, the alternative to ``mask``.
          return_gates: also return a :class:`~gatenets.GateTrace` with the scores under the
            path ``"router"`` (static).
          gate_overrides: ``{"scores": constant_or_function}`` replacing the sigmoid scores
            before the choice and the weights.

        Returns:
          a :class:`Routing`, or ``(routing, trace)``.
        """
        batch, time = _layers.check_sequence_call(
            self, inputs, gate_overrides, self.gate_names, return_gates=return_gates
        )
        valid = sequence_mask(batch, time, seq_lengths=seq_lengths, mask=mask)
        inputs = zero_invalid(valid, inputs).astype(jnp.float32)

        logits = jnp.matmul(inputs, self.kernel[...].astype(jnp.float32), precision=self.precision)
        gates = apply_overrides(RouterGates(jax.nn.sigmoid(logits)), gate_overrides)
        scores = gates.scores
        # The bias steers the choice only; no gradient flows through a discrete top-k anyway.
        biased = scores + jax.lax.stop_gradient(self.expert_bias[...])[None, None, :]
        _, experts = jax.lax.top_k(biased, self.top_k)
        chosen = jnp.take_along_axis(scores, experts, axis=-1)
        if self.normalize:
            total = jnp.sum(chosen, axis=-1, keepdims=True)
            chosen = chosen / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)
        weights = chosen * self.routed_scaling_factor

        assigned = jnp.sum(jax.nn.one_hot(experts, self.num_experts, dtype=jnp.float32), axis=2)
        if valid is not None:
            weights = jnp.where(valid[..., None], weights, 0.0)
            assigned = jnp.where(valid[..., None], assigned, 0.0)
        load = jnp.sum(assigned, axis=(0, 1))
        load = load / jnp.maximum(jnp.sum(load), 1.0)
        routing = Routing(weights, experts.astype(jnp.int32), scores, load)
        if not return_gates:
            return routing
        return routing, _layers.gate_trace({"router": gates}, valid, batch, time)

    def update_bias(self, load: Array) -> None:
        r"""Auxiliary-loss-free balancing step: :math:`b_i \mathrel{+}= \gamma\,
        \operatorname{sign}(\bar\ell - \ell_i)`.

        Args:
          load: ``[num_experts]`` load per expert (``Routing.load``, or any quantity
            proportional to the tokens each expert received, e.g. summed over several batches).

        Raises:
          ValueError: when ``load`` has the wrong shape, or (when concrete) holds NaN or inf.
            Under ``jit`` its values are unknown: a non-finite load then leaves the bias
            unchanged rather than making it NaN.

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> from gatenets import SigmoidRouter
          >>> router = SigmoidRouter(3, 2, top_k=1, rngs=nnx.Rngs(0))
          >>> router.update_bias(jnp.array([1.0, jnp.nan]))
          Traceback (most recent call last):
          ...
          ValueError: SigmoidRouter.update_bias: load must be finite; got [ 1. nan].
        """
        load = _check_load(load, self.num_experts, "SigmoidRouter.update_bias")
        load = jax.lax.stop_gradient(load.astype(jnp.float32))
        step = self.bias_update_rate * jnp.sign(jnp.mean(load) - load)
        step = jnp.where(jnp.all(jnp.isfinite(load)), step, 0.0)
        self.expert_bias[...] = self.expert_bias[...] + step


def _check_load(load: Any, num_experts: int, where: str) -> Array:
    """``load`` as an array, after checking its shape and, when concrete, its finiteness."""
    load = jnp.asarray(load)
    if load.shape != (num_experts,):
        raise ValueError(
            f"{where}: load must have shape [num_experts] = ({num_experts},); got {load.shape}."
        )
    if not isinstance(load, jax.core.Tracer) and not np.isfinite(np.asarray(load)).all():
        raise ValueError(f"{where}: load must be finite; got {np.asarray(load)}.")
    return load


class SigmoidMoE(nnx.Module):
    r"""Mixture of SwiGLU experts routed by a :class:`SigmoidRouter` (DeepSeek-V3 style).

    .. math::
        E_i(x) = \big(\operatorname{SiLU}(x W^{gate}_i) \odot x W^{up}_i\big) W^{down}_i \\
        y_t = \sum_{i} g_{t,i}\, E_i(x_t)

    with :math:`g_{t,i}` the router's weights (zero for experts not chosen). Every expert is
    computed for every token and the weights select: simple and exact, and at the sizes this
    layer is meant for cheaper than gathering. Shared experts of the paper are not included.
    The gates returned are the router's scores; call :meth:`update_bias` with
    ``routing.load`` after each optimiser step to balance the experts.

    Args:
      in_features: size of the last axis of the inputs.
      hidden_features: hidden width of each expert.
      num_experts: number of experts.
      top_k: experts per token.
      out_features: size of the output; defaults to ``in_features``.
      routed_scaling_factor: scale of the routing weights.
      normalize: normalise the chosen scores to sum to 1.
      bias_update_rate: step of the balancing bias.
      kernel_init: initialiser of the ``[num_experts, fan_in, fan_out]`` expert kernels (the
        default computes the fan-in per expert).
      router_kernel_init: initialiser of the router's expert centroids.
      dtype: compute dtype of the experts; None promotes inputs and parameters.
      param_dtype: dtype of the parameters.
      precision: matrix-product precision (:class:`jax.lax.Precision`) of the router and of
        every expert product, as in :class:`flax.nnx.Linear`; None is JAX's default.
      rngs: random streams for parameter initialisation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets import SigmoidMoE
      >>> moe = SigmoidMoE(4, 8, num_experts=4, top_k=2, rngs=nnx.Rngs(0))
      >>> y, trace, routing = moe(jnp.ones((2, 3, 4)), return_gates=True, return_routing=True)
      >>> y.shape, trace.gates["router"].scores.shape, routing.experts.shape
      ((2, 3, 4), (2, 3, 4), (2, 3, 2))
      >>> moe.update_bias(routing.load)

    References:
      DeepSeek-AI, "DeepSeek-V3 Technical Report", 2024, arXiv:2412.19437.
    """

    gate_names = SigmoidRouter.gate_names

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_experts: int,
        top_k: int,
        out_features: int | None = None,
        routed_scaling_factor: float = 1.0,
        normalize: bool = True,
        bias_update_rate: float = 1e-3,
        kernel_init: Initializer = _EXPERT_KERNEL_INIT,
        router_kernel_init: Initializer = _layers.default_kernel_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ):
        where = type(self).__name__
        _layers.check_int(hidden_features, "hidden_features", where=where)
        if out_features is None:
            out_features = in_features
        _layers.check_int(out_features, "out_features", where=where)
        self.router = SigmoidRouter(
            in_features,
            num_experts,
            top_k=top_k,
            routed_scaling_factor=routed_scaling_factor,
            normalize=normalize,
            bias_update_rate=bias_update_rate,
            kernel_init=router_kernel_init,
            param_dtype=param_dtype,
            precision=precision,
            rngs=rngs,
        )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.out_features = out_features
        self.num_experts = num_experts
        self.dtype = dtype
        self.precision = precision

        def kernel(n_in: int, n_out: int) -> nnx.Param:
            return nnx.Param(kernel_init(rngs.params(), (num_experts, n_in, n_out), param_dtype))

        self.gate_kernel = kernel(in_features, hidden_features)
        self.up_kernel = kernel(in_features, hidden_features)
        self.down_kernel = kernel(hidden_features, out_features)

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        mask: Array | None = None,
        seq_lengths: Array | None = None,
        return_gates: bool = False,
        return_routing: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
    ) -> Any:
        """Routes each token to its experts and mixes their outputs.

        Args:
          inputs: ``[batch, time, in_features]``.
          mask: ``[batch, time]`` booleans, True at real steps.
          seq_lengths: ``[batch]`` integers, the alternative to ``mask``.
          return_gates: also return the router's :class:`~gatenets.GateTrace` (static).
          return_routing: also return the :class:`Routing` (static).
          gate_overrides: ``{"scores": constant_or_function}``, passed to the router.

        Returns:
          ``[batch, time, out_features]`` (zero at padded steps); with ``return_gates``,
          ``(output, trace)``; with ``return_routing`` the routing is appended.
        """
        where = type(self).__name__
        _layers.check_static_flag(return_gates, "return_gates", where)
        _layers.check_static_flag(return_routing, "return_routing", where)
        _layers.check_sequence_inputs(inputs, self.in_features, where)
        routing, trace = self.router(
            inputs,
            mask=mask,
            seq_lengths=seq_lengths,
            return_gates=True,
            gate_overrides=gate_overrides,
        )
        dtype = _layers.compute_dtype(self.dtype, inputs, self.gate_kernel[...])
        x = inputs.astype(dtype)
        if mask is not None or seq_lengths is not None:
            x = zero_invalid(trace.mask, x)
        precision = self.precision
        gate = jnp.einsum(
            "btf,efh->bteh", x, self.gate_kernel[...].astype(dtype), precision=precision
        )
        up = jnp.einsum("btf,efh->bteh", x, self.up_kernel[...].astype(dtype), precision=precision)
        expert_out = jnp.einsum(
            "bteh,eho->bteo",
            jax.nn.silu(gate) * up,
            self.down_kernel[...].astype(dtype),
            precision=precision,
        )
        dense_weights = jnp.sum(
            jax.nn.one_hot(routing.experts, self.num_experts, dtype=jnp.float32)
            * routing.weights[..., None],
            axis=2,
        )
        output = jnp.einsum(
            "bte,bteo->bto", dense_weights.astype(dtype), expert_out, precision=precision
        )
        if not (return_gates or return_routing):
            return output
        results: tuple[Any, ...] = (output,)
        if return_gates:
            results += (trace,)
        if return_routing:
            results += (routing,)
        return results

    def update_bias(self, load: Array) -> None:
        """Balancing step of the router: see :meth:`SigmoidRouter.update_bias`."""
        self.router.update_bias(_check_load(load, self.num_experts, "SigmoidMoE.update_bias"))
