r"""A parallel scan for diagonal linear recurrences, with decays kept in log space.

The minimal cells (minGRU, minLSTM) and the RG-LRU all reduce to

.. math::
    h_t = a_t \odot h_{t-1} + b_t, \qquad a_t = e^{\ell_t} \in (0, 1],

whose gates depend on the input only, so every :math:`(\ell_t, b_t)` is known before the
recurrence runs. Pairs compose associatively,

.. math::
    (\ell_1, b_1) \circ (\ell_2, b_2) = (\ell_1 + \ell_2,\; e^{\ell_2} b_1 + b_2),

and ``jax.lax.associative_scan`` evaluates all prefixes in :math:`O(\log T)` depth. The decays
travel as sums of logs: a long product of decays never underflows through intermediate
rounding, ``exp`` only ever sees a sum of non-positive logs (it cannot overflow), and nothing is
divided (unlike the cumulative-sum form :math:`h_t = A_t \sum_s b_s / A_s`, which overflows once
:math:`A_t` is tiny). Values stay signed and in linear space, so no activation has to make
them positive.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gatenets._typing import Array
from gatenets.gates import hold_invalid
from gatenets.kernels._common import previous
from gatenets.loop import Loop, as_loop


def _combine(earlier: tuple[Array, Array], later: tuple[Array, Array]) -> tuple[Array, Array]:
    log_a_1, b_1 = earlier
    log_a_2, b_2 = later
    return log_a_1 + log_a_2, jnp.exp(log_a_2) * b_1 + b_2


def sequential_recurrence(
    log_a: Array, b: Array, h0: Array, *, reverse: bool = False, unroll: int = 1
) -> Array:
    """``Loop.LINEAR_SCAN``'s solver: one multiply-add per step in ``jax.lax.scan``."""

    def body(h, step):
        a_t, b_t = step
        h = a_t * h + b_t
        return h, h

    _, h = jax.lax.scan(
        body, h0.astype(b.dtype), (jnp.exp(log_a), b), reverse=reverse, unroll=unroll
    )
    return h


def _prefix_states(log_a: Array, b: Array) -> Array:
    """Every prefix of the pairs ``(log_a, b)`` in time order: the states from a zero start."""
    return jax.lax.associative_scan(_combine, (log_a, b), axis=0)[1]


@jax.custom_vjp
def _associative(log_a: Array, b: Array) -> Array:
    return _prefix_states(log_a, b)


def _associative_fwd(log_a: Array, b: Array) -> tuple[Array, tuple[Array, Array]]:
    h = _prefix_states(log_a, b)
    return h, (log_a, h)


def _associative_bwd(residuals: tuple[Array, Array], dh: Array) -> tuple[Array, Array]:
    r"""The gradient of a linear recurrence is a linear recurrence run backwards:
    :math:`\lambda_t = \delta h_t + e^{\ell_{t+1}} \lambda_{t+1}` (the total gradient reaching
    :math:`h_t`), then :math:`\delta b_t = \lambda_t` and
    :math:`\delta \ell_t = \lambda_t e^{\ell_t} h_{t-1}`; solved with the same associative scan
    over the reversed sequence. Only ``log_a`` and the states are kept, not the scan's tree."""
    log_a, h = residuals
    dh = dh.astype(h.dtype)
    # The decay that carries each step's state into the next one (none after the last).
    following = previous(log_a, jnp.zeros_like(log_a[0]), reverse=True)
    total = _prefix_states(following[::-1], dh[::-1])[::-1]
    h_before = previous(h, jnp.zeros_like(h[0]), reverse=False)
    d_log_a = (total * jnp.exp(log_a) * h_before).astype(log_a.dtype)
    return d_log_a, total.astype(h.dtype)


_associative.defvjp(_associative_fwd, _associative_bwd)


def associative_recurrence(
    log_a: Array, b: Array, h0: Array, *, reverse: bool = False, unroll: int = 1
) -> Array:
    """``Loop.ASSOCIATIVE``'s solver: ``jax.lax.associative_scan`` over the log-space pairs
    (``unroll`` has no meaning here). Its backward pass is the reversed recurrence solved the
    same way (a custom VJP), not autodiff through the scan's tree of slices: it keeps only the
    states, and it is the form XLA compiles inside ``shard_map`` on every JAX version we
    support (autodiff of the scan there crashed XLA 0.11's compiler)."""
    del unroll
    if reverse:
        log_a, b = log_a[::-1], b[::-1]
    # The initial state enters as part of the first step's input: b_1 + a_1 h_0.
    b = b.at[0].add(jnp.exp(log_a[0]) * h0.astype(b.dtype))
    h = _associative(log_a, b)
    return h[::-1] if reverse else h


def solver(loop: Loop | str) -> Callable[..., Array]:
    """The linear-recurrence solver the loop table holds for ``loop`` (``"linear_scan"`` or
    ``"associative"``), or a ValueError naming those."""
    loop = as_loop(loop)
    from gatenets.loop import loop_table

    kernels = loop_table()[loop].kernels or {}
    found = kernels.get("mingru")
    if found is None:
        raise ValueError(f"loop must be 'linear_scan' or 'associative'; got {str(loop)!r}.")
    return found


def linear_recurrence(
    log_a: Array,
    b: Array,
    h0: Array,
    *,
    valid: Array | None = None,
    reverse: bool = False,
    loop: Loop | str | Callable[..., Array] = Loop.ASSOCIATIVE,
    unroll: int = 1,
) -> Array:
    r"""All states of :math:`h_t = e^{\ell_t} h_{t-1} + b_t` over the leading (time) axis.

    Args:
      log_a: ``[time, batch, hidden]`` logs of the decays (non-positive for a stable recurrence).
      b: ``[time, batch, hidden]`` inputs of the recurrence.
      h0: ``[batch, hidden]`` state before the first step.
      valid: ``[time, batch]`` booleans or None. An invalid step holds the state exactly
        (:math:`\ell_t = 0, b_t = 0`), so padding never leaks into later valid steps.
      reverse: run from the last step to the first (states stay in time order).
      loop: ``"associative"`` (:func:`associative_recurrence`, depth :math:`O(\log T)`) or
        ``"linear_scan"`` (:func:`sequential_recurrence`, one multiply-add per step), or a
        solver of that signature.
      unroll: steps per loop iteration of ``"linear_scan"``.

    Returns:
      ``[time, batch, hidden]`` states :math:`h_t`, in ``b``'s dtype; the last processed one is
      the final state.

    Example:
      >>> import jax.numpy as jnp
      >>> from gatenets.kernels.parallel_scan import linear_recurrence
      >>> log_a = jnp.log(jnp.full((3, 1, 1), 0.5))
      >>> b = jnp.ones((3, 1, 1))
      >>> linear_recurrence(log_a, b, jnp.zeros((1, 1)))[:, 0, 0].tolist()
      [1.0, 1.5, 1.75]
    """
    if log_a.shape != b.shape or log_a.ndim != 3:
        raise ValueError(
            f"log_a and b must both be [time, batch, hidden]; got {log_a.shape} and {b.shape}."
        )
    if h0.shape != b.shape[1:]:
        raise ValueError(f"h0 must be [batch, hidden] = {b.shape[1:]}; got {h0.shape}.")
    solve = loop if callable(loop) else solver(loop)
    if b.shape[0] == 0:
        return b
    # An invalid step is the identity (a = 1, b = 0): the state is held.
    log_a = hold_invalid(valid, log_a, jnp.zeros((), log_a.dtype))
    b = hold_invalid(valid, b, jnp.zeros((), b.dtype))
    return solve(log_a, b, h0, reverse=reverse, unroll=unroll)
