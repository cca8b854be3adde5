"""Pieces shared by the sequence kernels: constant overrides, matmul precision, time shifts,
flat matmuls and the weight-gradient tail of the backward passes."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatenets._typing import Array

#: A canonical matmul precision: None (JAX's default, which ``jax.default_matmul_precision``
#: sets) or a pair of :class:`jax.lax.Precision` (one per operand), hashable.
Precision = tuple[jax.lax.Precision, jax.lax.Precision] | None


def canonical_precision(precision: Any) -> Precision:
    """``precision`` as the kernels store it: None, or a pair of :class:`jax.lax.Precision`.

    Accepts what :func:`jax.lax.dot_general` and Flax's ``Linear`` accept: None, a
    :class:`jax.lax.Precision`, one of its names (``"default"``, ``"high"``, ``"highest"``,
    ``"bfloat16"``, ``"tensorfloat32"``, ``"float32"``), or a pair of those.

    Example:
      >>> canonical_precision("highest")
      (Precision.HIGHEST, Precision.HIGHEST)
      >>> canonical_precision(None) is None
      True
    """
    if precision is None:
        return None
    pair = tuple(precision) if isinstance(precision, tuple | list) else (precision, precision)
    try:
        if len(pair) != 2 or not all(isinstance(p, str | jax.lax.Precision) for p in pair):
            raise ValueError
        return tuple(jax.lax.Precision(p) for p in pair)
    except ValueError:
        raise ValueError(
            "precision must be None, a jax.lax.Precision, one of 'default', 'high', 'highest', "
            f"'bfloat16', 'tensorfloat32', 'float32', or a pair of them; got {precision!r}."
        ) from None


def constant_overrides(
    overrides: Mapping[str, Any] | None, gate_names: tuple[str, ...]
) -> tuple[float | None, ...] | None:
    """Per-gate Python floats if every override is a concrete scalar, else None.

    The fused kernels bake constant gates into the compiled loop (their derivative with
    respect to the pre-activation is zero). A function of the gate, an array, or a traced value
    needs the generic scan, which differentiates whatever the override does.
    """
    values: list[float | None] = []
    overrides = overrides or {}
    for name in gate_names:
        value = overrides.get(name)
        if value is None:
            values.append(None)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            values.append(float(value))
        elif (
            isinstance(value, np.ndarray | np.generic | jax.Array)
            and not isinstance(value, jax.core.Tracer)
            and np.ndim(value) == 0
        ):
            values.append(float(value))
        else:
            return None
    return tuple(values)


def previous(sequence: Array, initial: Array, reverse: bool) -> Array:
    """The value before each step: ``initial`` then ``sequence`` shifted by one step in the
    direction of the loop (``[time, batch, …]``); empty for an empty sequence."""
    if sequence.shape[0] == 0:
        return sequence
    if reverse:
        return jnp.concatenate([sequence[1:], initial[None]], axis=0)
    return jnp.concatenate([initial[None], sequence[:-1]], axis=0)


def accumulation(dtype: Any) -> Any:
    """The dtype gradients are summed in: at least float32 (bf16 sums over time lose the
    gradient), float64 for float64 kernels."""
    return jnp.promote_types(dtype, jnp.float32)


def mixed_matmul(a: Array, b: Array, accumulate: Any, precision: Precision = None) -> Array:
    """``a @ b`` with ``a`` cast to ``b``'s dtype (the compute dtype: under bf16 compute both
    operands are bf16, the tensor cores' format), accumulated in and returned as
    ``accumulate`` (the state's dtype: float32 under bf16 compute). Every matmul of the
    recurrent cells' steps and the fused kernels' loops is one of these."""
    return jnp.dot(a.astype(b.dtype), b, precision=precision, preferred_element_type=accumulate)


def flat_matmul(a: Array, b: Array, precision: Precision = None) -> Array:
    """``sum_t a[t].T @ b[t]`` as one ``[features, time * batch] @ [time * batch, out]`` matmul:
    the weight gradient of a whole sequence, left out of the loop."""
    return jnp.dot(
        a.reshape(-1, a.shape[-1]).T,
        b.reshape(-1, b.shape[-1]),
        precision=precision,
        preferred_element_type=accumulation(jnp.result_type(a, b)),
    )


def apply_mask(h: Array, recurrent_mask: Array | None) -> Array:
    """``h`` (``[…, batch, hidden]``) times the recurrent mask (``[batch, hidden]``), or ``h``."""
    if recurrent_mask is None:
        return h
    return h * recurrent_mask.reshape((1,) * (h.ndim - recurrent_mask.ndim) + recurrent_mask.shape)


class WeightGradients(NamedTuple):
    r"""The weight-gradient tail of the fused kernels' backward passes (LSTM and GRU).

    At each step the backward loop has ``d_proj``, the gradient of the projected inputs
    (``[batch, gates * hidden]``), and ``d_rec``, the cotangent of the recurrent matmul's output
    (the LSTM's equals ``d_proj``). Without ``remat`` the loop emits ``d_proj`` and every weight
    gradient is one matmul over all steps after it:

    .. math::
        \delta U = \sum_t \tilde h_{t-1}^\top \delta_{rec,t}, \quad
        \delta W = \sum_t x_t^\top \delta_{proj,t}, \quad
        \delta b = \sum_t \delta_{proj,t}, \quad \delta x_t = \delta_{proj,t} W^\top

    With ``remat`` nothing ``[time, batch, gates * hidden]`` may exist, so the sums are kept in
    the loop's carry (one small matmul per step) and the loop emits :math:`\delta x_t` itself.
    """

    accumulate: bool
    recurrent_kernel: Array
    input_kernel: Array | None
    bias: Array | None
    xs: Array | None
    precision: Precision

    def initial(self) -> dict[str, Array]:
        """The sums carried through the loop (none without ``accumulate``)."""
        if not self.accumulate:
            return {}
        acc = accumulation(self.recurrent_kernel.dtype)
        sums = {"recurrent": jnp.zeros(self.recurrent_kernel.shape, acc)}
        if self.input_kernel is not None:
            sums["input"] = jnp.zeros(self.input_kernel.shape, acc)
            sums["bias"] = jnp.zeros(self.bias.shape, acc)
        return sums

    def step(self, sums, h_in_t, d_rec_t, x_t, d_proj_t) -> tuple[dict[str, Array], Array]:
        """Inside the loop: the updated sums and what the loop emits for this step."""
        if not self.accumulate:
            return sums, d_proj_t
        dtype = self.recurrent_kernel.dtype
        sums = dict(sums)
        sums["recurrent"] += flat_matmul(h_in_t.astype(dtype), d_rec_t, self.precision)
        if self.input_kernel is None:
            return sums, d_proj_t
        sums["input"] += flat_matmul(x_t.astype(dtype), d_proj_t, self.precision)
        sums["bias"] += d_proj_t.astype(accumulation(dtype)).sum(axis=0)
        return sums, self._inputs_gradient(d_proj_t)

    def finish(self, sums, emitted, h_in, d_rec) -> tuple[Array, Array | None, Array | None, Array]:
        """After the loop: ``(d xs, d input_kernel, d bias, d recurrent_kernel)`` from the final
        sums or the loop's stacked output (``d_rec`` stacked, unused with ``accumulate``)."""
        kernel = self.recurrent_kernel
        if self.accumulate:
            d_recurrent = sums["recurrent"].astype(kernel.dtype)
            if self.input_kernel is None:
                return emitted, None, None, d_recurrent
            d_input = sums["input"].astype(self.input_kernel.dtype)
            return emitted, d_input, sums["bias"].astype(self.bias.dtype), d_recurrent
        d_proj = emitted
        d_recurrent = flat_matmul(h_in.astype(kernel.dtype), d_rec, self.precision)
        d_recurrent = d_recurrent.astype(kernel.dtype)
        if self.input_kernel is None:
            return d_proj, None, None, d_recurrent
        d_input = flat_matmul(self.xs.astype(kernel.dtype), d_proj, self.precision)
        d_bias = d_proj.astype(accumulation(kernel.dtype)).sum(axis=(0, 1))
        return (
            self._inputs_gradient(d_proj),
            d_input.astype(self.input_kernel.dtype),
            d_bias.astype(self.bias.dtype),
            d_recurrent,
        )

    def _inputs_gradient(self, d_proj: Array) -> Array:
        return jnp.dot(d_proj, self.input_kernel.T, precision=self.precision).astype(self.xs.dtype)
