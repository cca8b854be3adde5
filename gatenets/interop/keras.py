"""Weights to and from Keras 3: ``keras.layers.LSTM``, ``GRU`` and ``Bidirectional``, their
states, and the layers a sequence model is made of around them.

==================================  ======================================================
Keras                               gatenets
==================================  ======================================================
``LSTM`` ``kernel``,                ``LSTMCell`` ``kernel``, ``recurrent_kernel``, ``bias``:
``recurrent_kernel``, ``bias``      the same arrays (gate order ``i, f, c, o`` = ``i, f, g, o``)
``GRU`` ``kernel``,                 ``GRUCell``: the ``z`` and ``r`` blocks swap places
``recurrent_kernel``                (Keras orders ``z, r, h``; gatenets ``r, z, n``)
``GRU(reset_after=True)`` ``bias``  ``bias`` (row 0) and ``recurrent_bias`` (row 1), blocks
``[2, 3H]``                         swapped as above
``GRU(reset_after=False)``          ``GRUCell(reset_after=False)`` (Cho et al.): ``bias``
``Bidirectional``                   a bidirectional :class:`~gatenets.LSTM` / ``GRU``
                                    (:class:`~gatenets.Bidirectional` if the two differ)
``activation``,                     ``activation_fn``, ``gate_fn`` (``tanh``, ``sigmoid``,
``recurrent_activation``            ``hard_sigmoid``, ``relu``)
``dropout`` (on the inputs)         ``nnx.Dropout(rate, broadcast_dims=(1,))`` before the layer:
                                    one mask per sequence, as Keras draws it
``recurrent_dropout``               ``recurrent_dropout`` (one mask on ``h`` per sequence)
``return_sequences=False``          :class:`KerasRecurrentOutput` after the layer
``Embedding``, ``Dense``,           ``nnx.Embed``, ``nnx.Linear`` (+ its activation),
``LayerNormalization``,             ``nnx.LayerNorm``, ``nnx.Dropout``
``Dropout``
==================================  ======================================================

Dropout differs in training only, and only in which masks are tied: gatenets draws one input
mask and one recurrent mask per sequence, shared by every gate (and by both directions of a
bidirectional layer's input); Keras, once ``recurrent_dropout`` is set, draws one per gate
(and one per direction). The rates, the scaling and inference are the same.

States: Keras's LSTM state is ``[h, c]`` (``h`` first), a GRU's ``[h]``, a Bidirectional's
the forward states then the backward ones; gatenets' carry is ``LSTMCarry(c, h)`` /
``GRUCarry(h)``, one per layer. :func:`carry_from_keras` / :func:`carry_to_keras` convert.

Keras is imported only when these functions run. When nothing has chosen Keras's backend yet
(``KERAS_BACKEND`` unset), ``"jax"`` is chosen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatenets.cells.gru import GRUCarry, GRUCell
from gatenets.cells.lstm import LSTMCarry, LSTMCell
from gatenets.interop.torch import check_compute_dtype
from gatenets.recurrent import RNN, Bidirectional, BidirectionalCarry
from gatenets.registry import GRU, LSTM

_RECURRENT_FUNCTIONS = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "relu": jax.nn.relu,
}


def _linear(x):
    return x


def _gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


def _softmax(x):
    return jax.nn.softmax(x, axis=-1)


def _log_softmax(x):
    return jax.nn.log_softmax(x, axis=-1)


_DENSE_FUNCTIONS = {
    "linear": None,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "gelu": _gelu_exact,
    "silu": jax.nn.silu,
    "hard_sigmoid": jax.nn.hard_sigmoid,
}


def _keras_code():
    """Keras's own code broadcasts ranks implicitly (its initialisers, for one): let it, even
    where a program makes JAX refuse that (``jax_numpy_rank_promotion="raise"``)."""
    return jax.numpy_rank_promotion("allow")


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError as err:  # pragma: no cover - exercised only without keras
        raise ImportError("gatenets.interop.keras needs Keras 3: pip install keras") from err
    return keras


def _numpy(variable: Any) -> np.ndarray:
    return np.asarray(_keras().ops.convert_to_numpy(getattr(variable, "value", variable)))


def _function(fn: Any, table: dict[str, Any], what: str) -> Any:
    """The JAX function for a Keras activation, by identity with Keras's own of that name."""
    keras = _keras()
    for name, ours in table.items():
        if fn is keras.activations.get(name):
            return ours
    raise ValueError(
        f"{what}={getattr(fn, '__name__', fn)!r} has no gatenets equivalent here; Keras "
        f"activations that convert: {sorted(table)}."
    )


def _swap_zr(array: np.ndarray) -> np.ndarray:
    """Keras's GRU blocks ``z, r, h`` ↔ gatenets' ``r, z, n`` (its own inverse)."""
    first, second, third = np.split(array, 3, axis=-1)
    return np.concatenate([second, first, third], axis=-1)


class KerasRecurrentOutput(nnx.Module):
    """What a Keras recurrent layer returns, from a gatenets layer's sequence output.

    Keras's ``return_sequences=False`` returns the last step (a ``Bidirectional``'s backward
    half is its final output: the step at time 0), and a ``Bidirectional`` joins its two halves
    by ``merge_mode``. gatenets layers always return the sequence, concatenated.

    Args:
      return_sequences: keep every step (True) or the last one (False).
      forward_features: size of the forward half of a bidirectional output; None if
        unidirectional.
      merge_mode: ``"concat"``, ``"sum"``, ``"ave"`` or ``"mul"`` (bidirectional only).
    """

    def __init__(
        self,
        *,
        return_sequences: bool,
        forward_features: int | None = None,
        merge_mode: str = "concat",
    ):
        self.return_sequences = return_sequences
        self.forward_features = forward_features
        self.merge_mode = merge_mode

    def __call__(self, y):
        """Takes ``[batch, time, units]``; returns ``[batch, (time,) units']``."""
        if self.forward_features is None:
            return y if self.return_sequences else y[:, -1]
        forward, backward = y[..., : self.forward_features], y[..., self.forward_features :]
        if not self.return_sequences:
            forward, backward = forward[:, -1], backward[:, 0]
        if self.merge_mode == "concat":
            return jnp.concatenate([forward, backward], axis=-1)
        if self.merge_mode == "sum":
            return forward + backward
        if self.merge_mode == "ave":
            return (forward + backward) / 2
        return forward * backward


def _cell_settings(layer: Any, where: str) -> dict[str, Any]:
    """The gatenets cell arguments of a Keras ``LSTM`` / ``GRU`` layer."""
    keras = _keras()
    cell = layer.cell
    if not cell.built:
        raise ValueError(f"{where}: the Keras layer is not built (call it once or build it).")
    if layer.stateful:
        raise ValueError(
            f"{where}: stateful=True keeps the state between calls inside the Keras layer; "
            "gatenets layers take it explicitly. Convert the layer built with stateful=False "
            "and thread the state with initial_carry= / return_carry=True (carry_from_keras "
            "converts Keras's states)."
        )
    settings: dict[str, Any] = {
        "kind": "LSTM" if isinstance(layer, keras.layers.LSTM) else "GRU",
        "in_features": int(cell.kernel.shape[0]),
        "hidden": int(cell.units),
        "use_bias": bool(cell.use_bias),
        "gate_fn": _function(
            cell.recurrent_activation, _RECURRENT_FUNCTIONS, where + ".recurrent_activation"
        ),
        "activation_fn": _function(cell.activation, _RECURRENT_FUNCTIONS, where + ".activation"),
        "recurrent_dropout": float(cell.recurrent_dropout),
        "dropout": float(cell.dropout),
        "dtype": _numpy(cell.kernel).dtype,
    }
    if settings["kind"] == "GRU":
        settings["reset_after"] = bool(cell.reset_after)
    return settings


def _cell_arrays(layer: Any, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    cell = layer.cell
    kernel, recurrent = _numpy(cell.kernel), _numpy(cell.recurrent_kernel)
    bias = _numpy(cell.bias) if settings["use_bias"] else None
    if settings["kind"] == "LSTM":
        arrays = {"kernel": kernel, "recurrent_kernel": recurrent}
        if bias is not None:
            arrays["bias"] = bias
        return arrays
    arrays = {"kernel": _swap_zr(kernel), "recurrent_kernel": _swap_zr(recurrent)}
    if bias is not None:
        if settings["reset_after"]:
            arrays["bias"], arrays["recurrent_bias"] = _swap_zr(bias[0]), _swap_zr(bias[1])
        else:
            arrays["bias"] = _swap_zr(bias)
    return arrays


def _load(cell: Any, arrays: dict[str, np.ndarray], where: str) -> None:
    for name, value in arrays.items():
        current = getattr(cell, name)
        if current.shape != value.shape:
            raise ValueError(
                f"{where}: {name} has shape {value.shape}; the gatenets cell expects "
                f"{current.shape}."
            )
        current[...] = jnp.asarray(value, current.dtype)


def _cell_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    kwargs = {
        "use_bias": settings["use_bias"],
        "gate_fn": settings["gate_fn"],
        "activation_fn": settings["activation_fn"],
        "param_dtype": jnp.dtype(settings["dtype"]),
    }
    if settings["kind"] == "GRU":
        kwargs["reset_after"] = settings["reset_after"]
    return kwargs


def _same_cell(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = set(a) - {"dropout"}
    return all(a[k] is b[k] if callable(a[k]) else a[k] == b[k] for k in keys)


def _recurrent_parts(layer: Any, bidirectional: bool, where: str) -> list[Any]:
    """The Keras ``LSTM`` / ``GRU`` layers of ``layer``, one per direction, checked."""
    if bidirectional:
        if layer.merge_mode not in ("concat", "sum", "ave", "mul"):
            raise ValueError(
                f"{where}: merge_mode={layer.merge_mode!r} (two outputs) is not converted; "
                "use 'concat', 'sum', 'ave' or 'mul'."
            )
        parts = [layer.forward_layer, layer.backward_layer]
        if parts[0].go_backwards or not parts[1].go_backwards:
            raise ValueError(
                f"{where}: the forward layer must run forwards, the backward one back."
            )
    else:
        if layer.go_backwards:
            raise ValueError(
                f"{where}: go_backwards=True outside Bidirectional returns the outputs in "
                "reversed time; gatenets keeps the input's order. Use gatenets.RNN(cell, "
                "reverse=True) and flip its output (y[:, ::-1])."
            )
        parts = [layer]
    return parts


def _recurrent_core(settings: list[dict], bidirectional: bool, rngs: nnx.Rngs):
    """``(layer, its passes)``: one gatenets stack when the directions' cells agree, else a
    ``Bidirectional`` of two ``RNN`` passes."""
    first = settings[0]
    stack_type = LSTM if first["kind"] == "LSTM" else GRU
    if all(_same_cell(first, s) for s in settings):
        core = stack_type(
            first["in_features"],
            first["hidden"],
            bidirectional=bidirectional,
            recurrent_dropout=first["recurrent_dropout"],
            rngs=rngs,
            **_cell_kwargs(first),
        )
        first_layer = core.layers[0]
        rnns = (
            [first_layer.forward_rnn, first_layer.backward_rnn] if bidirectional else [first_layer]
        )
    else:
        cell_types = {"LSTM": LSTMCell, "GRU": GRUCell}
        rnns = [
            RNN(
                cell_types[s["kind"]](s["in_features"], s["hidden"], rngs=rngs, **_cell_kwargs(s)),
                reverse=k == 1,
                recurrent_dropout=s["recurrent_dropout"],
                rngs=rngs,
            )
            for k, s in enumerate(settings)
        ]
        core = Bidirectional(*rnns)
    return core, rnns


def _recurrent(layer: Any, rngs: nnx.Rngs, where: str) -> list[Any]:
    """The pieces computing a Keras ``LSTM`` / ``GRU`` / ``Bidirectional`` layer."""
    keras = _keras()
    if getattr(layer, "return_state", False):
        raise ValueError(
            f"{where}: return_state=True is not converted (outputs and states in one list); "
            "build the Keras layer with return_state=False, run the gatenets layer with "
            "return_carry=True and convert its carry with carry_to_keras."
        )
    bidirectional = isinstance(layer, keras.layers.Bidirectional)
    parts = _recurrent_parts(layer, bidirectional, where)
    settings = [_cell_settings(p, f"{where}.{p.name}") for p in parts]
    first = settings[0]
    pieces: list[Any] = []
    if first["dropout"] > 0:
        if any(s["dropout"] != first["dropout"] for s in settings):
            raise ValueError(f"{where}: the two directions have different input dropout rates.")
        # Keras draws one input mask per sequence and call, the same for every step.
        pieces.append(nnx.Dropout(first["dropout"], broadcast_dims=(1,), rngs=rngs))
    core, rnns = _recurrent_core(settings, bidirectional, rngs)
    for rnn, part, s in zip(rnns, parts, settings, strict=True):
        _load(rnn.cell, _cell_arrays(part, s), f"{where}.{part.name}")
    pieces.append(core)
    merge = layer.merge_mode if bidirectional else "concat"
    if not layer.return_sequences or merge != "concat":
        pieces.append(
            KerasRecurrentOutput(
                return_sequences=bool(layer.return_sequences),
                forward_features=first["hidden"] if bidirectional else None,
                merge_mode=merge,
            )
        )
    return pieces


def _embedding(layer: Any, rngs: nnx.Rngs, where: str) -> nnx.Embed:
    """A Keras ``Embedding`` as ``nnx.Embed``."""
    if layer.mask_zero:
        raise ValueError(
            f"{where}: mask_zero=True is not converted (Keras passes the mask on to the "
            "recurrent layers); build it with mask_zero=False and pass seq_lengths= or "
            "mask= to the gatenets layer."
        )
    table = _numpy(layer.embeddings)
    embed = nnx.Embed(*table.shape, param_dtype=table.dtype, rngs=rngs)
    embed.embedding[...] = jnp.asarray(table)
    return embed


def _dense(layer: Any, rngs: nnx.Rngs, where: str) -> list[Any]:
    """A Keras ``Dense`` as ``nnx.Linear`` (and its activation, if any)."""
    kernel = _numpy(layer.kernel)
    linear = nnx.Linear(*kernel.shape, use_bias=layer.use_bias, param_dtype=kernel.dtype, rngs=rngs)
    linear.kernel[...] = jnp.asarray(kernel)
    if layer.use_bias:
        linear.bias[...] = jnp.asarray(_numpy(layer.bias))
    activation = _function(layer.activation, _DENSE_FUNCTIONS, where + ".activation")
    return [linear] if activation is None else [linear, activation]


def _layer_norm(layer: Any, rngs: nnx.Rngs, where: str) -> nnx.LayerNorm:
    """A Keras ``LayerNormalization`` over the last axis as ``nnx.LayerNorm``."""
    rank = len(layer.input.shape)
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    if [a % rank for a in axes] != [rank - 1]:
        raise ValueError(
            f"{where}: only normalisation over the last axis converts; got axis={layer.axis}."
        )
    if getattr(layer, "rms_scaling", False):
        raise ValueError(f"{where}: rms_scaling=True is not converted.")
    features = int(layer.input.shape[-1])
    dtype = np.dtype(layer.variable_dtype)
    norm = nnx.LayerNorm(
        features,
        epsilon=float(layer.epsilon),
        use_scale=bool(layer.scale),
        use_bias=bool(layer.center),
        use_fast_variance=False,
        param_dtype=dtype,
        rngs=rngs,
    )
    if layer.scale:
        norm.scale[...] = jnp.asarray(_numpy(layer.gamma))
    if layer.center:
        norm.bias[...] = jnp.asarray(_numpy(layer.beta))
    return norm


def _layer_pieces(layer: Any, rngs: nnx.Rngs) -> list[Any]:
    """The NNX pieces computing one Keras layer (a nested model: all of its layers)."""
    keras = _keras()
    where = f"{type(layer).__name__} {layer.name!r}"
    layers = keras.layers
    if layer.compute_dtype != layer.variable_dtype:
        raise ValueError(
            f"{where}: a mixed-precision policy ({layer.dtype_policy.name}: variables in "
            f"{layer.variable_dtype}, computation in {layer.compute_dtype}) is not converted; "
            "convert the model with a float32 policy, then set the gatenets layers' dtype=."
        )
    if isinstance(layer, keras.Model):
        return [piece for inner in _model_layers(layer) for piece in _layer_pieces(inner, rngs)]
    if isinstance(layer, layers.LSTM | layers.GRU | layers.Bidirectional):
        if isinstance(layer, layers.Bidirectional) and not isinstance(
            layer.forward_layer, layers.LSTM | layers.GRU
        ):
            raise TypeError(f"{where}: only a Bidirectional LSTM or GRU converts.")
        return _recurrent(layer, rngs, where)
    if isinstance(layer, layers.Embedding):
        return [_embedding(layer, rngs, where)]
    if isinstance(layer, layers.Dense):
        return _dense(layer, rngs, where)
    if isinstance(layer, layers.LayerNormalization):
        return [_layer_norm(layer, rngs, where)]
    if isinstance(layer, layers.Dropout):
        if layer.noise_shape is not None:
            raise ValueError(f"{where}: noise_shape is not converted; got {layer.noise_shape}.")
        return [nnx.Dropout(float(layer.rate), rngs=rngs)]
    if isinstance(layer, layers.InputLayer):
        return []
    raise TypeError(
        f"{where} does not convert; what does: LSTM, GRU, Bidirectional (of those), Embedding, "
        "Dense, LayerNormalization, Dropout, and Sequential or Functional models of them in one "
        "chain."
    )


def _model_layers(model: Any) -> list[Any]:
    """A model's layers in call order, checking that each feeds the next (a chain)."""
    keras = _keras()
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential):
        return layers
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"model {model.name!r}: only a chain of layers (one input, one output) converts; "
            f"it has {len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    previous = model.inputs[0]
    for layer in layers:
        try:
            chained = layer.input is previous
        except (AttributeError, ValueError):
            chained = False
        if not chained:
            raise ValueError(
                f"model {model.name!r}: layer {layer.name!r} does not take the previous layer's "
                "output; only a chain of layers converts."
            )
        previous = layer.output
    if previous is not model.outputs[0]:
        raise ValueError(f"model {model.name!r}: its output is not its last layer's.")
    return layers


def from_keras(source: Any, *, model: Any = None, rngs: nnx.Rngs | None = None) -> Any:
    """The NNX module computing what a Keras 3 layer, model or saved model computes.

    A ``keras.layers.LSTM`` / ``GRU`` (``reset_after`` either way) / ``Bidirectional`` becomes
    a :class:`~gatenets.LSTM` / :class:`~gatenets.GRU` (bidirectional for ``Bidirectional``)
    with the same weights, gate and activation functions and recurrent dropout. When Keras
    returns something other than the full concatenated sequence (``return_sequences=False``,
    a ``merge_mode`` other than ``"concat"``) or drops inputs (``dropout``), the result is an
    ``nnx.Sequential`` of the pieces: ``[nnx.Dropout,] layer[, KerasRecurrentOutput]`` — the
    gatenets layer among them, for gates and carries. A Sequential or Functional model (a chain
    of layers) becomes an ``nnx.Sequential`` of every layer's pieces; ``Embedding``, ``Dense``,
    ``LayerNormalization`` and ``Dropout`` convert to their NNX twins. Inputs are batch-major.
    As a Keras layer called outside ``fit``, the result runs in inference mode (dropout off)
    until ``.train()``; in training, its dropout masks are tied across gates where Keras's
    are not (see the module's notes).

    Args:
      source: a Keras layer or model; the path of a ``.keras`` file (loaded with Keras's safe
        mode: no code in the file runs); or the path of a ``.weights.h5`` file, with ``model=``.
      model: for a ``.weights.h5`` file, which holds weights only: a model of the architecture
        that saved them. It is cloned, never changed.
      rngs: random streams of the dropout layers; ``nnx.Rngs(0)`` if None.

    Returns:
      a gatenets layer, or an ``nnx.Sequential`` computing the same outputs.

    Raises:
      TypeError, ValueError: for a layer or setting that does not convert, naming it.

    Example:
      >>> import os; os.environ.setdefault("KERAS_BACKEND", "jax")
      'jax'
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.interop import from_keras, to_keras
      >>> keras_gru = to_keras(gatenets.GRU(3, 4, rngs=nnx.Rngs(0)))  # a Keras GRU, say
      >>> gru = from_keras(keras_gru)
      >>> type(gru).__name__, type(keras_gru).__name__, gru.cell.reset_after
      ('GRU', 'GRU', True)
    """
    keras = _keras()
    rngs = nnx.Rngs(0) if rngs is None else rngs
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if path.endswith(".keras"):
            with _keras_code():
                loaded = keras.saving.load_model(path, compile=False)
            return from_keras(loaded, rngs=rngs)
        if path.endswith(".weights.h5"):
            if model is None:
                raise ValueError(
                    f"{path!r} holds weights only, not which layers they belong to; pass the "
                    "model that saved them as model= (or save the whole model as .keras)."
                )
            with _keras_code():
                clone = keras.models.clone_model(model)
                clone.load_weights(path)
            return from_keras(clone, rngs=rngs)
        raise ValueError(
            f"source path must end in '.keras' (a saved model) or '.weights.h5' (with model=); "
            f"got {path!r}."
        )
    if not isinstance(source, keras.layers.Layer):
        raise TypeError(
            "source must be a Keras layer or model, or the path of a .keras or .weights.h5 "
            f"file; got {type(source).__name__}."
        )
    pieces = _layer_pieces(source, rngs)
    converted = pieces[0] if len(pieces) == 1 else nnx.Sequential(*pieces)
    # Keras layers and models run in inference mode unless fit() (or training=True) says
    # otherwise; the converted module does the same until .train().
    converted.eval()
    return converted


_KERAS_NAMES = {id(fn): name for name, fn in _RECURRENT_FUNCTIONS.items()}


def _keras_name(fn: Any, what: str) -> str:
    name = _KERAS_NAMES.get(id(fn))
    if name is None:
        raise ValueError(
            f"to_keras: {what}={getattr(fn, '__name__', fn)} has no Keras equivalent here; "
            f"these convert: {sorted(_RECURRENT_FUNCTIONS)} (jax.nn / jnp functions)."
        )
    return name


def _keras_layer(cell: LSTMCell | GRUCell, recurrent_dropout: float, go_backwards: bool) -> Any:
    keras = _keras()
    check_compute_dtype(cell, "to_keras: a Keras layer (float32 or bfloat16 policy)")
    kwargs = dict(
        units=cell.hidden_features,
        activation=_keras_name(cell.activation_fn, "activation_fn"),
        recurrent_activation=_keras_name(cell.gate_fn, "gate_fn"),
        use_bias=cell.use_bias,
        recurrent_dropout=recurrent_dropout,
        return_sequences=True,
        go_backwards=go_backwards,
        dtype=jnp.dtype(cell.param_dtype).name,
    )
    if isinstance(cell, LSTMCell):
        if cell.peephole or cell.proj_size is not None:
            raise ValueError(
                "to_keras: keras.layers.LSTM has no peepholes or projection; got "
                f"peephole={cell.peephole}, proj_size={cell.proj_size}."
            )
        return keras.layers.LSTM(**kwargs)
    return keras.layers.GRU(reset_after=cell.reset_after, **kwargs)


def _set_weights(keras_layer: Any, cell: LSTMCell | GRUCell) -> None:
    kernel = np.asarray(cell.kernel[...])
    recurrent = np.asarray(cell.recurrent_kernel[...])
    values = []
    if isinstance(cell, LSTMCell):
        values = [kernel, recurrent]
        if cell.use_bias:
            values.append(np.asarray(cell._input_bias(cell.param_dtype)))
    else:
        values = [_swap_zr(kernel), _swap_zr(recurrent)]
        if cell.use_bias:
            bias = _swap_zr(np.asarray(cell.bias[...]))
            if cell.reset_after:
                bias = np.stack([bias, _swap_zr(np.asarray(cell.recurrent_bias[...]))])
            values.append(bias)
    keras_layer.cell.set_weights(values)


def to_keras(layer: LSTM | GRU) -> Any:
    """The Keras 3 layer (or ``keras.Sequential`` for a stack) equivalent to a gatenets layer.

    Args:
      layer: a batch-major :class:`~gatenets.LSTM` or :class:`~gatenets.GRU` (either
        ``reset_after``), uni- or bidirectional, with gate and activation functions Keras
        names (``sigmoid``, ``tanh``, ``hard_sigmoid``, ``relu``).

    Returns:
      for one layer, a built ``keras.layers.LSTM`` / ``GRU`` (``Bidirectional`` of two when
      bidirectional) with ``return_sequences=True``; for several, a ``keras.Sequential`` of
      them with a ``Dropout`` between layers when the stack has ``dropout``.

    Raises:
      ValueError: for what Keras's layers cannot express (time-major inputs, peepholes,
        projections, learned initial carries, other functions), naming it.

    Example:
      >>> import os; os.environ.setdefault("KERAS_BACKEND", "jax")
      'jax'
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.interop import to_keras
      >>> keras_lstm = to_keras(gatenets.LSTM(3, 4, bidirectional=True, rngs=nnx.Rngs(0)))
      >>> type(keras_lstm).__name__, keras_lstm.forward_layer.units
      ('Bidirectional', 4)
    """
    keras = _keras()
    if not isinstance(layer, LSTM | GRU):
        raise TypeError(
            f"layer must be a gatenets.LSTM or gatenets.GRU; got {type(layer).__name__}."
        )
    if layer.time_major:
        raise ValueError(
            "to_keras: Keras 3 recurrent layers are batch-major; this layer has "
            "time_major=True. Build it with time_major=False (the weights are the same)."
        )
    keras_layers = []
    features = layer.cell.in_features
    for k, stack_layer in enumerate(layer.layers):
        rnns = (
            [stack_layer.forward_rnn, stack_layer.backward_rnn]
            if layer.bidirectional
            else [stack_layer]
        )
        if rnns[0].learn_initial_carry:
            raise ValueError("to_keras: Keras layers have no learned initial carry.")
        made = [
            _keras_layer(rnn.cell, rnn.recurrent_dropout.rate, go_backwards=rnn.reverse)
            for rnn in rnns
        ]
        if layer.bidirectional:
            keras_layer = keras.layers.Bidirectional(made[0], backward_layer=made[1])
        else:
            keras_layer = made[0]
        with _keras_code():
            keras_layer.build((None, None, features))
        for rnn, part in zip(
            rnns,
            made
            if not layer.bidirectional
            else [keras_layer.forward_layer, keras_layer.backward_layer],
            strict=True,
        ):
            _set_weights(part, rnn.cell)
        if k:
            if layer.dropout.rate > 0:
                keras_layers.append(keras.layers.Dropout(layer.dropout.rate))
        keras_layers.append(keras_layer)
        features = layer.cell.hidden_features * (2 if layer.bidirectional else 1)
    if len(keras_layers) == 1:
        return keras_layers[0]
    with _keras_code():
        return keras.Sequential([keras.Input((None, layer.cell.in_features)), *keras_layers])


def _keras_states(carry: Any) -> list[Any]:
    parts = list(carry) if isinstance(carry, BidirectionalCarry) else [carry]
    states = []
    for part in parts:
        if isinstance(part, LSTMCarry):
            states += [np.asarray(part.h), np.asarray(part.c)]
        elif isinstance(part, GRUCarry):
            states.append(np.asarray(part.h))
        else:
            raise TypeError(
                "each carry must be an LSTMCarry, a GRUCarry or a BidirectionalCarry of those; "
                f"got {type(part).__name__}. A bare tuple could be (c, h) or (h, c): build the "
                "NamedTuple by name."
            )
    return states


def carry_to_keras(carry: Sequence[Any]) -> list[Any]:
    """A gatenets stack's per-layer carries as Keras's ``initial_state`` lists.

    Args:
      carry: what ``layer(x, return_carry=True)`` returned first (one carry per layer).

    Returns:
      Keras's state list for a one-layer stack — ``[h, c]`` for an LSTM, ``[h]`` for a GRU,
      ``[h_fw, c_fw, h_bw, c_bw]`` when bidirectional — or a list of those, one per layer.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.interop import carry_to_keras
      >>> lstm = gatenets.LSTM(3, 4, rngs=nnx.Rngs(0))
      >>> carry, _ = lstm(jnp.ones((2, 5, 3)), return_carry=True)
      >>> h, c = carry_to_keras(carry)
      >>> bool((h == carry[0].h).all()), bool((c == carry[0].c).all())
      (True, True)
    """
    if not isinstance(carry, tuple | list) or not carry:
        raise TypeError(
            "carry must be a gatenets stack's tuple of per-layer carries; got "
            f"{type(carry).__name__}."
        )
    states = [_keras_states(layer_carry) for layer_carry in carry]
    return states[0] if len(states) == 1 else states


def carry_from_keras(states: Sequence[Any], layer: LSTM | GRU) -> tuple:
    """Keras states as the ``initial_carry`` of a gatenets layer.

    Args:
      states: Keras's state list (``[h, c]`` for an LSTM — ``h`` first —, ``[h]`` or ``h``
        for a GRU, forward then backward states when bidirectional) for a one-layer
        ``layer``; a list of those, one per layer, for a stack.
      layer: the gatenets :class:`~gatenets.LSTM` / :class:`~gatenets.GRU` it is for.

    Returns:
      a tuple with one carry per layer.

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.interop import carry_from_keras
      >>> lstm = gatenets.LSTM(3, 4, rngs=nnx.Rngs(0))
      >>> h, c = np.zeros((2, 4), np.float32), np.ones((2, 4), np.float32)
      >>> (carry,) = carry_from_keras([h, c], lstm)
      >>> float(carry.c.sum()), float(carry.h.sum())
      (8.0, 0.0)
    """
    if not isinstance(layer, LSTM | GRU):
        raise TypeError(
            f"layer must be a gatenets.LSTM or gatenets.GRU; got {type(layer).__name__}."
        )
    lstm = isinstance(layer, LSTM)
    per_direction = 2 if lstm else 1
    directions = 2 if layer.bidirectional else 1
    if hasattr(states, "shape"):
        states = [states]
    if not isinstance(states, tuple | list):
        raise TypeError(f"states must be a list of arrays; got {type(states).__name__}.")
    per_layer = [states] if layer.num_layers == 1 else list(states)
    if len(per_layer) != layer.num_layers:
        raise ValueError(
            f"states must hold {layer.num_layers} per-layer state lists; got {len(per_layer)}."
        )
    carries = []
    for k, layer_states in enumerate(per_layer):
        layer_states = [layer_states] if hasattr(layer_states, "shape") else list(layer_states)
        expected = per_direction * directions
        if len(layer_states) != expected or not all(hasattr(s, "shape") for s in layer_states):
            order = ("[h, c]" if lstm else "[h]") * 1
            raise ValueError(
                f"states of layer {k} must be Keras's list of {expected} arrays ({order} per "
                f"direction, forward first); got {len(layer_states)} entries."
            )
        made = []
        for d in range(directions):
            group = [
                jnp.asarray(s) for s in layer_states[d * per_direction : (d + 1) * per_direction]
            ]
            made.append(LSTMCarry(c=group[1], h=group[0]) if lstm else GRUCarry(h=group[0]))
        carries.append(BidirectionalCarry(*made) if layer.bidirectional else made[0])
    return tuple(carries)
