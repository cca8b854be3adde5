"""Weights to and from Flax's own recurrent cells, NNX and linen.

=============================  ==========================================================
Flax                           gatenets
=============================  ==========================================================
``LSTMCell`` ``ii, if(_), ig,  ``LSTMCell``: ``kernel = [ii | if | ig | io]``,
io`` (no bias), ``hi, hf, hg,  ``recurrent_kernel = [hi | hf | hg | ho]``,
ho`` (with bias)               ``bias = [b_hi | b_hf | b_hg | b_ho]``
``OptimizedLSTMCell``          the same, already fused: ``dense_i.kernel``,
                               ``dense_h.kernel``, ``dense_h.bias``
NNX ``GRUCell`` ``dense_i``    ``GRUCell(reset_after=True)``: ``kernel``, ``bias`` from
(bias), ``dense_h`` (none)     ``dense_i``, ``recurrent_kernel`` from ``dense_h``,
                               ``recurrent_bias = 0``
linen ``GRUCell`` ``ir, iz,    ``kernel = [ir | iz | in]``, ``bias = [b_ir | b_iz | b_in]``,
in`` (bias), ``hr, hz`` (none) ``recurrent_kernel = [hr | hz | hn]``,
``hn`` (bias)                  ``recurrent_bias = [0 | 0 | b_hn]``
=============================  ==========================================================

Gate orders agree (``i, f, g, o`` and ``r, z, n``), so every conversion is a copy or a
concatenation: exact both ways. ``gate_fn`` and ``activation_fn`` carry over. What Flax's cells
cannot express — peepholes, a projection, the reset gate before the matmul — is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets.cells.gru import GRUCell
from gatenets.cells.lstm import LSTMCell
from gatenets.recurrent import RNN, Bidirectional

_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")


def _value(tree: Any, *path: str) -> np.ndarray:
    """The array at ``path`` in an NNX module (attributes) or a linen params dict (keys)."""
    for key in path:
        tree = tree[key] if isinstance(tree, Mapping) else getattr(tree, key)
    return np.asarray(tree[...] if isinstance(tree, nnx.Variable) else tree)


def _lstm_from_blocks(inputs, recurrent, biases) -> dict[str, np.ndarray]:
    return {
        "kernel": np.concatenate(inputs, axis=-1),
        "recurrent_kernel": np.concatenate(recurrent, axis=-1),
        "bias": np.concatenate(biases, axis=-1),
    }


def _cell_arrays(source: Any) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """``(kind, gatenets arrays, cell options)`` of a Flax NNX cell or linen params dict."""
    if isinstance(source, nnx.OptimizedLSTMCell):
        arrays = {
            "kernel": _value(source, "dense_i", "kernel"),
            "recurrent_kernel": _value(source, "dense_h", "kernel"),
            "bias": _value(source, "dense_h", "bias"),
        }
        return "lstm", arrays, _functions(source)
    if isinstance(source, nnx.LSTMCell):
        names = {"i": "ii", "f": "if_", "g": "ig", "o": "io"}
        arrays = _lstm_from_blocks(
            [_value(source, names[g], "kernel") for g in _LSTM_GATES],
            [_value(source, f"h{g}", "kernel") for g in _LSTM_GATES],
            [_value(source, f"h{g}", "bias") for g in _LSTM_GATES],
        )
        return "lstm", arrays, _functions(source)
    if isinstance(source, nnx.GRUCell):
        bias = _value(source, "dense_i", "bias")
        arrays = {
            "kernel": _value(source, "dense_i", "kernel"),
            "bias": bias,
            "recurrent_kernel": _value(source, "dense_h", "kernel"),
            "recurrent_bias": np.zeros_like(bias),
        }
        return "gru", arrays, _functions(source)
    if isinstance(source, Mapping):
        params = source.get("params", source)
        if {"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"} <= set(params):
            arrays = _lstm_from_blocks(
                [_value(params, f"i{g}", "kernel") for g in _LSTM_GATES],
                [_value(params, f"h{g}", "kernel") for g in _LSTM_GATES],
                [_value(params, f"h{g}", "bias") for g in _LSTM_GATES],
            )
            return "lstm", arrays, {}
        if {"ir", "iz", "in", "hr", "hz", "hn"} <= set(params):
            hn_bias = _value(params, "hn", "bias")
            arrays = {
                "kernel": np.concatenate(
                    [_value(params, f"i{g}", "kernel") for g in _GRU_GATES], -1
                ),
                "bias": np.concatenate([_value(params, f"i{g}", "bias") for g in _GRU_GATES], -1),
                "recurrent_kernel": np.concatenate(
                    [_value(params, f"h{g}", "kernel") for g in _GRU_GATES], -1
                ),
                "recurrent_bias": np.concatenate(
                    [np.zeros_like(hn_bias), np.zeros_like(hn_bias), hn_bias], -1
                ),
            }
            return "gru", arrays, {}
        raise ValueError(
            "source is a mapping but not the params of a Flax linen LSTMCell, "
            "OptimizedLSTMCell or GRUCell; its keys are "
            f"{sorted(params)} (expected ii, if, ig, io, hi, hf, hg, ho or ir, iz, in, hr, hz, hn)."
        )
    raise TypeError(
        "source must be a Flax nnx.LSTMCell, nnx.OptimizedLSTMCell or nnx.GRUCell (alone or in "
        "nnx.RNN / nnx.Bidirectional) or a linen params dict of one; got "
        f"{type(source).__name__}."
    )


def _functions(cell: Any) -> dict[str, Any]:
    return {"gate_fn": getattr(cell, "gate_fn", None), "activation_fn": cell.activation_fn}


def _make_cell(kind: str, arrays: dict[str, np.ndarray], options: dict[str, Any]) -> Any:
    in_features, blocks_hidden = arrays["kernel"].shape
    dtype = arrays["kernel"].dtype
    kwargs = {k: v for k, v in options.items() if v is not None}
    if kind == "lstm":
        cell = LSTMCell(
            in_features, blocks_hidden // 4, param_dtype=dtype, rngs=nnx.Rngs(0), **kwargs
        )
    else:
        cell = GRUCell(
            in_features, blocks_hidden // 3, param_dtype=dtype, rngs=nnx.Rngs(0), **kwargs
        )
    _load(cell, arrays)
    return cell


def _load(cell: Any, arrays: dict[str, np.ndarray]) -> None:
    for name, value in arrays.items():
        current = getattr(cell, name)
        if current.shape != value.shape:
            raise ValueError(
                f"{type(cell).__name__}.{name}: Flax's weights have shape {value.shape}; "
                f"expected {current.shape}."
            )
        current[...] = jnp.asarray(value, current.dtype)


def from_flax(source: Any) -> Any:
    """The gatenets equivalent of a Flax recurrent cell or layer, with the same weights.

    Args:
      source: an ``nnx.LSTMCell``, ``nnx.OptimizedLSTMCell`` or ``nnx.GRUCell`` (→ the gatenets
        cell); an ``nnx.RNN`` of one (→ :class:`~gatenets.RNN` with its ``reverse`` and
        ``time_major``); an ``nnx.Bidirectional`` of two (→ :class:`~gatenets.Bidirectional`
        with its ``merge_fn``); or the ``params`` of a linen ``LSTMCell`` /
        ``OptimizedLSTMCell`` / ``GRUCell`` (→ the gatenets cell).

    Returns:
      a gatenets cell or layer that computes the same outputs and carries.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from gatenets.interop import from_flax
      >>> flax_cell = nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0))
      >>> cell = from_flax(flax_cell)
      >>> carry = flax_cell.initialize_carry((2, 3), nnx.Rngs(0))  # Flax's (c, h) tuple
      >>> x = jnp.ones((2, 3))
      >>> ours = cell.carry_type(*carry)  # named once: gatenets refuses a bare pair
      >>> bool(jnp.allclose(cell(ours, x)[1], flax_cell(carry, x)[1], atol=1e-6))
      True
    """
    if isinstance(source, nnx.Bidirectional):
        forward, backward = (from_flax(r) for r in (source.forward_rnn, source.backward_rnn))
        backward.reverse = True  # Flax's Bidirectional runs its backward RNN reversed
        return Bidirectional(forward, backward, merge_fn=source.merge_fn)
    if isinstance(source, nnx.RNN):
        if source.reverse and not source.keep_order:
            raise ValueError(
                "nnx.RNN(reverse=True, keep_order=False) returns its outputs in reversed time; "
                "gatenets keeps the input's order. Set keep_order=True in Flax first."
            )
        cell = from_flax(source.cell)
        return RNN(cell, reverse=source.reverse, time_major=source.time_major)
    return _make_cell(*_cell_arrays(source))


def to_flax(cell: Any, *, linen: bool = False, optimized: bool = True) -> Any:
    """The Flax cell equivalent to a gatenets ``LSTMCell`` or ``GRUCell``, with its weights.

    Args:
      cell: a gatenets ``LSTMCell`` (no peepholes, no projection; two biases are summed) or
        ``GRUCell`` with ``reset_after=True``.
      linen: return the ``{"params": …}`` of the linen cell instead of an NNX cell.
      optimized: for an LSTM, ``OptimizedLSTMCell`` (fused kernels) rather than ``LSTMCell``.

    Returns:
      an ``nnx.OptimizedLSTMCell`` / ``nnx.LSTMCell`` / ``nnx.GRUCell``, or linen params.

    Raises:
      ValueError: for what Flax's cells cannot compute, naming it.

    Example:
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.interop import from_flax, to_flax
      >>> cell = gatenets.GRUCell(3, 4, rngs=nnx.Rngs(0))
      >>> type(to_flax(cell)).__name__, sorted(to_flax(cell, linen=True)["params"])
      ('GRUCell', ['hn', 'hr', 'hz', 'in', 'ir', 'iz'])
    """
    kind, arrays = _gatenets_arrays(cell)
    hidden = cell.hidden_features
    if linen:
        return {"params": _linen_params(kind, arrays, hidden)}
    functions = {"gate_fn": cell.gate_fn, "activation_fn": cell.activation_fn}
    common = dict(param_dtype=cell.param_dtype, rngs=nnx.Rngs(0), **functions)
    if kind == "gru":
        if np.any(arrays["recurrent_bias"][2 * hidden :]):
            raise ValueError(
                "to_flax: nnx.GRUCell has no bias inside the reset product (b_hn); this cell's "
                "recurrent_bias[2 * hidden:] is non-zero. Use linen=True (linen's GRUCell has "
                "it) or zero it first."
            )
        flax_cell = nnx.GRUCell(cell.in_features, hidden, **common)
        flax_cell.dense_i.kernel[...] = arrays["kernel"]
        flax_cell.dense_i.bias[...] = arrays["bias"]
        flax_cell.dense_h.kernel[...] = arrays["recurrent_kernel"]
        return flax_cell
    if optimized:
        flax_cell = nnx.OptimizedLSTMCell(cell.in_features, hidden, **common)
        flax_cell.dense_i.kernel[...] = arrays["kernel"]
        flax_cell.dense_h.kernel[...] = arrays["recurrent_kernel"]
        flax_cell.dense_h.bias[...] = arrays["bias"]
        return flax_cell
    flax_cell = nnx.LSTMCell(cell.in_features, hidden, **common)
    names = {"i": "ii", "f": "if_", "g": "ig", "o": "io"}
    blocks = {k: np.split(v, 4, axis=-1) for k, v in arrays.items()}
    for index, gate in enumerate(_LSTM_GATES):
        getattr(flax_cell, names[gate]).kernel[...] = blocks["kernel"][index]
        getattr(flax_cell, f"h{gate}").kernel[...] = blocks["recurrent_kernel"][index]
        getattr(flax_cell, f"h{gate}").bias[...] = blocks["bias"][index]
    return flax_cell


def _gatenets_arrays(cell: Any) -> tuple[str, dict[str, np.ndarray]]:
    """The arrays Flax's cells hold, from a gatenets cell (refusing what they cannot hold)."""
    if isinstance(cell, LSTMCell):
        if cell.peephole or cell.proj_size is not None:
            raise ValueError(
                "to_flax: Flax's LSTM cells have no peepholes or projection; got "
                f"peephole={cell.peephole}, proj_size={cell.proj_size}."
            )
        zeros = np.zeros((4 * cell.hidden_features,), np.dtype(cell.param_dtype))
        bias = np.asarray(cell._input_bias(cell.param_dtype)) if cell.use_bias else zeros
        return "lstm", {
            "kernel": np.asarray(cell.kernel[...]),
            "recurrent_kernel": np.asarray(cell.recurrent_kernel[...]),
            "bias": bias,
        }
    if isinstance(cell, GRUCell):
        hidden = cell.hidden_features
        if not cell.reset_after:
            raise ValueError(
                "to_flax: Flax's GRUCell applies the reset gate after the recurrent matmul; this "
                "cell has reset_after=False."
            )
        zeros = np.zeros((3 * hidden,), np.dtype(cell.param_dtype))
        bias = np.asarray(cell.bias[...]) if cell.use_bias else zeros
        recurrent_bias = np.asarray(cell.recurrent_bias[...]) if cell.use_bias else zeros
        # Flax's GRU has one bias per gate for r and z: b_hr and b_hz fold into the input's.
        bias = np.concatenate(
            [bias[: 2 * hidden] + recurrent_bias[: 2 * hidden], bias[2 * hidden :]]
        )
        return "gru", {
            "kernel": np.asarray(cell.kernel[...]),
            "recurrent_kernel": np.asarray(cell.recurrent_kernel[...]),
            "bias": bias,
            "recurrent_bias": recurrent_bias,
        }
    raise TypeError(f"cell must be a gatenets LSTMCell or GRUCell; got {type(cell).__name__}.")


def _linen_params(kind: str, arrays: dict[str, np.ndarray], hidden: int) -> dict[str, Any]:
    if kind == "lstm":
        blocks = {k: np.split(v, 4, axis=-1) for k, v in arrays.items()}
        params: dict[str, Any] = {}
        for index, gate in enumerate(_LSTM_GATES):
            params[f"i{gate}"] = {"kernel": blocks["kernel"][index]}
            params[f"h{gate}"] = {
                "kernel": blocks["recurrent_kernel"][index],
                "bias": blocks["bias"][index],
            }
        return params
    blocks = {k: np.split(v, 3, axis=-1) for k, v in arrays.items()}
    params = {}
    for index, gate in enumerate(_GRU_GATES):
        params[f"i{gate}"] = {"kernel": blocks["kernel"][index], "bias": blocks["bias"][index]}
        params[f"h{gate}"] = {"kernel": blocks["recurrent_kernel"][index]}
    params["hn"]["bias"] = blocks["recurrent_bias"][2]
    return params
