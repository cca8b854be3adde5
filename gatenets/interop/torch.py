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

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets.cells.gru import GRUCell
from gatenets.cells.lstm import LSTMCell
from gatenets.recurrent import RecurrentStack
from gatenets.registry import GRU, LSTM


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


class TorchConfig(NamedTuple):
    """What a PyTorch ``nn.LSTM`` / ``nn.GRU`` is, as read off a module or its state dict."""

    kind: str  # "LSTM" or "GRU"
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    proj_size: int
    bias: bool
    dtype: Any


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _strip_prefix(state: Mapping[str, Any], prefix: str | None) -> dict[str, np.ndarray]:
    """The state dict's RNN entries without their key prefix (found when not given)."""
    if prefix is None:
        found = [k[: -len("weight_ih_l0")] for k in state if k.endswith("weight_ih_l0")]
        if len(found) != 1:
            raise ValueError(
                "state_dict: cannot tell which entries are the RNN's: found "
                f"{len(found)} keys ending in 'weight_ih_l0' ({found}). Pass prefix=."
            )
        prefix = found[0]
    entries = {k[len(prefix) :]: _as_numpy(v) for k, v in state.items() if k.startswith(prefix)}
    if "weight_ih_l0" not in entries:
        raise ValueError(
            f"state_dict has no key {prefix + 'weight_ih_l0'!r}; its keys start "
            f"{sorted(state)[:6]}. Pass the prefix before 'weight_ih_l0' as prefix=."
        )
    return entries


def _config_from_state(state: Mapping[str, np.ndarray]) -> TorchConfig:
    """Infers layers, directions, projection and the cell type from PyTorch's key names."""
    num_layers = sum(1 for k in state if k.startswith("weight_ih_l") and "_reverse" not in k)
    w_hh = state["weight_hh_l0"]
    proj_size = state["weight_hr_l0"].shape[0] if "weight_hr_l0" in state else 0
    hidden = state["weight_hr_l0"].shape[1] if proj_size else w_hh.shape[1]
    blocks = w_hh.shape[0] // hidden
    if blocks not in (3, 4) or blocks * hidden != w_hh.shape[0]:
        raise ValueError(
            f"state_dict: weight_hh_l0 has shape {w_hh.shape}, neither an LSTM's [4H, H] nor a "
            "GRU's [3H, H]."
        )
    return TorchConfig(
        kind="LSTM" if blocks == 4 else "GRU",
        input_size=state["weight_ih_l0"].shape[1],
        hidden_size=hidden,
        num_layers=num_layers,
        bidirectional="weight_ih_l0_reverse" in state,
        proj_size=proj_size,
        bias="bias_ih_l0" in state,
        dtype=state["weight_ih_l0"].dtype,
    )


def from_torch(
    source: Any,
    *,
    prefix: str | None = None,
    batch_first: bool | None = None,
    double_bias: bool = False,
) -> LSTM | GRU:
    """Builds the gatenets layer equivalent to a ``torch.nn.LSTM`` / ``torch.nn.GRU`` or to
    such a module's ``state_dict``.

    Every setting that changes the function (``num_layers``, ``bidirectional``, ``proj_size``,
    ``bias``, ``batch_first``, ``dropout``) carries over from a module; from a state dict, the
    layers, directions, projection, bias and cell type are read off the key names and shapes.
    By default the layer's parameter tree is that of ``gatenets.LSTM(...)`` /
    ``gatenets.GRU(...)``: an LSTM's two biases are summed (in float64, rounded once); a GRU
    keeps its recurrent bias, whose :math:`b_{hn}` sits inside the reset product.

    Args:
      source: a ``torch.nn.LSTM`` / ``torch.nn.GRU``, or a mapping of names to tensors or
        arrays (a ``state_dict``, of the RNN or of a whole model).
      prefix: the key prefix before ``weight_ih_l0`` in a state dict (``"encoder.rnn."``);
        found when there is exactly one RNN in it.
      batch_first: the layout of the inputs; a module's own by default, else True.
      double_bias: keep PyTorch's two LSTM biases as ``bias`` and ``recurrent_bias``
        (``use_recurrent_bias=True``) instead of summing them.

    Returns:
      A :class:`~gatenets.LSTM` or :class:`~gatenets.GRU` computing the same outputs and final
      carries.

    Example:
      >>> import torch, jax.numpy as jnp, numpy as np
      >>> from gatenets.interop import from_torch
      >>> torch_lstm = torch.nn.LSTM(3, 4, batch_first=True)
      >>> lstm = from_torch(torch_lstm)
      >>> x = np.ones((2, 5, 3), np.float32)
      >>> expected = torch_lstm(torch.from_numpy(x))[0].detach().numpy()
      >>> bool(np.allclose(lstm(jnp.asarray(x)), expected, atol=1e-5))
      True
      >>> again = from_torch({"rnn." + k: v for k, v in torch_lstm.state_dict().items()})
      >>> bool(np.allclose(again(jnp.asarray(x)), expected, atol=1e-5))
      True
    """
    dropout = 0.0
    if isinstance(source, Mapping):
        state = _strip_prefix(source, prefix)
    else:
        torch = _torch()
        if not isinstance(source, torch.nn.LSTM | torch.nn.GRU):
            raise TypeError(
                "source must be a torch.nn.LSTM, a torch.nn.GRU or a state_dict; got "
                f"{type(source).__name__}."
            )
        state = {name: _as_numpy(p) for name, p in source.state_dict().items()}
        dropout = float(source.dropout)
        batch_first = source.batch_first if batch_first is None else batch_first
    config = _config_from_state(state)
    dtype = {np.dtype(np.float32): jnp.float32, np.dtype(np.float64): jnp.float64}.get(
        np.dtype(config.dtype)
    )
    if dtype is None:
        raise TypeError(f"parameters must be float32 or float64; got {config.dtype}.")
    layer = _empty_layer(config, dtype, dropout, batch_first, double_bias)
    for k, stack_layer in enumerate(layer.layers):
        for suffix, cell in _directions(stack_layer):
            _load_cell(cell, state, f"_l{k}{suffix}", config, double_bias)
    return layer


def _empty_layer(config, dtype, dropout, batch_first, double_bias) -> LSTM | GRU:
    if config.kind == "LSTM":
        layer_type = LSTM
        cell_kwargs = {
            "proj_size": config.proj_size or None,
            "use_recurrent_bias": config.bias and double_bias,
        }
    else:
        layer_type, cell_kwargs = GRU, {"reset_after": True}
    return layer_type(
        config.input_size,
        config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        dropout=dropout,
        time_major=not (True if batch_first is None else batch_first),
        use_bias=config.bias,
        param_dtype=dtype,
        rngs=nnx.Rngs(0),
        **cell_kwargs,
    )


def _load_cell(cell, state, suffix: str, config: TorchConfig, double_bias: bool) -> None:
    """Copies one layer-direction's PyTorch tensors into a gatenets cell, checking shapes."""

    def take(name):
        key = f"{name}{suffix}"
        if key not in state:
            raise ValueError(f"state_dict has no {key!r} (a {config.kind} needs it).")
        return state[key]

    values = {"kernel": take("weight_ih").T, "recurrent_kernel": take("weight_hh").T}
    if config.bias:
        if config.kind == "LSTM" and not double_bias:
            summed = take("bias_ih").astype(np.float64) + take("bias_hh").astype(np.float64)
            values["bias"] = summed.astype(config.dtype)
        else:
            values["bias"], values["recurrent_bias"] = take("bias_ih"), take("bias_hh")
    if config.proj_size:
        values["proj_kernel"] = take("weight_hr").T
    for name, value in values.items():
        current = getattr(cell, name)
        if current.shape != value.shape:
            raise ValueError(
                f"state_dict: {name} of layer{suffix} has shape {value.shape}; the layer read "
                f"off the keys expects {current.shape}."
            )
        current[...] = jnp.asarray(value, current.dtype)


def to_torch(layer: RecurrentStack, *, state_dict: bool = False, prefix: str = "") -> Any:
    """Builds the ``torch.nn.LSTM`` / ``torch.nn.GRU`` equivalent to a gatenets layer.

    Args:
      layer: a :class:`~gatenets.LSTM` or :class:`~gatenets.GRU`.
      state_dict: return the module's ``state_dict`` (tensors by PyTorch's names) instead of
        the module, e.g. to load into a model of one's own.
      prefix: put before every key of the state dict (``"encoder.rnn."``).

    Returns:
      A PyTorch module with the same weights (``batch_first = not layer.time_major``), or its
      state dict. A summed LSTM bias goes to ``bias_ih`` and ``bias_hh`` is zero.

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
    if state_dict:
        return {prefix + name: tensor for name, tensor in module.state_dict().items()}
    return module
