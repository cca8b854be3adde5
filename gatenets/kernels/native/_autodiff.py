"""The native kernels as differentiable JAX functions: argument checks, the FFI calls, and the
custom VJPs that pair each forward handler with its backward handler."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatenets._typing import Array
from gatenets.kernels._common import canonical_precision
from gatenets.kernels.native._registration import require_available, target

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check(name: str, array, shape: tuple, dtype) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(array.shape)}.")
    if dtype is not None and np.dtype(array.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}; got {array.dtype}.")


def _check_options(remat, unroll, precision) -> None:
    if remat:
        raise ValueError(
            "remat=True is not supported by the native kernels (they save the gates); "
            "use the JAX kernel (loop='fused') instead."
        )
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be a positive int; got {unroll!r}.")
    canonical_precision(precision)


def _common_checks(xs, recurrent_kernel, gates, h0, valid, input_kernel, bias, recurrent_mask):
    """Validates the arguments shared by both kernels; returns (hidden, dtype)."""
    dtype = np.dtype(recurrent_kernel.dtype)
    if dtype not in _DTYPES:
        raise TypeError(
            f"recurrent_kernel must be float32 or float64 for the native kernels; got {dtype}."
        )
    if recurrent_kernel.ndim != 2:
        raise ValueError(
            f"recurrent_kernel must be [hidden, {gates} hidden]; got shape "
            f"{tuple(recurrent_kernel.shape)}."
        )
    hidden = recurrent_kernel.shape[0]
    _check("recurrent_kernel", recurrent_kernel, (hidden, gates * hidden), dtype)
    if xs.ndim != 3:
        raise ValueError(f"xs must be [time, batch, features]; got shape {tuple(xs.shape)}.")
    steps, batch = xs.shape[:2]
    _check("h0", h0, (batch, hidden), dtype)
    if input_kernel is None:
        if bias is not None:
            raise ValueError("bias is only used with input_kernel; got bias without it.")
        _check("xs", xs, (steps, batch, gates * hidden), dtype)
    else:
        if bias is None:
            raise ValueError("input_kernel needs bias ([gates * hidden]); got bias=None.")
        _check("xs", xs, (steps, batch, xs.shape[2]), dtype)
        _check("input_kernel", input_kernel, (xs.shape[2], gates * hidden), dtype)
        _check("bias", bias, (gates * hidden,), dtype)
    if valid is not None:
        _check("valid", valid, (steps, batch), None)
    if recurrent_mask is not None:
        _check("recurrent_mask", recurrent_mask, (batch, hidden), dtype)
    return hidden, dtype


def _constants(overrides, names: tuple[str, ...]) -> tuple[float | None, ...]:
    overrides = tuple(None if v is None else float(v) for v in overrides)
    if len(overrides) != len(names):
        raise ValueError(
            f"overrides must have {len(names)} entries ({', '.join(names)}); got {overrides}."
        )
    return overrides


class _Config(NamedTuple):
    """Static settings of one call (hashable: part of the compiled program)."""

    reverse: bool
    return_gates: bool
    overrides: tuple[float | None, ...]  # LSTM: input, forget, output; GRU: reset, update


def _options(config: _Config, input_kernel, valid, mask, **flags: bool) -> dict[str, Any]:
    """The handlers' attributes (every handler takes all of them, decoded into one struct)."""
    options = {
        "reverse": config.reverse,
        "has_input": input_kernel is not None,
        "has_valid": valid is not None,
        "has_mask": mask is not None,
        "has_recurrent_bias": False,
        "has_gate_cotangent": False,
        **flags,
    }
    options = {name: np.int64(value) for name, value in options.items()}
    overrides = config.overrides
    options["override_mask"] = np.int64(
        sum(1 << k for k, v in enumerate(overrides) if v is not None)
    )
    for k in range(3):
        value = overrides[k] if k < len(overrides) else None
        options[f"override_{k}"] = np.float64(0.0 if value is None else value)
    return options


def _or_empty(array, dtype) -> Array:
    return jnp.zeros((0,), dtype) if array is None else array


def _valid_bytes(valid) -> Array:
    return jnp.zeros((0,), jnp.uint8) if valid is None else valid.astype(jnp.uint8)


def _shape(shape, dtype, keep: bool = True) -> jax.ShapeDtypeStruct:
    """The result type of an FFI output, zero-size where it is not wanted."""
    return jax.ShapeDtypeStruct(tuple(shape) if keep else (0,), dtype)


def _call(name: str, results: list, *arrays, **options):
    return jax.ffi.ffi_call(target(name), results, vmap_method="sequential")(*arrays, **options)


def _input_results(xs, input_kernel, gates: int, hidden: int, dtype) -> list:
    """The gradients of the input kernel, the bias and the raw inputs (empty without them)."""
    inside = input_kernel is not None
    features = input_kernel.shape[0] if inside else 0
    steps, batch = (xs.shape[:2]) if inside else (0, 0)
    return [
        _shape((features, gates * hidden), dtype, inside),
        _shape((gates * hidden,), dtype, inside),
        _shape((steps, batch, features), dtype, inside),
    ]


def _input_gradients(input_kernel, mask, d_projected, d_input, d_bias, d_xs_raw):
    """``(d xs, d input_kernel, d bias, …, d recurrent_mask)`` from the handler's results: the
    recurrent mask is a constant multiplier (zero gradient, as in the JAX kernels)."""
    d_mask = None if mask is None else jnp.zeros_like(mask)
    if input_kernel is None:
        return d_projected, None, None, d_mask
    return d_xs_raw, d_input, d_bias, d_mask


# ---------------------------------------------------------------------------------------------
# LSTM


def _lstm_forward(config, xs, input_kernel, bias, u, c0, h0, valid, mask, for_backward):
    steps, batch = xs.shape[:2]
    hidden, dtype = u.shape[0], u.dtype
    results = [
        _shape((batch, hidden), dtype),
        _shape((batch, hidden), dtype),
        _shape((steps, batch, hidden), dtype),
        _shape((steps, batch, 4 * hidden), dtype, config.return_gates or for_backward),
        _shape((steps, batch, hidden), dtype, for_backward),
    ]
    arrays = (xs, _or_empty(input_kernel, dtype), _or_empty(bias, dtype), u, c0, h0)
    arrays += (_valid_bytes(valid), _or_empty(mask, dtype))
    return _call("lstm_forward", results, *arrays, **_options(config, input_kernel, valid, mask))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm(config, xs, input_kernel, bias, u, c0, h0, valid, mask):
    # Not differentiated: the inference variant, which saves neither gates nor cell states.
    c, h, hs, acts, _ = _lstm_forward(config, xs, input_kernel, bias, u, c0, h0, valid, mask, False)
    return c, h, hs, acts if config.return_gates else None


def _lstm_fwd(config, xs, input_kernel, bias, u, c0, h0, valid, mask):
    c, h, hs, acts, cs = _lstm_forward(config, xs, input_kernel, bias, u, c0, h0, valid, mask, True)
    # Pre-projected inputs are not needed again: their gradient is dz itself.
    kept_xs = xs if input_kernel is not None else None
    residuals = (kept_xs, input_kernel, u, c0, h0, valid, mask, cs, hs, acts)
    return (c, h, hs, acts if config.return_gates else None), residuals


def _lstm_bwd(config, residuals, cotangents):
    xs, input_kernel, u, c0, h0, valid, mask, cs, hs, acts = residuals
    dc_last, dh_last, dhs, dacts = cotangents
    steps, batch, hidden = hs.shape
    dtype = u.dtype
    has_dacts = config.return_gates and dacts is not None
    results = [
        _shape((batch, hidden), dtype),
        _shape((batch, hidden), dtype),
        _shape((steps, batch, 4 * hidden), dtype),
        _shape((hidden, 4 * hidden), dtype),
        *_input_results(xs, input_kernel, 4, hidden, dtype),
    ]
    arrays = (_or_empty(xs, dtype), _or_empty(input_kernel, dtype), u, c0, h0)
    arrays += (_valid_bytes(valid), _or_empty(mask, dtype), cs, hs, acts)
    arrays += (dc_last.astype(dtype), dh_last.astype(dtype), dhs.astype(dtype))
    arrays += (dacts.astype(dtype) if has_dacts else jnp.zeros((0,), dtype),)
    options = _options(config, input_kernel, valid, mask, has_gate_cotangent=has_dacts)
    dc0, dh0, dz, d_recurrent, *inputs = _call("lstm_backward", results, *arrays, **options)
    dxs, d_input, d_bias, d_mask = _input_gradients(input_kernel, mask, dz, *inputs)
    return dxs, d_input, d_bias, d_recurrent, dc0, dh0, None, d_mask


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_sequence_native(
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
    r"""The native-loop drop-in for :func:`gatenets.kernels.lstm_sequence` (same arguments,
    same results).

    .. math::
        [i_t, f_t, g_t, o_t] = [\sigma, \sigma, \tanh, \sigma](x_t + (h_{t-1} \odot m) U) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t, \quad h_t = o_t \odot \tanh(c_t)

    with :math:`x_t` = ``xs[t]`` or ``xs[t] @ input_kernel + bias`` and :math:`m` the
    recurrent mask; the carry is held where ``valid`` is False.

    Args:
      xs: ``[time, batch, 4 hidden]`` projected inputs, or ``[time, batch, features]`` with
        ``input_kernel``.
      recurrent_kernel: ``[hidden, 4 hidden]`` (gate order ``i, f, g, o``), float32 or float64;
        every other float array must have its dtype.
      c0: ``[batch, hidden]`` initial cell state.
      h0: ``[batch, hidden]`` initial hidden state.
      valid: ``[time, batch]`` booleans, or None.
      input_kernel: ``[features, 4 hidden]`` to project inside the loop, or None.
      bias: ``[4 hidden]``, required with ``input_kernel``.
      recurrent_mask: ``[batch, hidden]`` multiplier of :math:`h_{t-1}`; it gets a zero
        gradient, as in the JAX kernel.
      reverse: loop from the last step to the first.
      return_gates: also return the gates.
      overrides: constants replacing the input, forget and output gates, or None each.
      remat: must be False (the native kernels save the gates).
      unroll: accepted for compatibility; the native loop is not unrolled.
      precision: checked as in :func:`~gatenets.kernels.lstm_sequence`, then ignored: the
        native kernels run on CPU, where every BLAS matmul is full float32 (or float64).

    Returns:
      ``(c_last, h_last, hs, acts)`` as :func:`~gatenets.kernels.lstm_sequence`.

    Raises:
      RuntimeError: the extension is not available (``native.unavailable_reason`` says why).
      ValueError, TypeError: an argument has the wrong shape, dtype or value, or
        ``remat=True``.
    """
    require_available()
    _check_options(remat, unroll, precision)
    hidden, dtype = _common_checks(
        xs, recurrent_kernel, 4, h0, valid, input_kernel, bias, recurrent_mask
    )
    _check("c0", c0, (xs.shape[1], hidden), dtype)
    constants = _constants(overrides, ("input", "forget", "output"))
    config = _Config(bool(reverse), bool(return_gates), constants)
    return _lstm(config, xs, input_kernel, bias, recurrent_kernel, c0, h0, valid, recurrent_mask)


# ---------------------------------------------------------------------------------------------
# GRU


def _gru_forward(config, xs, input_kernel, bias, u, b_hn, h0, valid, mask, for_backward):
    steps, batch = xs.shape[:2]
    hidden, dtype = u.shape[0], u.dtype
    # When training, the gates are the first half of the saved values: not written twice.
    results = [
        _shape((batch, hidden), dtype),
        _shape((steps, batch, hidden), dtype),
        _shape((steps, batch, 4 * hidden), dtype, for_backward),
        _shape((steps, batch, 2 * hidden), dtype, config.return_gates and not for_backward),
    ]
    arrays = (xs, _or_empty(input_kernel, dtype), _or_empty(bias, dtype), u)
    arrays += (_or_empty(b_hn, dtype), h0, _valid_bytes(valid), _or_empty(mask, dtype))
    options = _options(config, input_kernel, valid, mask, has_recurrent_bias=b_hn is not None)
    h, hs, values, gate_values = _call("gru_forward", results, *arrays, **options)
    if not config.return_gates:
        gate_values = None
    elif for_backward:
        gate_values = values[..., : 2 * hidden]
    return h, hs, values, gate_values


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru(config, xs, input_kernel, bias, u, b_hn, h0, valid, mask):
    h, hs, _, gates = _gru_forward(config, xs, input_kernel, bias, u, b_hn, h0, valid, mask, False)
    return h, hs, gates


def _gru_fwd(config, xs, input_kernel, bias, u, b_hn, h0, valid, mask):
    h, hs, values, gates = _gru_forward(
        config, xs, input_kernel, bias, u, b_hn, h0, valid, mask, True
    )
    kept_xs = xs if input_kernel is not None else None
    residuals = (kept_xs, input_kernel, u, b_hn, h0, valid, mask, hs, values)
    return (h, hs, gates), residuals


def _gru_bwd(config, residuals, cotangents):
    xs, input_kernel, u, b_hn, h0, valid, mask, hs, values = residuals
    dh_last, dhs, dgates = cotangents
    steps, batch, hidden = hs.shape
    dtype = u.dtype
    has_dgates = config.return_gates and dgates is not None
    results = [
        _shape((batch, hidden), dtype),
        _shape((steps, batch, 3 * hidden), dtype),
        _shape((hidden, 3 * hidden), dtype),
        _shape((hidden,), dtype, b_hn is not None),
        *_input_results(xs, input_kernel, 3, hidden, dtype),
    ]
    arrays = (_or_empty(xs, dtype), _or_empty(input_kernel, dtype), u, h0)
    arrays += (_valid_bytes(valid), _or_empty(mask, dtype), hs, values)
    arrays += (dh_last.astype(dtype), dhs.astype(dtype))
    arrays += (dgates.astype(dtype) if has_dgates else jnp.zeros((0,), dtype),)
    options = _options(
        config,
        input_kernel,
        valid,
        mask,
        has_recurrent_bias=b_hn is not None,
        has_gate_cotangent=has_dgates,
    )
    dh0, dxp, d_recurrent, d_b_hn, *inputs = _call("gru_backward", results, *arrays, **options)
    dxs, d_input, d_bias, d_mask = _input_gradients(input_kernel, mask, dxp, *inputs)
    d_b_hn = None if b_hn is None else d_b_hn
    return dxs, d_input, d_bias, d_recurrent, d_b_hn, dh0, None, d_mask


_gru.defvjp(_gru_fwd, _gru_bwd)


def gru_sequence_native(
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
    r"""The native-loop drop-in for :func:`gatenets.kernels.gru_sequence` (``reset_after=True``;
    same arguments, same results).

    .. math::
        r_t = \sigma(a^r_t), \quad z_t = \sigma(a^z_t), \quad
        n_t = \tanh(x^n_t + r_t \odot (U_n \tilde h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    with :math:`[a^r_t, a^z_t] = [x^r_t, x^z_t] + [U_r, U_z] \tilde h_{t-1}`,
    :math:`\tilde h_{t-1} = h_{t-1} \odot m` (the recurrent mask) and :math:`x_t` = ``xs[t]``
    or ``xs[t] @ input_kernel + bias``; the carry is held where ``valid`` is False.

    Args:
      xs: ``[time, batch, 3 hidden]`` projected inputs, or ``[time, batch, features]`` with
        ``input_kernel``.
      recurrent_kernel: ``[hidden, 3 hidden]``, float32 or float64; every other float array
        must have its dtype.
      h0: ``[batch, hidden]`` initial state.
      valid: ``[time, batch]`` booleans, or None.
      recurrent_bias: ``[hidden]``, the :math:`b_{hn}` inside the reset product, or None.
      input_kernel: ``[features, 3 hidden]`` to project inside the loop, or None.
      bias: ``[3 hidden]``, required with ``input_kernel``.
      recurrent_mask: ``[batch, hidden]`` multiplier of :math:`h_{t-1}` in the matmul.
      reverse: loop from the last step to the first.
      return_gates: also return ``[r, z]``.
      overrides: constants replacing the reset and update gates, or None each.
      remat: must be False (the native kernels save the gate values).
      unroll: accepted for compatibility; the native loop is not unrolled.
      precision: checked as in :func:`~gatenets.kernels.gru_sequence`, then ignored: the
        native kernels run on CPU, where every BLAS matmul is full float32 (or float64).

    Returns:
      ``(h_last, hs, gates)`` as :func:`~gatenets.kernels.gru_sequence`.

    Raises:
      RuntimeError: the extension is not available (``native.unavailable_reason`` says why).
      ValueError, TypeError: an argument has the wrong shape, dtype or value, or
        ``remat=True``.
    """
    require_available()
    _check_options(remat, unroll, precision)
    hidden, dtype = _common_checks(
        xs, recurrent_kernel, 3, h0, valid, input_kernel, bias, recurrent_mask
    )
    if recurrent_bias is not None:
        _check("recurrent_bias", recurrent_bias, (hidden,), dtype)
    config = _Config(bool(reverse), bool(return_gates), _constants(overrides, ("reset", "update")))
    return _gru(
        config, xs, input_kernel, bias, recurrent_kernel, recurrent_bias, h0, valid, recurrent_mask
    )
