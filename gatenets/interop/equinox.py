"""Weights to and from Equinox's ``eqx.nn.LSTMCell`` and ``eqx.nn.GRUCell``.

==========================  ===========================================================
Equinox                     gatenets
==========================  ===========================================================
``LSTMCell.weight_ih``      ``LSTMCell.kernel`` transposed (gate order ``i, f, g, o``)
``LSTMCell.weight_hh``      ``LSTMCell.recurrent_kernel`` transposed
``LSTMCell.bias``           ``LSTMCell.bias`` (a second, recurrent bias is summed into it)
``GRUCell.weight_ih``       ``GRUCell.kernel`` transposed (gate order ``r, z, n``)
``GRUCell.weight_hh``       ``GRUCell.recurrent_kernel`` transposed
``GRUCell.bias``            ``GRUCell.bias`` + ``recurrent_bias[:2H]`` (``reset_after=True``)
``GRUCell.bias_n``          ``GRUCell.recurrent_bias[2H:]``, inside the reset product
==========================  ===========================================================

Equinox's cells take one unbatched step, ``cell(x[in], (h, c)) -> (h, c)`` for an LSTM (``h``
first) and ``cell(x, h) -> h`` for a GRU; gatenets' carry is ``LSTMCarry(c=c, h=h)``.
Equinox is imported only when these functions run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets.cells.gru import GRUCell
from gatenets.cells.lstm import LSTMCell
from gatenets.interop.torch import check_compute_dtype


def _equinox():
    try:
        import equinox
    except ImportError as err:  # pragma: no cover - exercised only without equinox
        raise ImportError("gatenets.interop.equinox needs Equinox: pip install equinox") from err
    return equinox


def _load(cell: Any, arrays: dict[str, Any]) -> Any:
    for name, value in arrays.items():
        getattr(cell, name)[...] = jnp.asarray(value, getattr(cell, name).dtype)
    return cell


def from_equinox(cell: Any) -> LSTMCell | GRUCell:
    """The gatenets cell equivalent to an ``eqx.nn.LSTMCell`` or ``eqx.nn.GRUCell``.

    Args:
      cell: an Equinox ``LSTMCell`` or ``GRUCell`` (with or without bias).

    Returns:
      a :class:`~gatenets.LSTMCell` or :class:`~gatenets.GRUCell` (``reset_after=True``) with
      the same weights and dtype; run it over sequences with :class:`~gatenets.RNN`.

    Example:
      >>> import equinox as eqx, jax, jax.numpy as jnp
      >>> import gatenets
      >>> from gatenets.interop import from_equinox
      >>> eqx_cell = eqx.nn.LSTMCell(3, 4, key=jax.random.key(0))
      >>> cell = from_equinox(eqx_cell)
      >>> x, h, c = jnp.ones(3), jnp.zeros(4), jnp.zeros(4)
      >>> h_eqx, c_eqx = eqx_cell(x, (h, c))
      >>> carry, h_ours = cell(gatenets.LSTMCarry(c=c[None], h=h[None]), x[None])
      >>> bool(jnp.allclose(h_ours[0], h_eqx, atol=1e-6))
      True
    """
    eqx = _equinox()
    if not isinstance(cell, eqx.nn.LSTMCell | eqx.nn.GRUCell):
        raise TypeError(
            f"cell must be an equinox.nn.LSTMCell or equinox.nn.GRUCell; got {type(cell).__name__}."
        )
    dtype = cell.weight_ih.dtype
    kwargs = dict(use_bias=cell.use_bias, param_dtype=dtype, rngs=nnx.Rngs(0))
    arrays = {"kernel": cell.weight_ih.T, "recurrent_kernel": cell.weight_hh.T}
    if isinstance(cell, eqx.nn.LSTMCell):
        ours = LSTMCell(cell.input_size, cell.hidden_size, **kwargs)
        if cell.use_bias:
            arrays["bias"] = cell.bias
        return _load(ours, arrays)
    ours = GRUCell(cell.input_size, cell.hidden_size, reset_after=True, **kwargs)
    if cell.use_bias:
        arrays["bias"] = cell.bias
        zeros = jnp.zeros((2 * cell.hidden_size,), dtype)
        arrays["recurrent_bias"] = jnp.concatenate([zeros, cell.bias_n])
    return _load(ours, arrays)


def to_equinox(cell: LSTMCell | GRUCell) -> Any:
    """The ``eqx.nn.LSTMCell`` / ``eqx.nn.GRUCell`` equivalent to a gatenets cell.

    Args:
      cell: a gatenets :class:`~gatenets.LSTMCell` (no peepholes, no projection) or
        :class:`~gatenets.GRUCell` with ``reset_after=True``, with the sigmoid and tanh that
        Equinox's cells compute.

    Returns:
      the Equinox cell with the same weights and dtype.

    Raises:
      ValueError: for what Equinox's cells cannot compute, naming it.

    Example:
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.interop import to_equinox
      >>> eqx_cell = to_equinox(gatenets.GRUCell(3, 4, rngs=nnx.Rngs(0)))
      >>> type(eqx_cell).__name__, eqx_cell.weight_ih.shape
      ('GRUCell', (12, 3))
    """
    eqx = _equinox()
    if not isinstance(cell, LSTMCell | GRUCell):
        raise TypeError(
            f"cell must be a gatenets LSTMCell or GRUCell; got {type(cell).__name__}. For a "
            "layer, convert each of its cells (layer.layers[k].cell)."
        )
    if not cell.standard_functions:
        raise ValueError(
            "to_equinox: Equinox's cells compute sigmoid gates and tanh activations only; this "
            f"cell has gate_fn={getattr(cell.gate_fn, '__name__', cell.gate_fn)}, activation_fn="
            f"{getattr(cell.activation_fn, '__name__', cell.activation_fn)}."
        )
    check_compute_dtype(cell, "to_equinox: an Equinox cell")
    hidden = cell.hidden_features
    dtype = jnp.dtype(cell.param_dtype)
    key = jax.random.key(0)
    if isinstance(cell, LSTMCell):
        if cell.peephole or cell.proj_size is not None:
            raise ValueError(
                "to_equinox: eqx.nn.LSTMCell has no peepholes or projection; got "
                f"peephole={cell.peephole}, proj_size={cell.proj_size}."
            )
        target = eqx.nn.LSTMCell(
            cell.in_features, hidden, use_bias=cell.use_bias, dtype=dtype, key=key
        )
        values = [cell.kernel[...].T, cell.recurrent_kernel[...].T]
        if cell.use_bias:
            values.append(cell._input_bias(dtype))
        return eqx.tree_at(
            lambda c: (c.weight_ih, c.weight_hh, c.bias)[: len(values)], target, values
        )
    if not cell.reset_after:
        raise ValueError(
            "to_equinox: eqx.nn.GRUCell applies the reset gate after the recurrent matmul; "
            "this cell has reset_after=False."
        )
    target = eqx.nn.GRUCell(cell.in_features, hidden, use_bias=cell.use_bias, dtype=dtype, key=key)
    values = [cell.kernel[...].T, cell.recurrent_kernel[...].T]
    if cell.use_bias:
        # b_hr and b_hz add like input biases; b_hn stays inside the reset product.
        recurrent = np.asarray(cell.recurrent_bias[...])
        values.append(cell._input_bias(dtype))
        values.append(jnp.asarray(recurrent[2 * hidden :]))
    return eqx.tree_at(
        lambda c: (c.weight_ih, c.weight_hh, c.bias, c.bias_n)[: len(values)], target, values
    )


def reseed_dropout(module: Any, key: Any) -> None:
    """Gives every random stream in ``module`` a fresh key drawn from ``key``, whatever the
    stream's name: for a gatenets (or any NNX) module inside an Equinox model, whose advanced
    streams are thrown away with the traced copy under ``eqx.filter_jit``.

    ``nnx.reseed(module, dropout=key)`` does the same for streams named ``"dropout"`` only;
    a module built with ``nnx.Rngs(0)`` holds its dropout streams under ``"default"``, and that
    call would leave them as they were, without a word. Each stream gets its own key.

    Args:
      module: an NNX module (a gatenets layer).
      key: a JAX random key, a fresh one per step (``jax.random.split``).

    Raises:
      ValueError: if the module holds no random stream (nothing would change).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.interop import reseed_dropout
      >>> lstm = gatenets.LSTM(3, 4, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
      >>> def masked(key):
      ...     reseed_dropout(lstm, key)
      ...     return lstm(jnp.ones((1, 6, 3)))
      >>> bool(jnp.all(masked(jax.random.key(1)) == masked(jax.random.key(1))))
      True
      >>> bool(jnp.all(masked(jax.random.key(1)) == masked(jax.random.key(2))))
      False
    """
    tags = sorted(
        {
            stream.key.tag
            for _, stream in nnx.iter_graph(module)
            if isinstance(stream, nnx.RngStream)
        }
    )
    if not tags:
        raise ValueError(
            f"module ({type(module).__name__}) holds no random stream; build it with rngs= "
            "(its dropout layers keep theirs)."
        )
    keys = jax.random.split(key, len(tags))
    nnx.reseed(module, **dict(zip(tags, keys, strict=True)))
