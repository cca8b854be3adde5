"""Weights to and from PyTorch's ``nn.LSTM`` and ``nn.GRU``.

PyTorch is imported only when these functions run; gatenets does not depend on it.

Mapping (per layer ``k`` and direction, ``_reverse`` for the backward one):

=====================  ===========================  ==========================
PyTorch                gatenets cell                note
=====================  ===========================  ==========================
``weight_ih_l{k}``     ``kernel``                   transposed, same gate order
``weight_hh_l{k}``     ``recurrent_kernel``         transposed
``bias_ih_l{k}``       ``bias``
``bias_hh_l{k}``       ``recurrent_bias``           ``use_recurrent_bias=True``
``weight_hr_l{k}``     ``proj_kernel``              transposed (LSTM ``proj_size``)
=====================  ===========================  ==========================
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets.cells.gru import GRUCell
from gatenets.cells.lstm import LSTMCell
from gatenets.recurrent import GRU, LSTM, RecurrentStack


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError("gatenets.interop.torch needs PyTorch: pip install torch") from err
    return torch


def _directions(layer: Any) -> list[tuple[str, Any]]:
    """``[(suffix, cell), …]`` of one stack layer: ``""`` forward, ``"_reverse"`` backward."""
    if hasattr(layer, "forward_rnn"):
        return [("", layer.forward_rnn.cell), ("_reverse", layer.backward_rnn.cell)]
    return [("", layer.cell)]


def _cell_tensors(cell: LSTMCell | GRUCell) -> dict[str, np.ndarray]:
    """The cell's parameters under PyTorch's names (without the layer suffix)."""
    tensors = {
        "weight_ih": np.asarray(cell.kernel[...]).T,
        "weight_hh": np.asarray(cell.recurrent_kernel[...]).T,
    }
    if cell.use_bias:
        tensors["bias_ih"] = np.asarray(cell.bias[...])
        recurrent = getattr(cell, "recurrent_bias", None)
        tensors["bias_hh"] = (
            np.asarray(recurrent[...])
            if recurrent is not None
            else np.zeros_like(tensors["bias_ih"])
        )
    if getattr(cell, "proj_size", None) is not None:
        tensors["weight_hr"] = np.asarray(cell.proj_kernel[...]).T
    return tensors


def from_torch(module: Any) -> LSTM | GRU:
    """Builds the gatenets layer equivalent to a ``torch.nn.LSTM`` or ``torch.nn.GRU``.

    Every setting that changes the function (``num_layers``, ``bidirectional``, ``proj_size``,
    ``bias``, ``batch_first``, ``dropout``) carries over, and the weights are copied exactly.

    Args:
      module: a ``torch.nn.LSTM`` or ``torch.nn.GRU``.

    Returns:
      A :class:`~gatenets.LSTM` or :class:`~gatenets.GRU` with the same weights; it computes
      the same outputs and final carries.

    Example:
      >>> import torch, jax.numpy as jnp, numpy as np
      >>> from gatenets.interop import from_torch
      >>> torch_lstm = torch.nn.LSTM(3, 4, batch_first=True)
      >>> lstm = from_torch(torch_lstm)
      >>> x = np.ones((2, 5, 3), np.float32)
      >>> expected = torch_lstm(torch.from_numpy(x))[0].detach().numpy()
      >>> bool(np.allclose(lstm(jnp.asarray(x)), expected, atol=1e-5))
      True
    """
    torch = _torch()
    if isinstance(module, torch.nn.LSTM):
        layer_type, cell_kwargs = (
            LSTM,
            {
                "proj_size": module.proj_size or None,
                "use_recurrent_bias": module.bias,
                "forget_bias": 0.0,
            },
        )
    elif isinstance(module, torch.nn.GRU):
        layer_type, cell_kwargs = GRU, {"reset_after": True}
    else:
        raise TypeError(
            f"module must be a torch.nn.LSTM or torch.nn.GRU; got {type(module).__name__}."
        )
    if module.mode not in ("LSTM", "GRU"):  # pragma: no cover - torch's own invariant
        raise TypeError(f"unsupported torch RNN mode {module.mode!r}.")
    dtype = {torch.float32: jnp.float32, torch.float64: jnp.float64}.get(module.weight_ih_l0.dtype)
    if dtype is None:
        raise TypeError(
            f"module parameters must be float32 or float64; got {module.weight_ih_l0.dtype}."
        )
    layer = layer_type(
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bidirectional=module.bidirectional,
        dropout=float(module.dropout),
        time_major=not module.batch_first,
        use_bias=module.bias,
        param_dtype=dtype,
        rngs=nnx.Rngs(0),
        **cell_kwargs,
    )
    state = {name: p.detach().cpu().numpy() for name, p in module.named_parameters()}
    for k, stack_layer in enumerate(layer.layers):
        for suffix, cell in _directions(stack_layer):
            for name, current in _cell_tensors(cell).items():
                value = state[f"{name}_l{k}{suffix}"]
                if value.shape != current.shape:  # pragma: no cover - guards the mapping
                    raise ValueError(f"{name}_l{k}{suffix}: shape {value.shape} != {current.shape}")
            cell.kernel[...] = jnp.asarray(state[f"weight_ih_l{k}{suffix}"].T, dtype)
            cell.recurrent_kernel[...] = jnp.asarray(state[f"weight_hh_l{k}{suffix}"].T, dtype)
            if module.bias:
                cell.bias[...] = jnp.asarray(state[f"bias_ih_l{k}{suffix}"], dtype)
                cell.recurrent_bias[...] = jnp.asarray(state[f"bias_hh_l{k}{suffix}"], dtype)
            if getattr(cell, "proj_size", None) is not None:
                cell.proj_kernel[...] = jnp.asarray(state[f"weight_hr_l{k}{suffix}"].T, dtype)
    return layer


def to_torch(layer: RecurrentStack) -> Any:
    """Builds the ``torch.nn.LSTM`` / ``torch.nn.GRU`` equivalent to a gatenets layer.

    Args:
      layer: a :class:`~gatenets.LSTM` or :class:`~gatenets.GRU`.

    Returns:
      A PyTorch module with the same weights (``batch_first = not layer.time_major``).

    Raises:
      ValueError: if the layer uses something PyTorch's modules cannot express (peepholes,
        ``reset_after=False``, learned initial carries, recurrent dropout), rather than
        silently dropping it.

    Example:
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.interop import to_torch
      >>> to_torch(gatenets.GRU(3, 4, num_layers=2, rngs=nnx.Rngs(0)))
      GRU(3, 4, num_layers=2, batch_first=True)
    """
    torch = _torch()
    if not isinstance(layer, LSTM | GRU):
        raise TypeError(
            f"layer must be a gatenets.LSTM or gatenets.GRU; got {type(layer).__name__}."
        )
    first = layer.layers[0]
    rnn = first.forward_rnn if hasattr(first, "forward_rnn") else first
    cell = rnn.cell
    if rnn.learn_initial_carry:
        raise ValueError(
            "to_torch: torch.nn RNNs have no learned initial carry (learn_initial_carry=True)."
        )
    if rnn.recurrent_dropout.rate > 0:
        raise ValueError("to_torch: torch.nn RNNs have no recurrent_dropout; set it to 0 first.")
    kwargs: dict[str, Any] = {}
    if isinstance(layer, LSTM):
        if cell.peephole:
            raise ValueError("to_torch: torch.nn.LSTM has no peephole connections (peephole=True).")
        module_type = torch.nn.LSTM
        kwargs["proj_size"] = cell.proj_size or 0
    else:
        if not cell.reset_after:
            raise ValueError(
                "to_torch: torch.nn.GRU applies the reset gate after the matmul; "
                "this layer has reset_after=False."
            )
        module_type = torch.nn.GRU
    dtype = {jnp.dtype(jnp.float32): torch.float32, jnp.dtype(jnp.float64): torch.float64}[
        jnp.dtype(cell.param_dtype)
    ]
    module = module_type(
        cell.in_features,
        layer.hidden_features,
        num_layers=layer.num_layers,
        bias=cell.use_bias,
        batch_first=not layer.time_major,
        dropout=layer.dropout.rate,
        bidirectional=layer.bidirectional,
        dtype=dtype,
        **kwargs,
    )
    with torch.no_grad():
        params = dict(module.named_parameters())
        for k, stack_layer in enumerate(layer.layers):
            for suffix, layer_cell in _directions(stack_layer):
                for name, value in _cell_tensors(layer_cell).items():
                    params[f"{name}_l{k}{suffix}"].copy_(
                        torch.from_numpy(np.array(value, copy=True))
                    )
    return module
