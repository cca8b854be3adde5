r"""A fused LSTM sequence kernel with a hand-written backward pass.

Autodiff through ``lax.scan`` stores every intermediate of every step and accumulates the weight
gradient inside the loop, one small matmul per step. This kernel's backward loop computes only
what is sequential: the gradient with respect to the pre-activations
:math:`\delta z_t = [\delta i_t\, i_t(1-i_t),\ \delta f_t\, f_t(1-f_t),\
\delta g_t (1-g_t^2),\ \delta o_t\, o_t(1-o_t)]`, and the recurrent gradient
:math:`\delta h_{t-1} = \delta z_t U^\top`. The weight gradient is then one
``[hidden, time * batch] @ [time * batch, 4 hidden]`` matmul after the loop, and the gradient
with respect to the projected inputs is :math:`\delta z` itself, so the input kernel's gradient
is also one large matmul, done by autodiff of :meth:`~gatenets.LSTMCell.project`.

Saved for the backward pass: the post-activation gates ``[time, batch, 4 hidden]`` and the cell
and hidden states (``[time, batch, hidden]`` each): six hidden-sized arrays per step. With
``remat=True`` only the two states are kept; the gates are recomputed one step at a time in the
backward loop and the weight gradients are summed inside it, so that nothing
``[time, batch, 4 hidden]`` exists at all when the input projection runs inside the loop (one
more matmul per step, and per-step weight-gradient matmuls, for about a third of the memory).
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
    apply_mask,
    canonical_precision,
    mixed_matmul,
    previous,
)


class LSTMKernelConfig(NamedTuple):
    """Static settings of :func:`lstm_sequence` (hashable: part of the compiled program)."""

    reverse: bool
    return_gates: bool
    overrides: tuple[float | None, float | None, float | None]  # input, forget, output
    remat: bool
    unroll: int
    precision: Precision = None


def _gate_list(z: Array, overrides: tuple) -> list[Array]:
    """``[batch, 4 hidden]`` pre-activations to ``[i, f, g, o]``, constant gates in place."""
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    gates = [jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)]
    for index, value in zip((0, 1, 3), overrides, strict=True):
        if value is not None:
            gates[index] = jnp.full_like(gates[index], value)
    return gates


def _activations(z: Array, overrides: tuple) -> Array:
    return jnp.concatenate(_gate_list(z, overrides), axis=-1)


def _preactivation(x_t, input_kernel, bias, h_in, recurrent_kernel, state_dtype, precision):
    """``x_t + h_in U`` in the state dtype: the matmuls take compute-dtype operands (bf16 for
    the tensor cores) and accumulate and return the state dtype, so a bf16 layer rounds its
    pre-activations once, never between the matmul and the gate math."""
    z = mixed_matmul(h_in, recurrent_kernel, state_dtype, precision)
    if input_kernel is None:
        return x_t.astype(state_dtype) + z
    z = z + mixed_matmul(x_t, input_kernel, state_dtype, precision)
    return z + jnp.broadcast_to(bias.astype(state_dtype), z.shape)


def _forward(
    config, xs, input_kernel, bias, recurrent_kernel, c0, h0, valid, recurrent_mask, for_backward
):
    dtype = recurrent_kernel.dtype
    # Without a backward pass to feed, the loop stacks only what the caller gets.
    keep_acts = config.return_gates or (for_backward and not config.remat)

    def body(carry, step):
        c, h = carry
        x_t, valid_t = step
        h_in = h if recurrent_mask is None else h * recurrent_mask
        z = _preactivation(
            x_t, input_kernel, bias, h_in, recurrent_kernel, c.dtype, config.precision
        )
        # Concatenated only when stacked: a loop that keeps nothing pays for no copy.
        i, f, g, o = _gate_list(z, config.overrides)
        acts = jnp.concatenate([i, f, g, o], axis=-1) if keep_acts else None
        c_new = f * c + i * g
        h_new = (o * jnp.tanh(c_new)).astype(dtype)
        c_new, h_new = hold_invalid(valid_t, (c_new, h_new), (c, h))
        return (c_new, h_new), (c_new if for_backward else None, h_new, acts)

    (c_last, h_last), (cs, hs, acts) = jax.lax.scan(
        body, (c0, h0), (xs, valid), reverse=config.reverse, unroll=config.unroll
    )
    return c_last, h_last, cs, hs, acts


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm(config, xs, input_kernel, bias, recurrent_kernel, c0, h0, valid, recurrent_mask):
    c_last, h_last, _, hs, acts = _forward(
        config, xs, input_kernel, bias, recurrent_kernel, c0, h0, valid, recurrent_mask, False
    )
    return c_last, h_last, hs, acts


def _lstm_fwd(config, xs, input_kernel, bias, recurrent_kernel, c0, h0, valid, recurrent_mask):
    c_last, h_last, cs, hs, acts = _forward(
        config, xs, input_kernel, bias, recurrent_kernel, c0, h0, valid, recurrent_mask, True
    )
    # The projected inputs are needed again only to recompute gates (remat) or, for raw
    # inputs, for the input kernel's gradient.
    keep_xs = config.remat or input_kernel is not None
    residuals = (
        xs if keep_xs else None,
        input_kernel,
        bias,
        recurrent_kernel,
        c0,
        h0,
        valid,
        recurrent_mask,
        cs,
        hs,
        None if config.remat and not config.return_gates else acts,
    )
    return (c_last, h_last, hs, acts if config.return_gates else None), residuals


def _step_gradient(acts_t, c_t, c_prev_t, dh_step, dc_step, dacts_t, overrides):
    r"""One step's pre-activation gradient ``dz`` ``[batch, 4 hidden]`` and the cell-state
    gradient passed back, :math:`\delta c_t f_t`, from the gates ``acts_t`` and the step's
    :math:`\delta h`, :math:`\delta c` (zero where the step is held)."""
    i, f, g, o = jnp.split(acts_t, 4, axis=-1)
    tanh_c = jnp.tanh(c_t)
    dc_t = dc_step + dh_step * o * (1.0 - tanh_c * tanh_c)
    d_acts = [dc_t * g, dc_t * c_prev_t, dc_t * i, dh_step * tanh_c]
    if dacts_t is not None:
        d_acts = [
            d + extra for d, extra in zip(d_acts, jnp.split(dacts_t, 4, axis=-1), strict=True)
        ]
    derivative = [i * (1.0 - i), f * (1.0 - f), 1.0 - g * g, o * (1.0 - o)]
    # A constant gate has no pre-activation: nothing flows through it.
    constant = [overrides[0] is not None, overrides[1] is not None, False, overrides[2] is not None]
    dz = [
        jnp.zeros_like(d) if const else d * slope
        for d, slope, const in zip(d_acts, derivative, constant, strict=True)
    ]
    return jnp.concatenate(dz, axis=-1), dc_t * f


def _lstm_bwd(config, residuals, cotangents):
    xs, input_kernel, bias, recurrent_kernel, c0, h0, valid, recurrent_mask, cs, hs, acts = (
        residuals
    )
    dc_last, dh_last, dhs, dacts = cotangents
    dtype, state, precision = recurrent_kernel.dtype, c0.dtype, config.precision
    h_in = apply_mask(previous(hs, h0, config.reverse), recurrent_mask)
    c_prev = previous(cs, c0, config.reverse)
    gate_cotangent = dacts is not None and config.return_gates
    recompute = acts is None
    kernel_t = recurrent_kernel.T
    weights = WeightGradients(config.remat, recurrent_kernel, input_kernel, bias, xs, precision)

    def body(carry, step):
        dh, dc, sums = carry
        c_t, c_prev_t, dh_out_t, valid_t, dacts_t, acts_t, x_t, h_in_t = step
        if recompute:
            z = _preactivation(x_t, input_kernel, bias, h_in_t, recurrent_kernel, state, precision)
            acts_t = _activations(z, config.overrides)
        dh = dh + dh_out_t.astype(state)
        zero = jnp.zeros((), state)
        dh_step = dh if valid_t is None else jnp.where(valid_t[:, None], dh, zero)
        dc_step = dc if valid_t is None else jnp.where(valid_t[:, None], dc, zero)
        dacts_t = None if dacts_t is None else dacts_t.astype(state)
        dz, dc_prev = _step_gradient(
            acts_t.astype(state), c_t, c_prev_t, dh_step, dc_step, dacts_t, config.overrides
        )
        dh_prev = mixed_matmul(dz, kernel_t, state, precision)
        if recurrent_mask is not None:
            dh_prev = dh_prev * recurrent_mask.astype(state)
        if valid_t is not None:
            # A held step passes its gradients through to the step before.
            dh_prev = dh_prev + jnp.where(valid_t[:, None], zero, dh)
            dc_prev = jnp.where(valid_t[:, None], dc_prev, dc)
        dz = dz.astype(dtype)
        sums, emitted = weights.step(sums, h_in_t, dz, x_t, dz)
        return (dh_prev, dc_prev, sums), emitted

    in_loop = recompute or config.remat
    steps = (cs, c_prev, dhs, valid, dacts if gate_cotangent else None)
    steps += (None if recompute else acts, xs if in_loop else None, h_in if in_loop else None)
    carry = (dh_last.astype(state), dc_last.astype(state), weights.initial())
    (dh0, dc0, sums), emitted = jax.lax.scan(
        body, carry, steps, reverse=not config.reverse, unroll=config.unroll
    )
    dxs, d_input, d_bias, d_recurrent = weights.finish(sums, emitted, h_in, emitted)
    d_mask = None if recurrent_mask is None else jnp.zeros_like(recurrent_mask)
    dc0, dh0 = dc0.astype(c0.dtype), dh0.astype(h0.dtype)
    return dxs, d_input, d_bias, d_recurrent, dc0, dh0, None, d_mask


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_sequence(
    xs: Array,
    recurrent_kernel: Array,
    c0: Array,
    h0: Array,
    valid: Array | None = None,
    *,
    input_kernel: Array | None = None,
    bias: Array | None = None,
    recurrent_mask: Array | None = None,
    reverse: bool = False,
    return_gates: bool = False,
    overrides: tuple[float | None, float | None, float | None] = (None, None, None),
    remat: bool = False,
    unroll: int = 1,
    precision: Any = None,
) -> tuple[Array, Array, Array, Array | None]:
    r"""Runs an LSTM (no peepholes, no projection) over a time-major sequence.

    .. math::
        [i_t, f_t, g_t, o_t] = [\sigma, \sigma, \tanh, \sigma](x_t + h_{t-1} U) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t, \quad h_t = o_t \odot \tanh(c_t)

    where :math:`x_t` is the projected input, or ``xs[t] @ input_kernel + bias`` when
    ``input_kernel`` is given (the projection then runs inside the loop). At a step where
    ``valid`` is False the carry is held.

    Args:
      xs: ``[time, batch, 4 hidden]`` projected inputs, or ``[time, batch, features]`` raw
        inputs with ``input_kernel``.
      recurrent_kernel: ``[hidden, 4 hidden]`` in the compute dtype (gate order ``i, f, g, o``).
      c0: ``[batch, hidden]`` initial cell state (its dtype is the gate-math dtype).
      h0: ``[batch, hidden]`` initial hidden state, compute dtype.
      valid: ``[time, batch]`` booleans, or None.
      input_kernel: ``[features, 4 hidden]`` to project inside the loop, or None.
      bias: ``[4 hidden]``, with ``input_kernel``.
      recurrent_mask: ``[batch, hidden]`` multiplier of :math:`h_{t-1}` (recurrent dropout).
      reverse: loop from the last step to the first.
      return_gates: also return the gates.
      overrides: constants replacing the input, forget and output gates, or None each.
      remat: save only the states and recompute the gates in the backward pass.
      unroll: steps per loop iteration.
      precision: the precision of every matmul, forward and backward, as in
        :func:`jax.lax.dot_general` and Flax's ``Linear``: None (JAX's default, which
        :func:`jax.default_matmul_precision` sets; TF32 on NVIDIA GPUs), a
        :class:`jax.lax.Precision` or its name (``"highest"`` is full float32), or a pair.

    Returns:
      ``(c_last, h_last, hs, acts)``: the final carry, the carried hidden state after every step
      ``[time, batch, hidden]`` and, with ``return_gates``, the activations ``[i, f, g, o]``
      ``[time, batch, 4 hidden]`` (else None).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gatenets.kernels import lstm_sequence
      >>> xs, u = jnp.ones((5, 2, 12)), jnp.zeros((3, 12))
      >>> c, h, hs, _ = lstm_sequence(xs, u, jnp.zeros((2, 3)), jnp.zeros((2, 3)))
      >>> hs.shape
      (5, 2, 3)
      >>> grad = jax.grad(lambda xs: lstm_sequence(xs, u, c, h)[2].sum())(xs)
      >>> grad.shape
      (5, 2, 12)
    """
    config = LSTMKernelConfig(
        reverse, return_gates, tuple(overrides), remat, unroll, canonical_precision(precision)
    )
    return _lstm(config, xs, input_kernel, bias, recurrent_kernel, c0, h0, valid, recurrent_mask)
