r"""A fused GRU sequence kernel (reset applied after the recurrent matmul) with a hand-written
backward pass.

As for :mod:`gatenets.kernels.lstm`, the backward loop computes only the sequential part: with
:math:`a^r, a^z, a^n` the pre-activations and :math:`m_t = U_n h_{t-1} + b_{hn}`,

.. math::
    \delta a^n_t = \delta h_t (1 - z_t)(1 - n_t^2), \quad
    \delta a^r_t = \delta a^n_t\, m_t\, r_t (1 - r_t), \quad
    \delta a^z_t = \delta h_t (h_{t-1} - n_t)\, z_t (1 - z_t) \\
    \delta h_{t-1} = \delta h_t z_t + [\delta a^r_t, \delta a^z_t, r_t \delta a^n_t]\, U^\top

and the recurrent kernel's gradient is one matmul over all steps after the loop. Saved for the
backward pass: ``r, z, n, m`` (``[time, batch, 4 hidden]``) and the hidden states; with
``remat=True`` only the hidden states, the rest recomputed step by step and the weight
gradients summed inside the backward loop.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatenets._typing import Array
from gatenets.gates import hold_invalid
from gatenets.kernels._common import (
    Precision,
    WeightGradients,
    accumulation,
    apply_mask,
    canonical_precision,
    mixed_matmul,
    previous,
)


class GRUKernelConfig(NamedTuple):
    """Static settings of :func:`gru_sequence` (hashable: part of the compiled program)."""

    reverse: bool
    return_gates: bool
    overrides: tuple[float | None, float | None]  # reset, update
    remat: bool
    unroll: int
    precision: Precision = None


class _Weights(NamedTuple):
    """The GRU's weights, as the forward and the recomputing backward step read them."""

    input_kernel: Array | None
    bias: Array | None
    recurrent_kernel: Array
    recurrent_bias: Array | None
    recurrent_mask: Array | None


def _step_values(x_t, h, weights: _Weights, config: GRUKernelConfig) -> Array:
    """``[r, z, n, m]`` (``[batch, 4 hidden]``) of one step from the carried ``h``."""
    # Compute-dtype operands (bf16 for the tensor cores), accumulated and returned in the
    # state's dtype (float32 under bf16 compute), where the gate math runs.
    state, precision = h.dtype, config.precision
    h_in = apply_mask(h, weights.recurrent_mask)
    if weights.input_kernel is None:
        x_t = x_t.astype(state)
    else:
        x_t = mixed_matmul(x_t, weights.input_kernel, state, precision)
        x_t = x_t + jnp.broadcast_to(weights.bias.astype(state), x_t.shape)
    x_r, x_z, x_n = jnp.split(x_t, 3, axis=-1)
    hh_r, hh_z, m = jnp.split(mixed_matmul(h_in, weights.recurrent_kernel, state, precision), 3, -1)
    if weights.recurrent_bias is not None:
        m = m + jnp.broadcast_to(weights.recurrent_bias.astype(state), m.shape)
    r = jax.nn.sigmoid(x_r + hh_r)
    z = jax.nn.sigmoid(x_z + hh_z)
    if config.overrides[0] is not None:
        r = jnp.full_like(r, config.overrides[0])
    if config.overrides[1] is not None:
        z = jnp.full_like(z, config.overrides[1])
    n = jnp.tanh(x_n + r * m)
    return jnp.concatenate([r, z, n, m], axis=-1)


def _forward(config, xs, input_kernel, bias, recurrent_kernel, recurrent_bias, h0, *rest):
    valid, recurrent_mask, for_backward = rest
    weights = _Weights(input_kernel, bias, recurrent_kernel, recurrent_bias, recurrent_mask)
    # Without a backward pass to feed, the loop stacks only what the caller gets.
    keep_values = config.return_gates or (for_backward and not config.remat)

    def body(h, step):
        x_t, valid_t = step
        values = _step_values(x_t, h, weights, config)
        _, z, n, _ = jnp.split(values, 4, axis=-1)
        h_new = hold_invalid(valid_t, (1.0 - z) * n + z * h, h)
        return h_new, (h_new, values if keep_values else None)

    h_last, (hs, values) = jax.lax.scan(
        body, h0, (xs, valid), reverse=config.reverse, unroll=config.unroll
    )
    return h_last, hs, values


def _gates(config, values):
    return values[..., : 2 * values.shape[-1] // 4] if config.return_gates else None


# The operands, in order: xs, input_kernel, bias, recurrent_kernel, recurrent_bias, h0, valid,
# recurrent_mask (see gru_sequence).
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru(config, *operands):
    h_last, hs, values = _forward(config, *operands, False)
    return h_last, hs, _gates(config, values)


def _gru_fwd(config, *operands):
    h_last, hs, values = _forward(config, *operands, True)
    xs, input_kernel, bias, recurrent_kernel, recurrent_bias, h0, valid, recurrent_mask = operands
    keep_xs = config.remat or input_kernel is not None
    residuals = (
        xs if keep_xs else None,
        _Weights(input_kernel, bias, recurrent_kernel, recurrent_bias, recurrent_mask),
        h0,
        valid,
        hs,
        None if config.remat else values,
    )
    return (h_last, hs, _gates(config, values)), residuals


def _step_gradient(values_t, h_prev_t, dh_step, dgates_t, overrides):
    r"""One step's gradients of the pre-activations ``a_r``, ``a_z`` and ``a_n``, from the saved
    ``[r, z, n, m]`` and the step's :math:`\delta h` (zero where the step is held); also
    returns ``r`` and ``z``."""
    r, z, n, m = jnp.split(values_t, 4, axis=-1)
    d_an = dh_step * (1.0 - z) * (1.0 - n * n)
    d_r = d_an * m
    d_z = dh_step * (h_prev_t - n)
    if dgates_t is not None:
        dg_r, dg_z = jnp.split(dgates_t, 2, axis=-1)
        d_r, d_z = d_r + dg_r, d_z + dg_z
    # A constant gate has no pre-activation: nothing flows through it.
    d_ar = jnp.zeros_like(d_r) if overrides[0] is not None else d_r * r * (1.0 - r)
    d_az = jnp.zeros_like(d_z) if overrides[1] is not None else d_z * z * (1.0 - z)
    return d_ar, d_az, d_an, r, z


def _stacked_recurrent_cotangent(dx: Array, values: Array, dtype) -> Array:
    """``d_hh`` of every step, ``[time, batch, 3 hidden]``: ``dx`` with its last block times
    the reset gate (rebuilt after the loop rather than stacked by it)."""
    hidden = dx.shape[-1] // 3
    reset = values[..., :hidden]
    last = (dx[..., 2 * hidden :] * reset).astype(dtype)
    return jnp.concatenate([dx[..., : 2 * hidden], last], axis=-1)


def _gru_bwd(config, residuals, cotangents):
    xs, weights, h0, valid, hs, values = residuals
    dh_last, dhs, dgates = cotangents
    _, _, kernel, recurrent_bias, mask = weights
    dtype, hidden, precision = kernel.dtype, h0.shape[-1], config.precision
    # Backward arithmetic in at least float32: bf16 accumulations over time lose the gradient.
    acc = accumulation(dtype)
    h_prev = previous(hs, h0, config.reverse)
    recompute = values is None
    gate_cotangent = config.return_gates and dgates is not None
    gradients = WeightGradients(
        config.remat, kernel, weights.input_kernel, weights.bias, xs, precision
    )
    sums = gradients.initial()
    if config.remat and recurrent_bias is not None:
        sums["recurrent_bias"] = jnp.zeros(recurrent_bias.shape, acc)

    def body(carry, step):
        dh, sums = carry
        h_prev_t, dh_out_t, valid_t, dgates_t, values_t, x_t = step
        if recompute:
            values_t = _step_values(x_t, h_prev_t, weights, config)
        dh = dh + dh_out_t.astype(acc)
        zero = jnp.zeros((), acc)
        dh_step = dh if valid_t is None else jnp.where(valid_t[:, None], dh, zero)
        dgates_t = None if dgates_t is None else dgates_t.astype(acc)
        d_ar, d_az, d_an, r, z = _step_gradient(
            values_t.astype(acc), h_prev_t.astype(acc), dh_step, dgates_t, config.overrides
        )
        d_hh = jnp.concatenate([d_ar, d_az, d_an * r], axis=-1)
        dh_rec = mixed_matmul(d_hh, kernel.T, acc, precision)
        dh_prev = dh_step * z + apply_mask(dh_rec, None if mask is None else mask.astype(acc))
        if valid_t is not None:
            # A held step passes its gradient through to the step before.
            dh_prev = dh_prev + jnp.where(valid_t[:, None], zero, dh)
        dx = jnp.concatenate([d_ar, d_az, d_an], axis=-1).astype(dtype)
        d_hh = d_hh.astype(dtype)
        if "recurrent_bias" in sums:
            d_b_hn = d_hh[:, 2 * hidden :].astype(acc).sum(axis=0)
            sums = dict(sums, recurrent_bias=sums["recurrent_bias"] + d_b_hn)
        h_in_t = apply_mask(h_prev_t, mask) if config.remat else None
        # Without remat d_hh is dx with its last block times r: rebuilt after the loop.
        sums, emitted = gradients.step(sums, h_in_t, d_hh, x_t, dx)
        return (dh_prev, sums), emitted

    steps = (h_prev, dhs, valid, dgates if gate_cotangent else None)
    steps += (None if recompute else values, xs if recompute or config.remat else None)
    (dh0, sums), emitted = jax.lax.scan(
        body, (dh_last.astype(acc), sums), steps, reverse=not config.reverse, unroll=config.unroll
    )
    d_hh = None if config.remat else _stacked_recurrent_cotangent(emitted, values, dtype)
    if d_hh is not None and recurrent_bias is not None:
        sums["recurrent_bias"] = d_hh[..., 2 * hidden :].astype(acc).sum(axis=(0, 1))
    dxs, d_input, d_bias, d_recurrent = gradients.finish(
        sums, emitted, apply_mask(h_prev, mask), d_hh
    )
    d_b_hn = None if recurrent_bias is None else sums["recurrent_bias"].astype(recurrent_bias.dtype)
    d_mask = None if mask is None else jnp.zeros_like(mask)
    return dxs, d_input, d_bias, d_recurrent, d_b_hn, dh0.astype(h0.dtype), None, d_mask


_gru.defvjp(_gru_fwd, _gru_bwd)


def gru_sequence(
    xs: Array,
    recurrent_kernel: Array,
    h0: Array,
    valid: Array | None = None,
    *,
    recurrent_bias: Array | None = None,
    input_kernel: Array | None = None,
    bias: Array | None = None,
    recurrent_mask: Array | None = None,
    reverse: bool = False,
    return_gates: bool = False,
    overrides: tuple[float | None, float | None] = (None, None),
    remat: bool = False,
    unroll: int = 1,
    precision: Any = None,
) -> tuple[Array, Array, Array | None]:
    r"""Runs a GRU (``reset_after=True``, gate order ``r, z, n``) over a time-major sequence.

    .. math::
        r_t = \sigma(a^r_t), \quad z_t = \sigma(a^z_t), \quad
        n_t = \tanh(x^n_t + r_t \odot (U_n h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    with :math:`[a^r_t, a^z_t] = [x^r_t, x^z_t] + [U_r, U_z] h_{t-1}` and :math:`x_t` the
    projected input (``xs[t] @ input_kernel + bias`` when ``input_kernel`` is given). At a step
    where ``valid`` is False the carry is held.

    Args:
      xs: ``[time, batch, 3 hidden]`` projected inputs (every bias but :math:`b_{hn}` added), or
        ``[time, batch, features]`` raw inputs with ``input_kernel``.
      recurrent_kernel: ``[hidden, 3 hidden]`` in the compute dtype.
      h0: ``[batch, hidden]`` initial hidden state; its dtype is the state's and the gate
        math's (float32 under bf16 compute: the matmuls accumulate into it).
      valid: ``[time, batch]`` booleans, or None.
      recurrent_bias: ``[hidden]``, the :math:`b_{hn}` inside the reset product, or None.
      input_kernel: ``[features, 3 hidden]`` to project inside the loop, or None.
      bias: ``[3 hidden]``, with ``input_kernel``.
      recurrent_mask: ``[batch, hidden]`` multiplier of :math:`h_{t-1}` (recurrent dropout).
      reverse: loop from the last step to the first.
      return_gates: also return the gates.
      overrides: constants replacing the reset and update gates, or None each.
      remat: save only the hidden states and recompute the rest in the backward pass.
      unroll: steps per loop iteration.
      precision: the precision of every matmul, forward and backward, as in
        :func:`jax.lax.dot_general` and Flax's ``Linear``: None (JAX's default, which
        :func:`jax.default_matmul_precision` sets; TF32 on NVIDIA GPUs), a
        :class:`jax.lax.Precision` or its name (``"highest"`` is full float32), or a pair.

    Returns:
      ``(h_last, hs, gates)``: the final state, the carried state after every step
      ``[time, batch, hidden]`` and, with ``return_gates``, ``[r, z]`` as
      ``[time, batch, 2 hidden]`` (else None).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gatenets.kernels import gru_sequence
      >>> xs, u = jnp.ones((5, 2, 9)), jnp.zeros((3, 9))
      >>> h, hs, _ = gru_sequence(xs, u, jnp.zeros((2, 3)))
      >>> jax.grad(lambda u: gru_sequence(xs, u, h)[1].sum())(u).shape
      (3, 9)
    """
    config = GRUKernelConfig(
        reverse, return_gates, tuple(overrides), remat, unroll, canonical_precision(precision)
    )
    return _gru(
        config, xs, input_kernel, bias, recurrent_kernel, recurrent_bias, h0, valid, recurrent_mask
    )
