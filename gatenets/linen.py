"""gatenets layers inside ``flax.linen`` models, through Flax's NNX→linen bridge.

Each class here is a ``flax.linen.Module`` that builds the gatenets NNX layer of the same name
(one for every family in :data:`gatenets.registry.FAMILIES`: ``LSTM``, ``GRU``, ``MinGRU``, …)
with ``flax.nnx.bridge.ToLinen`` and keeps its parameters in the linen ``params`` collection
(under ``"layer"``, laid out exactly as ``nnx.state(layer, nnx.Param)``), so a linen model
trains them with any optax optimiser. ``in_features`` is read from the input on first call, as
linen layers do; the call takes every argument of the NNX layer's call (``seq_lengths``,
``mask``, ``return_gates``, ``gate_overrides``, …) plus linen's ``deterministic``.

:func:`params_from_nnx` and :func:`params_to_nnx` move weights between an NNX layer and the
linen ``params`` of its bridged twin.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import linen as nn
  >>> import gatenets.linen as gl
  >>> class Model(nn.Module):
  ...     @nn.compact
  ...     def __call__(self, x):
  ...         y, trace = gl.MinGRU(8, num_layers=2)(x, return_gates=True)
  ...         return nn.Dense(1)(y[:, -1]), trace
  >>> x = jnp.ones((2, 5, 3))
  >>> variables = Model().init(jax.random.key(0), x)
  >>> out, trace = Model().apply(variables, x)
  >>> out.shape, trace.gates["layer1/forward"].update.shape
  ((2, 1), (2, 5, 8))
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from flax.core import FrozenDict
from flax.nnx import bridge

from gatenets._typing import Array
from gatenets.attention import gated as attention_gated
from gatenets.cells.base import GatedCell
from gatenets.registry import FAMILIES, CellFamily

__all__ = ["GatedAttention", "params_from_nnx", "params_to_nnx"]  # and the wrappers, below

BRIDGE_NAME = "layer"


def _with_dropout_stream(layer_type: type) -> Any:
    """Builds ``layer_type`` with a ``dropout`` stream even when linen gave only ``params``:
    gatenets layers always create their dropout modules, which need one to exist."""

    def make(*args, rngs: nnx.Rngs, **kwargs):
        dropout = rngs.dropout() if "dropout" in rngs else rngs.params()
        return layer_type(*args, rngs=nnx.Rngs(params=rngs.params(), dropout=dropout), **kwargs)

    make.__name__ = make.__qualname__ = layer_type.__name__
    return make


def _run(module: nnx.Module, inputs: Array, *, deterministic: bool, **call_kwargs):
    if deterministic:
        module.eval()
    else:
        module.train()
    return module(inputs, **call_kwargs)


class _NNXModule(nn.Module):
    """Builds a gatenets NNX layer through ``bridge.ToLinen`` and calls it.

    Subclasses set ``layer_type`` and say how the layer is built from the input's feature size
    (``_layer_args``) and whether it has dropout (``_has_dropout``).
    """

    layer_type: ClassVar[type]

    def _layer_args(self, in_features: int) -> tuple[tuple, Mapping[str, Any]]:
        raise NotImplementedError

    def _has_dropout(self) -> bool:
        return False

    def _bridge(self, inputs: Array, deterministic: bool, call_kwargs: Mapping[str, Any]):
        if not hasattr(inputs, "shape") or len(inputs.shape) < 1:
            raise ValueError(
                f"inputs must be an array [batch, time, features]; got {type(inputs).__name__}."
            )
        if not deterministic and self._has_dropout() and not self.has_rng("dropout"):
            raise ValueError(
                f"{type(self).__name__} with dropout and deterministic=False needs a 'dropout' "
                "rng: apply(..., rngs={'dropout': key})."
            )
        args, kwargs = self._layer_args(inputs.shape[-1])
        stored = self.variables.get("params", {}).get(BRIDGE_NAME)
        if stored is not None:
            self._check_stored(stored, args, kwargs)
        layer = bridge.ToLinen(
            _with_dropout_stream(self.layer_type), args=args, kwargs=kwargs, name=BRIDGE_NAME
        )
        return layer(inputs, nnx_method=_run, deterministic=deterministic, **call_kwargs)

    def _check_stored(self, stored: Any, args: tuple, kwargs: Mapping[str, Any]) -> None:
        """Raises if the params do not fit a layer built for this input (the bridge itself
        would copy them in without a look at their shapes)."""
        abstract = nnx.eval_shape(lambda: self.layer_type(*args, rngs=nnx.Rngs(0), **kwargs))
        want = _shapes(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
        got = _shapes(stored)
        if want != got:
            wrong = sorted(set(want.items()) ^ set(got.items()))[:4]
            raise ValueError(
                f"{type(self).__name__}: the params do not fit a {self.layer_type.__name__} with "
                f"in_features = {args[0]} (the inputs' last axis) and hidden_features = "
                f"{args[1]}; (path, shape) pairs that differ include {wrong}."
            )


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        jax.tree_util.keystr(path): tuple(jnp.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


class _StackModule(_NNXModule):
    """A gatenets recurrent stack as a linen module (subclasses set ``layer_type``)."""

    hidden_features: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    options: Mapping[str, Any] = FrozenDict()

    def _layer_args(self, in_features: int) -> tuple[tuple, Mapping[str, Any]]:
        _check_options(self.layer_type, self.options, type(self).__name__)
        kwargs = FrozenDict(
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout,
            **self.options,
        )
        return (in_features, self.hidden_features), kwargs

    def _has_dropout(self) -> bool:
        return self.dropout > 0 or self.recurrent_dropout > 0

    @nn.compact
    def __call__(self, inputs: Array, *, deterministic: bool = True, **call_kwargs):
        """Runs the layer; see the NNX layer's ``__call__`` for ``call_kwargs`` and returns.

        Args:
          inputs: ``[batch, time, features]`` (``[time, batch, features]`` with
            ``options={"time_major": True}``).
          deterministic: turn dropout off (evaluation); with False a ``"dropout"`` rng must be
            passed to ``apply`` if the layer has dropout.
          **call_kwargs: ``seq_lengths``, ``mask``, ``initial_carry``, ``return_carry``,
            ``return_gates``, ``gate_overrides``.
        """
        return self._bridge(inputs, deterministic, call_kwargs)


def _stack_module(family: CellFamily) -> type[_StackModule]:
    """The linen wrapper of a registered family's stacked layer, named as that layer."""
    name = family.layer.__name__
    doc = f""":class:`gatenets.{name}` as a ``flax.linen`` module (stacks of
    :class:`gatenets.{family.cell.__name__}`), made from the registry row ``{family.name!r}``.

    Attributes:
      hidden_features: size of each cell's state.
      num_layers: stacked layers.
      bidirectional: run each layer both ways and concatenate.
      dropout: dropout between layers (when ``deterministic=False``).
      recurrent_dropout: variational dropout on ``h_{{t-1}}`` (when ``deterministic=False``).
      options: any other keyword argument of :class:`gatenets.{name}`, the stack's
        (``loop``, ``time_major``, …) or its cell's (``dtype``, initialisers, …).

    Example:
      >>> import gatenets, gatenets.linen as gl
      >>> gl.{name}(8, num_layers=2).layer_type is gatenets.{name}
      True
    """
    namespace = {"layer_type": family.layer, "__doc__": doc, "__module__": __name__}
    return type(name, (_StackModule,), {**namespace, "__qualname__": name})


# One wrapper per registered family (gl.LSTM, gl.GRU, …): a new family gets its own for free.
_WRAPPERS: dict[str, type[_StackModule]] = {
    family.layer.__name__: _stack_module(family) for family in FAMILIES.values()
}
globals().update(_WRAPPERS)
__all__ += sorted(_WRAPPERS)


class _LinenCell(nn.RNNCellBase):
    """A gatenets cell as a native linen cell (subclasses set ``cell_type``).

    The parameters are the NNX cell's own, by the same names (``kernel``, ``recurrent_kernel``,
    ``bias``, …), declared with ``self.param`` and initialised by building the NNX cell from
    linen's key, so ``init_with_output`` computes its output with the parameters it returns,
    and the cell runs inside ``nn.RNN``, ``nn.scan`` or a hand-written decoding loop.
    """

    features: int
    options: Mapping[str, Any] = FrozenDict()

    cell_type: ClassVar[type]

    def _nnx_cell(self, in_features: int, key: Any = None) -> Any:
        _check_options(self.cell_type, self.options, type(self).__name__)

        def build():
            rngs = nnx.Rngs(params=key if key is not None else 0)
            return self.cell_type(in_features, self.features, rngs=rngs, **self.options)

        return build() if key is not None else nnx.eval_shape(build)

    @nn.compact
    def __call__(self, carry: Any, inputs: Array) -> tuple[Any, Array]:
        """One step: ``(carry, inputs [batch, in_features]) -> (new_carry, output)``; the carry
        is the cell's NamedTuple (a Flax-format tuple or array is accepted)."""
        in_features = inputs.shape[-1]
        graphdef, params, rest = nnx.split(self._nnx_cell(in_features), nnx.Param, ...)

        def init(key, name):
            return nnx.state(self._nnx_cell(in_features, key), nnx.Param)[name][...]

        values = {name: self.param(name, init, name) for name in nnx.to_pure_dict(params)}
        nnx.replace_by_pure_dict(params, values)
        return nnx.merge(graphdef, params, rest)(carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng: Any, input_shape: tuple[int, ...]) -> Any:
        """The zero carry for inputs ``[*batch, in_features]`` (linen's signature)."""
        return self._nnx_cell(input_shape[-1]).initialize_carry(input_shape)

    @property
    def num_feature_axes(self) -> int:
        return 1


def _check_options(layer_type: type, options: Mapping[str, Any], where: str) -> None:
    """Raises, naming ``options``, for a keyword no constructor involved takes."""
    accepted: set[str] = set()
    for cls in (layer_type, getattr(layer_type, "cell_type", None)):
        if cls is not None:
            accepted |= set(inspect.signature(cls.__init__).parameters)
    unknown = sorted(set(options) - accepted - {"self", "rngs"})
    if unknown:
        raise ValueError(
            f"{where}: options {unknown} are not arguments of {layer_type.__name__}"
            f"{' or its cell' if hasattr(layer_type, 'cell_type') else ''}; call arguments "
            "such as return_carry go to the call, not to options. Accepted: "
            f"{sorted(accepted - {'self', 'rngs', 'in_features', 'hidden_features'})}."
        )


def _linen_cell(family: CellFamily) -> type[_LinenCell]:
    """The native linen cell of a registered family, named as its NNX cell."""
    name = family.cell.__name__
    doc = f""":class:`gatenets.{name}` as a native ``flax.linen`` cell, made from the registry
    row ``{family.name!r}``: for ``nn.RNN``, ``nn.scan`` and decoders that feed back their own
    outputs. Its parameters carry the NNX cell's names, so :func:`params_from_nnx` /
    :func:`params_to_nnx` move them.

    Attributes:
      features: the hidden size (Flax linen's name for it).
      options: any other keyword argument of :class:`gatenets.{name}`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import linen as nn
      >>> import gatenets.linen as gl
      >>> rnn = nn.RNN(gl.{name}(4))
      >>> x = jnp.ones((2, 5, 3))
      >>> y, variables = rnn.init_with_output(jax.random.key(0), x)
      >>> y.shape, bool(jnp.allclose(y, rnn.apply(variables, x)))
      ((2, 5, 4), True)
    """
    namespace = {"cell_type": family.cell, "__doc__": doc, "__module__": __name__}
    return type(name, (_LinenCell,), {**namespace, "__qualname__": name})


_CELLS: dict[str, type[_LinenCell]] = {
    family.cell.__name__: _linen_cell(family) for family in FAMILIES.values()
}
globals().update(_CELLS)
__all__ += sorted(_CELLS)


def params_from_nnx(layer: nnx.Module) -> dict[str, Any]:
    """The linen ``params`` of a bridged layer holding ``layer``'s weights.

    Args:
      layer: a gatenets NNX layer (``gatenets.LSTM``, ``gatenets.MinGRU``, …) or cell
        (``gatenets.LSTMCell``, …).

    Returns:
      ``{"layer": {...}}`` for a layer: pass it as ``{"params": params_from_nnx(layer)}`` to
      the bridged module's ``apply`` (or put it under the module's name in a bigger model's
      params); for a cell, the linen cell's own params (``{"kernel": …, …}``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets, gatenets.linen as gl
      >>> layer = gatenets.GRU(3, 4, rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 5, 3))
      >>> y = gl.GRU(4).apply({"params": gl.params_from_nnx(layer)}, x)
      >>> bool(jnp.allclose(y, layer(x)))
      True
    """
    if not isinstance(layer, nnx.Module):
        raise TypeError(f"layer must be an NNX module; got {type(layer).__name__}.")
    pure = nnx.to_pure_dict(nnx.state(layer, nnx.Param))
    # A cell's linen twin is a native linen cell whose params are the cell's own, unnested.
    return pure if isinstance(layer, GatedCell) else {BRIDGE_NAME: pure}


def params_to_nnx(params: Mapping[str, Any], layer: nnx.Module) -> nnx.Module:
    """Copies the linen ``params`` of a bridged layer into the NNX ``layer`` (in place).

    Args:
      params: the bridged module's ``params`` (``{"layer": {...}}``), or a linen cell's.
      layer: an NNX layer (or cell) of the same type and sizes.

    Returns:
      ``layer``, now holding the linen weights.
    """
    if isinstance(layer, GatedCell) and isinstance(params, Mapping):
        params = {BRIDGE_NAME: params}
    if not isinstance(params, Mapping) or BRIDGE_NAME not in params:
        raise ValueError(
            f"params must be the params of a bridged gatenets layer, a mapping with key "
            f"{BRIDGE_NAME!r}; got {type(params).__name__}"
            + (f" with keys {sorted(params)}." if isinstance(params, Mapping) else ".")
        )
    state = nnx.state(layer, nnx.Param)
    want, got = _shapes(nnx.to_pure_dict(state)), _shapes(params[BRIDGE_NAME])
    if want != got:
        wrong = sorted(set(want.items()) ^ set(got.items()))[:4]
        raise ValueError(
            f"params do not fit a {type(layer).__name__} of these sizes: (path, shape) pairs "
            f"that differ include {wrong}."
        )
    nnx.replace_by_pure_dict(state, params[BRIDGE_NAME])
    nnx.update(layer, state)
    return layer


class GatedAttention(_NNXModule):
    """:class:`gatenets.GatedAttention` as a ``flax.linen`` module.

    Attributes:
      num_heads: attention heads.
      options: any other keyword argument of :class:`gatenets.GatedAttention` (``gate``,
        ``head_dim``, ``num_kv_heads``, ``out_features``, ``dtype``, …).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import gatenets.linen as gl
      >>> attention = gl.GatedAttention(2, options={"gate": "headwise"})
      >>> x = jnp.ones((1, 4, 8))
      >>> y, trace = attention.apply(attention.init(jax.random.key(0), x), x, causal=True,
      ...                            return_gates=True)
      >>> y.shape, trace.gates["attention"].output.shape
      ((1, 4, 8), (1, 4, 2))
    """

    num_heads: int
    options: Mapping[str, Any] = FrozenDict()

    layer_type = attention_gated.GatedAttention

    def _layer_args(self, in_features: int) -> tuple[tuple, Mapping[str, Any]]:
        return (in_features, self.num_heads), FrozenDict(self.options)

    @nn.compact
    def __call__(self, inputs: Array, *, deterministic: bool = True, **call_kwargs):
        """Runs the layer; ``call_kwargs`` are those of :meth:`gatenets.GatedAttention.__call__`
        (``causal``, ``mask``, ``seq_lengths``, ``return_gates``, ``gate_overrides``, …)."""
        return self._bridge(inputs, deterministic, call_kwargs)
