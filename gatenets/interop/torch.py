"""Weights to and from PyTorch: ``nn.LSTM`` and ``nn.GRU`` (modules or state dicts), their
final states, and the layers a sequence model is made of around them (``nn.Embedding``,
``nn.Linear``, ``nn.LayerNorm``, ``nn.Dropout``, ``nn.Sequential``).

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

Final states: PyTorch stacks them, ``h_n`` (and an LSTM's ``c_n``) ``[layers * directions,
batch, units]``, in the order layer 0 forward, layer 0 backward, layer 1 forward, …;
gatenets returns one NamedTuple carry per layer. :func:`carry_from_torch` and
:func:`carry_to_torch` convert between the two.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets.cells.gru import GRUCarry, GRUCell
from gatenets.cells.lstm import LSTMCarry, LSTMCell
from gatenets.recurrent import BidirectionalCarry, RecurrentStack
from gatenets.registry import GRU, LSTM

# The parameter dtypes a converted layer can hold, and their PyTorch names.
_DTYPES = {
    "float32": jnp.float32,
    "float64": jnp.float64,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError("gatenets.interop.torch needs PyTorch: pip install torch") from err
    return torch


def check_compute_dtype(cell: Any, target: str) -> None:
    """Raises if ``cell`` computes in a dtype other than its parameters' (``dtype=`` given):
    PyTorch's, Keras's and Equinox's recurrent cells compute in their weights' dtype."""
    computes = jnp.dtype(cell.dtype if cell.dtype is not None else cell.param_dtype)
    params = jnp.dtype(cell.param_dtype)
    if computes != params:
        raise ValueError(
            f"{target} computes in its parameters' dtype; this cell has {params} "
            f"parameters and computes in {computes} (dtype=). Convert it with dtype=None, or "
            f"with param_dtype={computes}."
        )


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


def _as_numpy(value: Any, name: str = "value") -> np.ndarray:
    """A tensor or array as NumPy, exactly: bfloat16 tensors (which NumPy cannot hold) become
    ``ml_dtypes.bfloat16`` arrays through float32, which holds every bfloat16 value."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            return value.float().numpy().astype(jnp.bfloat16)
        try:
            return value.numpy()
        except TypeError as err:
            raise TypeError(f"{name}: a tensor of dtype {value.dtype} cannot be read.") from err
    if not hasattr(value, "shape"):
        raise TypeError(f"{name} must be a tensor or an array; got {type(value).__name__}.")
    return np.asarray(value)


def _to_tensor(array: Any) -> Any:
    """A NumPy/JAX array as a torch tensor of the same dtype (bfloat16 included, exactly)."""
    torch = _torch()
    array = np.asarray(array)
    if array.dtype == np.dtype(jnp.bfloat16):
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def _strip_prefix(
    state: Mapping[str, Any], prefix: str | None
) -> tuple[str, dict[str, np.ndarray]]:
    """``(prefix, the RNN's entries without it)``; the prefix is found when not given."""
    if prefix is None:
        found = [k[: -len("weight_ih_l0")] for k in state if k.endswith("weight_ih_l0")]
        if len(found) != 1:
            raise ValueError(
                "state_dict: cannot tell which entries are the RNN's: found "
                f"{len(found)} keys ending in 'weight_ih_l0' ({found}). Pass prefix=."
            )
        prefix = found[0]
    entries = {
        k[len(prefix) :]: _as_numpy(v, f"state_dict[{k!r}]")
        for k, v in state.items()
        if k.startswith(prefix)
    }
    if "weight_ih_l0" not in entries:
        raise ValueError(
            f"state_dict has no key {prefix + 'weight_ih_l0'!r}; its keys start "
            f"{sorted(state)[:6]}. Pass the prefix before 'weight_ih_l0' as prefix=."
        )
    return prefix, entries


def _expected_keys(config: TorchConfig) -> list[str]:
    names = ["weight_ih", "weight_hh"]
    if config.bias:
        names += ["bias_ih", "bias_hh"]
    if config.proj_size:
        names.append("weight_hr")
    suffixes = ["", "_reverse"] if config.bidirectional else [""]
    return [
        f"{name}_l{k}{suffix}"
        for k in range(config.num_layers)
        for suffix in suffixes
        for name in names
    ]


def _config_from_state(state: Mapping[str, np.ndarray], prefix: str = "") -> TorchConfig:
    """Infers layers, directions, projection and the cell type from PyTorch's key names, and
    checks that every entry under the prefix is one such a module has, of one float dtype."""
    num_layers = 0
    while f"weight_ih_l{num_layers}" in state:
        num_layers += 1
    w_hh = state.get("weight_hh_l0")
    if w_hh is None or w_hh.ndim != 2:
        raise ValueError(
            f"state_dict: {prefix + 'weight_hh_l0'!r} must be a [blocks * hidden, hidden] "
            f"matrix; got {None if w_hh is None else w_hh.shape}."
        )
    for key in ("bias_ih_l0", "bias_hh_l0"):
        other = "bias_hh_l0" if key == "bias_ih_l0" else "bias_ih_l0"
        if key in state and other not in state:
            raise ValueError(
                f"state_dict has {prefix + key!r} but no {prefix + other!r}: a PyTorch RNN "
                "has both biases (bias=True) or neither (bias=False); refusing to build a "
                "layer without the missing one."
            )
    proj_size = state["weight_hr_l0"].shape[0] if "weight_hr_l0" in state else 0
    hidden = state["weight_hr_l0"].shape[1] if proj_size else w_hh.shape[1]
    blocks = w_hh.shape[0] // hidden
    if blocks not in (3, 4) or blocks * hidden != w_hh.shape[0]:
        raise ValueError(
            f"state_dict: weight_hh_l0 has shape {w_hh.shape}, neither an LSTM's [4H, H] nor a "
            "GRU's [3H, H]."
        )
    dtype = state["weight_ih_l0"].dtype
    config = TorchConfig(
        kind="LSTM" if blocks == 4 else "GRU",
        input_size=state["weight_ih_l0"].shape[1],
        hidden_size=hidden,
        num_layers=num_layers,
        bidirectional="weight_ih_l0_reverse" in state,
        proj_size=proj_size,
        bias="bias_ih_l0" in state,
        dtype=dtype,
    )
    expected = _expected_keys(config)
    stray = sorted(set(state) - set(expected))
    if stray:
        raise ValueError(
            f"state_dict has entries under the prefix {prefix!r} that a {num_layers}-layer "
            f"{'bidirectional ' if config.bidirectional else ''}{config.kind} does not have: "
            f"{[prefix + k for k in stray]}. Pass the RNN's own prefix= (e.g. 'rnn.'), or "
            "remove them."
        )
    missing = [prefix + k for k in expected if k not in state]
    if missing:
        raise ValueError(f"state_dict has no {missing} (a {config.kind} read off its keys needs).")
    for key, value in state.items():
        if value.dtype != dtype or np.dtype(dtype).name not in _DTYPES:
            raise TypeError(
                f"state_dict[{prefix + key!r}] has dtype {value.dtype}; every entry must share "
                f"one floating dtype of {sorted(_DTYPES)} (weight_ih_l0 has {dtype})."
            )
    return config


def from_torch(
    source: Any,
    *,
    prefix: str | None = None,
    batch_first: bool | None = None,
    double_bias: bool = False,
    rngs: nnx.Rngs | None = None,
) -> Any:
    """Builds the gatenets or Flax NNX module equivalent to a PyTorch module or state dict.

    An ``nn.LSTM`` / ``nn.GRU`` or its ``state_dict`` becomes a :class:`~gatenets.LSTM` /
    :class:`~gatenets.GRU`. Every setting that changes the function (``num_layers``,
    ``bidirectional``, ``proj_size``, ``bias``, ``batch_first``, ``dropout``) carries over
    from a module; from a state dict, the layers, directions, projection, bias and cell type are
    read off the key names and shapes, and ``batch_first`` must be given (a state dict does not
    record it). By default the layer's parameter tree is that of ``gatenets.LSTM(...)`` /
    ``gatenets.GRU(...)``: an LSTM's two biases are summed (in float64, rounded once); a GRU
    keeps its recurrent bias, whose :math:`b_{hn}` sits inside the reset product.

    The layers around the RNN convert too: ``nn.Embedding`` → ``nnx.Embed``, ``nn.Linear`` →
    ``nnx.Linear``, ``nn.LayerNorm`` (over the last axis) → ``nnx.LayerNorm``, ``nn.Dropout`` →
    ``nnx.Dropout``, and an ``nn.Sequential`` or a list of modules → ``nnx.Sequential``.
    A module in evaluation mode (``module.eval()``) gives a module in evaluation mode: its
    dropout is off until ``.train()``.

    Parameters keep their dtype: float32, float64, float16 or bfloat16 (bfloat16 exactly).

    Args:
      source: a ``torch.nn.LSTM`` / ``torch.nn.GRU``; a mapping of names to tensors or arrays
        (a ``state_dict``, of the RNN or of a whole model); one of the modules above.
      prefix: the key prefix before ``weight_ih_l0`` in a state dict (``"encoder.rnn."``);
        found when there is exactly one RNN in it. Every other key under it is refused.
      batch_first: the layout of the inputs: ``True`` for ``[batch, time, features]``,
        ``False`` for ``[time, batch, features]`` (PyTorch's default). Required with a state
        dict; a module's own by default.
      double_bias: keep PyTorch's two LSTM biases as ``bias`` and ``recurrent_bias``
        (``use_recurrent_bias=True``) instead of summing them.
      rngs: random streams of the dropout layers (inter-layer dropout, ``nn.Dropout``);
        ``nnx.Rngs(0)`` if None.

    Returns:
      A :class:`~gatenets.LSTM` or :class:`~gatenets.GRU` computing the same outputs and final
      carries, or the Flax NNX module computing what the given module computes.

    Raises:
      ValueError: for a state dict without ``batch_first``, with entries an RNN does not have,
        with one of the two biases missing, or with a wrong shape, naming the key.
      TypeError: for a module that cannot be converted or a dtype that cannot be held.

    Example:
      >>> import torch, jax.numpy as jnp, numpy as np
      >>> from gatenets.interop import from_torch
      >>> torch_lstm = torch.nn.LSTM(3, 4, batch_first=True)
      >>> lstm = from_torch(torch_lstm)
      >>> x = np.ones((2, 5, 3), np.float32)
      >>> expected = torch_lstm(torch.from_numpy(x))[0].detach().numpy()
      >>> bool(np.allclose(lstm(jnp.asarray(x)), expected, atol=1e-5))
      True
      >>> state = {"rnn." + k: v for k, v in torch_lstm.state_dict().items()}
      >>> again = from_torch(state, batch_first=True)
      >>> bool(np.allclose(again(jnp.asarray(x)), expected, atol=1e-5))
      True
    """
    rngs = nnx.Rngs(0) if rngs is None else rngs
    dropout, training = 0.0, True
    if isinstance(source, Mapping):
        if batch_first is None:
            raise ValueError(
                "batch_first: a state dict does not record the layout of its RNN's inputs; "
                "pass batch_first=True ([batch, time, features]) or batch_first=False "
                "([time, batch, features], the default of torch.nn.LSTM / GRU)."
            )
        prefix, state = _strip_prefix(source, prefix)
    else:
        torch = _torch()
        if not isinstance(source, torch.nn.LSTM | torch.nn.GRU):
            return _from_torch_module(source, rngs)
        training = source.training
        state = {name: _as_numpy(p, name) for name, p in source.state_dict().items()}
        prefix = ""
        dropout = float(source.dropout)
        batch_first = source.batch_first if batch_first is None else batch_first
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first must be True or False; got {batch_first!r}.")
    config = _config_from_state(state, prefix)
    dtype = _DTYPES[np.dtype(config.dtype).name]
    layer = _empty_layer(config, dtype, dropout, batch_first, double_bias, rngs)
    for k, stack_layer in enumerate(layer.layers):
        for suffix, cell in _directions(stack_layer):
            _load_cell(cell, state, f"_l{k}{suffix}", config, double_bias, prefix)
    if not training:
        layer.eval()
    return layer


def _empty_layer(config, dtype, dropout, batch_first, double_bias, rngs) -> LSTM | GRU:
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
        time_major=not batch_first,
        use_bias=config.bias,
        param_dtype=dtype,
        rngs=rngs,
        **cell_kwargs,
    )


def _load_cell(cell, state, suffix, config: TorchConfig, double_bias: bool, prefix: str) -> None:
    """Copies one layer-direction's PyTorch tensors into a gatenets cell, checking shapes."""
    values = {
        "kernel": state[f"weight_ih{suffix}"].T,
        "recurrent_kernel": state[f"weight_hh{suffix}"].T,
    }
    if config.bias:
        bias_ih, bias_hh = state[f"bias_ih{suffix}"], state[f"bias_hh{suffix}"]
        if config.kind == "LSTM" and not double_bias:
            summed = bias_ih.astype(np.float64) + bias_hh.astype(np.float64)
            values["bias"] = summed.astype(config.dtype)
        else:
            values["bias"], values["recurrent_bias"] = bias_ih, bias_hh
    if config.proj_size:
        values["proj_kernel"] = state[f"weight_hr{suffix}"].T
    for name, value in values.items():
        current = getattr(cell, name)
        if current.shape != value.shape:
            raise ValueError(
                f"state_dict: {name} of layer{suffix} (under {prefix!r}) has shape "
                f"{value.shape}; the layer read off the keys expects {current.shape}."
            )
        current[...] = jnp.asarray(value, current.dtype)


def _embedding_from_torch(module: Any, rngs: nnx.Rngs) -> nnx.Embed:
    """``nn.Embedding`` as ``nnx.Embed`` (no ``max_norm``; ``padding_idx`` warned)."""
    if module.max_norm is not None or module.scale_grad_by_freq:
        raise ValueError(
            "nn.Embedding with max_norm or scale_grad_by_freq has no nnx.Embed equivalent; "
            f"got max_norm={module.max_norm}, scale_grad_by_freq={module.scale_grad_by_freq}."
        )
    if module.padding_idx is not None:
        warnings.warn(
            f"nn.Embedding(padding_idx={module.padding_idx}): PyTorch never updates that "
            "row; nnx.Embed trains it like the others.",
            UserWarning,
            stacklevel=4,
        )
    weight = _as_numpy(module.weight, "Embedding.weight")
    embed = nnx.Embed(*weight.shape, param_dtype=weight.dtype, rngs=rngs)
    embed.embedding[...] = jnp.asarray(weight)
    return embed


def _linear_from_torch(module: Any, rngs: nnx.Rngs) -> nnx.Linear:
    """``nn.Linear`` as ``nnx.Linear``: the kernel is the weight transposed."""
    weight = _as_numpy(module.weight, "Linear.weight")
    linear = nnx.Linear(
        weight.shape[1],
        weight.shape[0],
        use_bias=module.bias is not None,
        param_dtype=weight.dtype,
        rngs=rngs,
    )
    linear.kernel[...] = jnp.asarray(weight.T)
    if module.bias is not None:
        linear.bias[...] = jnp.asarray(_as_numpy(module.bias, "Linear.bias"))
    return linear


def _layer_norm_from_torch(module: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """``nn.LayerNorm`` over the last axis as ``nnx.LayerNorm``."""
    if len(module.normalized_shape) != 1:
        raise ValueError(
            "nn.LayerNorm: only normalisation over the last axis converts; got "
            f"normalized_shape={tuple(module.normalized_shape)}."
        )
    affine = module.elementwise_affine
    has_bias = affine and module.bias is not None
    norm = nnx.LayerNorm(
        module.normalized_shape[0],
        epsilon=module.eps,
        use_scale=affine,
        use_bias=has_bias,
        use_fast_variance=False,
        param_dtype=_as_numpy(module.weight).dtype if affine else jnp.float32,
        rngs=rngs,
    )
    if affine:
        norm.scale[...] = jnp.asarray(_as_numpy(module.weight, "LayerNorm.weight"))
    if has_bias:
        norm.bias[...] = jnp.asarray(_as_numpy(module.bias, "LayerNorm.bias"))
    return norm


def _from_torch_module(module: Any, rngs: nnx.Rngs) -> Any:
    """``nn.Embedding`` / ``Linear`` / ``LayerNorm`` / ``Dropout`` / ``Sequential`` → NNX."""
    torch = _torch()
    nn = torch.nn
    if isinstance(module, list | tuple):
        return nnx.Sequential(*(from_torch(m, rngs=rngs) for m in module))
    if isinstance(module, nn.Sequential):
        converted = nnx.Sequential(*(from_torch(m, rngs=rngs) for m in module))
        if not module.training:
            converted.eval()
        return converted
    if isinstance(module, nn.Dropout):
        return nnx.Dropout(float(module.p), deterministic=not module.training, rngs=rngs)
    if isinstance(module, nn.Embedding):
        return _embedding_from_torch(module, rngs)
    if isinstance(module, nn.Linear):
        return _linear_from_torch(module, rngs)
    if isinstance(module, nn.LayerNorm):
        return _layer_norm_from_torch(module, rngs)
    raise TypeError(
        "source must be a torch.nn.LSTM, a torch.nn.GRU, a state_dict, or a torch.nn.Embedding, "
        f"Linear, LayerNorm, Dropout or Sequential (or a list of those); got "
        f"{type(module).__name__}."
    )


def to_torch(layer: RecurrentStack, *, state_dict: bool = False, prefix: str = "") -> Any:
    """Builds the ``torch.nn.LSTM`` / ``torch.nn.GRU`` equivalent to a gatenets layer.

    Args:
      layer: a :class:`~gatenets.LSTM` or :class:`~gatenets.GRU`.
      state_dict: return the module's ``state_dict`` (tensors by PyTorch's names) instead of
        the module, e.g. to load into a model of one's own.
      prefix: put before every key of the state dict (``"encoder.rnn."``).

    Returns:
      A PyTorch module with the same weights and dtype (``batch_first = not
      layer.time_major``), or its state dict. A summed LSTM bias goes to ``bias_ih`` and
      ``bias_hh`` is zero.

    Raises:
      ValueError: if the layer uses something PyTorch's modules cannot express (peepholes,
        ``reset_after=False``, learned initial carries, recurrent dropout, a ``gate_fn`` other
        than the sigmoid or an ``activation_fn`` other than tanh), rather than silently
        dropping it.

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
    for k, stack_layer in enumerate(layer.layers):
        for suffix, layer_cell in _directions(stack_layer):
            check_compute_dtype(layer_cell, f"to_torch: torch.nn.{type(layer).__name__}")
            if not layer_cell.standard_functions:
                raise ValueError(
                    f"to_torch: torch.nn.{type(layer).__name__} computes sigmoid gates and tanh "
                    f"activations only; layer {k}{suffix} has gate_fn="
                    f"{getattr(layer_cell.gate_fn, '__name__', layer_cell.gate_fn)}, "
                    "activation_fn="
                    f"{getattr(layer_cell.activation_fn, '__name__', layer_cell.activation_fn)}."
                )
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
    dtype = getattr(torch, jnp.dtype(cell.param_dtype).name)
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
                    params[f"{name}_l{k}{suffix}"].copy_(_to_tensor(value))
    if state_dict:
        return {prefix + name: tensor for name, tensor in module.state_dict().items()}
    return module


def _stack_shape(layer: RecurrentStack) -> tuple[int, list[tuple[str, Any]]]:
    if not isinstance(layer, LSTM | GRU):
        raise TypeError(
            f"layer must be a gatenets.LSTM or gatenets.GRU; got {type(layer).__name__}."
        )
    directions = 2 if layer.bidirectional else 1
    return layer.num_layers * directions, _directions(layer.layers[0])


def carry_from_torch(state: Any, layer: RecurrentStack) -> tuple:
    """A PyTorch RNN's final (or initial) state as the ``initial_carry`` of a gatenets layer.

    PyTorch's ``nn.LSTM`` returns ``output, (h_n, c_n)`` and ``nn.GRU`` returns ``output,
    h_n``, each ``[layers * directions, batch, units]`` (layer 0 forward, layer 0 backward,
    layer 1 forward, …). gatenets takes one carry per layer: ``LSTMCarry(c, h)`` /
    ``GRUCarry(h)``, a :class:`~gatenets.BidirectionalCarry` of two when bidirectional.

    Args:
      state: ``(h_n, c_n)`` for an LSTM (PyTorch's order: ``h`` first), ``h_n`` for a GRU;
        tensors or arrays.
      layer: the gatenets :class:`~gatenets.LSTM` / :class:`~gatenets.GRU` it is for.

    Returns:
      a tuple with one carry per layer, to pass as ``layer(x, initial_carry=…)``.

    Raises:
      TypeError, ValueError: for a state not in PyTorch's stacked layout (a per-layer tuple,
        a gatenets carry, the wrong number of rows), naming what was expected.

    Example:
      >>> import torch, jax.numpy as jnp, numpy as np
      >>> from gatenets.interop import carry_from_torch, from_torch
      >>> torch_lstm = torch.nn.LSTM(3, 4, num_layers=2)
      >>> x = torch.randn(5, 2, 3)
      >>> h0, c0 = torch.randn(2, 2, 4), torch.randn(2, 2, 4)
      >>> expected, _ = torch_lstm(x, (h0, c0))
      >>> lstm = from_torch(torch_lstm)
      >>> y = lstm(jnp.asarray(x.numpy()), initial_carry=carry_from_torch((h0, c0), lstm))
      >>> bool(np.allclose(y, expected.detach().numpy(), atol=1e-5))
      True
    """
    rows, cells = _stack_shape(layer)
    lstm = isinstance(layer, LSTM)
    if isinstance(state, LSTMCarry | GRUCarry | BidirectionalCarry):
        raise TypeError(
            f"state is already a gatenets {type(state).__name__}; carry_from_torch takes "
            "PyTorch's stacked state."
        )
    if lstm:
        if not isinstance(state, tuple | list) or len(state) != 2:
            raise TypeError(
                "state of an LSTM must be PyTorch's (h_n, c_n) pair; got "
                f"{type(state).__name__}" + (f" of length {len(state)}." if _sized(state) else ".")
            )
        names = ("h_n", "c_n")
        arrays = [_as_numpy(s, n) for s, n in zip(state, names, strict=True)]
    else:
        if isinstance(state, tuple | list):
            raise TypeError(
                f"state of a GRU must be PyTorch's h_n tensor; got a {type(state).__name__} "
                f"of length {len(state)}."
            )
        names, arrays = ("h_n",), [_as_numpy(state, "h_n")]
    cell = cells[0][1]
    features = {"h_n": cell.output_features, "c_n": cell.hidden_features}
    for name, array in zip(names, arrays, strict=True):
        if array.ndim != 3 or array.shape[0] != rows or array.shape[2] != features[name]:
            raise ValueError(
                f"{name} must be PyTorch's stacked state [layers * directions = {rows}, batch, "
                f"{features[name]}]; got shape {array.shape}. A per-layer (h, c) pair is not "
                "this layout: stack every layer's h (and c) first, as PyTorch returns them."
            )
    carries = []
    for row in range(rows):
        if lstm:
            carries.append(LSTMCarry(c=jnp.asarray(arrays[1][row]), h=jnp.asarray(arrays[0][row])))
        else:
            carries.append(GRUCarry(h=jnp.asarray(arrays[0][row])))
    if layer.bidirectional:
        return tuple(BidirectionalCarry(*carries[k : k + 2]) for k in range(0, rows, 2))
    return tuple(carries)


def _sized(value: Any) -> bool:
    return isinstance(value, tuple | list)


def carry_to_torch(carry: Sequence[Any]) -> Any:
    """A gatenets stack's per-layer carries as PyTorch's stacked state.

    Args:
      carry: what ``layer(x, return_carry=True)`` returned first: one ``LSTMCarry`` /
        ``GRUCarry`` per layer, or one ``BidirectionalCarry`` per layer.

    Returns:
      ``(h_n, c_n)`` torch tensors for an LSTM, ``h_n`` for a GRU, each
      ``[layers * directions, batch, units]`` as ``nn.LSTM`` / ``nn.GRU`` return and take them.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.interop import carry_to_torch
      >>> lstm = gatenets.LSTM(3, 4, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
      >>> carry, _ = lstm(jnp.ones((2, 5, 3)), return_carry=True)
      >>> h_n, c_n = carry_to_torch(carry)
      >>> tuple(h_n.shape), tuple(c_n.shape)
      ((4, 2, 4), (4, 2, 4))
    """
    torch = _torch()
    if not isinstance(carry, tuple | list) or not carry:
        raise TypeError(
            "carry must be a gatenets stack's tuple of per-layer carries; got "
            f"{type(carry).__name__}."
        )
    rows: list[Any] = []
    for k, layer_carry in enumerate(carry):
        parts = list(layer_carry) if isinstance(layer_carry, BidirectionalCarry) else [layer_carry]
        for part in parts:
            if not isinstance(part, LSTMCarry | GRUCarry):
                raise TypeError(
                    f"carry[{k}] must be an LSTMCarry, a GRUCarry or a BidirectionalCarry of "
                    f"those; got {type(part).__name__}. A bare tuple could be (c, h) or (h, c): "
                    "build the NamedTuple by name."
                )
            rows.append(part)
    kinds = {type(part) for part in rows}
    if len(kinds) != 1:
        raise TypeError(f"carry mixes carry types {sorted(k.__name__ for k in kinds)}.")
    h_n = torch.stack([_to_tensor(part.h) for part in rows])
    if kinds == {GRUCarry}:
        return h_n
    return h_n, torch.stack([_to_tensor(part.c) for part in rows])
