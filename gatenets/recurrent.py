"""Sequence layers: the scan driver (:class:`RNN`), :class:`Bidirectional`,
:class:`RecurrentStack` and every stacked layer, each one line over its cell (:class:`LSTM`,
:class:`GRU`, :class:`MGU`, :class:`MinGRU`, :class:`MinLSTM`, :class:`RGLRU`).

Dependencies point one way: cells know nothing of this module; this module knows cells only
through the contract of :class:`~gatenets.GatedCell` and names each stack's cell.

Every layer here returns its outputs and, when asked (``return_gates=True``), a
:class:`~gatenets.GateTrace` of every gate of every layer and direction, ``[batch, time, units]``
each, with the mask of valid steps. Asking is a static switch: with it off, nothing about gates
leaves the scan.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gatenets import loop as loop_table
from gatenets._layers import scoped
from gatenets._typing import Array
from gatenets.cells.base import GatedCell
from gatenets.gates import (
    GateTrace,
    check_gate_names,
    check_switches,
    merge_traces,
    resolve_overrides,
    sequence_mask,
    zero_invalid,
)
from gatenets.loop import Loop, LoopRequest, as_loop


class BidirectionalCarry(NamedTuple):
    """Final carries of the two directions of a bidirectional layer."""

    forward: Any
    backward: Any


def _check_sequence(cell: GatedCell, inputs: Any, time_major: bool) -> tuple[Array, int, int]:
    x = cell.check_input(inputs, "inputs")
    if x.ndim != 3:
        layout = "[time, batch, features]" if time_major else "[batch, time, features]"
        raise ValueError(f"inputs must have rank 3, {layout}; got shape {x.shape}.")
    time, batch = (x.shape[0], x.shape[1]) if time_major else (x.shape[1], x.shape[0])
    return x, batch, time


def _check_carry(carry: Any, expected: Any, name: str) -> Any:
    """Raises unless ``carry`` has the structure and shapes of ``expected``.

    Leaves are cast to the cell's state dtypes, so a float32 carry can start a bf16 layer.
    """
    expected_def = jax.tree_util.tree_structure(expected)
    try:
        leaves = expected_def.flatten_up_to(carry)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name} must have the structure of {expected_def}; got "
            f"{jax.tree_util.tree_structure(carry)}."
        ) from err
    for got, want in zip(leaves, jax.tree_util.tree_leaves(expected), strict=True):
        if jnp.shape(got) != want.shape:
            raise ValueError(
                f"{name} has a leaf of shape {jnp.shape(got)}; expected {want.shape} "
                f"(structure {expected_def})."
            )
    return jax.tree_util.tree_unflatten(
        expected_def,
        [
            jnp.asarray(g, w.dtype)
            for g, w in zip(leaves, jax.tree_util.tree_leaves(expected), strict=True)
        ],
    )


class PreparedSequence(NamedTuple):
    """A checked call of :class:`RNN`, ready for :meth:`GatedCell.scan` (time-major).

    Attributes:
      xs: ``[time, batch, features]`` inputs, or ``[time, batch, blocks * hidden]`` if
        ``projected``.
      valid: ``[time, batch]`` booleans, or None when every step is valid.
      carry: the initial carry.
      recurrent_mask: ``[batch, output_features]`` dropout mask on ``h``, or None.
      projected: whether ``xs`` went through the cell's input projection.
    """

    xs: Array
    valid: Array | None
    carry: Any
    recurrent_mask: Array | None
    projected: bool


class RNN(nnx.Module):
    """Runs a gated cell over a sequence, with the loop ``loop`` names.

    The cell's time-parallel part (the input matmul) runs once for all steps before the scan
    (``precompute_inputs=True``) or inside each step; the sequential part runs in the scan. By
    default the choice is made per backend: inside each step on CPU, where measured train steps
    were faster that way (``benchmarks/recurrent.py``, variants ``plain`` and ``inside``), and
    before the scan elsewhere, where one large matmul is what accelerators do best.

    Padding: pass ``seq_lengths`` (right-padded sequences) or any boolean ``mask[batch, time]``.
    At a masked step the carry is held and the output is zero, so each sequence's valid steps
    get exactly what running it alone, unpadded, gives; with ``reverse=True`` each sequence's
    pass starts at its last valid step. Outputs keep the input's time order.

    Args:
      cell: a gatenets cell (``LSTMCell``, ``GRUCell``, …).
      loop: how the sequence is run (:class:`~gatenets.Loop` or its name): ``"auto"`` (the
        fastest loop that computes the request exactly, measured here) or one of the loops of
        :func:`gatenets.loop.loop_table` the cell has a kernel for (``"scan"`` always); a
        named loop that cannot compute a request raises, saying why.
      time_major: inputs and outputs are ``[time, batch, …]`` instead of ``[batch, time, …]``.
        Gate traces are batch-major either way.
      reverse: run from the last step to the first.
      return_carry: also return the final carry (default of the call argument).
      learn_initial_carry: make the initial carry a trainable parameter (one vector per carry
        field, shared by every sequence) instead of zeros.
      recurrent_dropout: rate of variational dropout on the recurrent input ``h_{t-1}``: one
        mask per sequence for all steps (Gal & Ghahramani 2016); active only in training mode
        (``model.train()``), off after ``model.eval()``.
      precompute_inputs: run the input matmul for all steps before the scan (True) or inside
        each step (False); None (default) picks per backend: False on CPU, True elsewhere.
      unroll: steps per scan iteration, as in ``jax.lax.scan``.
      rngs: random streams; needed for ``recurrent_dropout``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> rnn = gatenets.RNN(gatenets.LSTMCell(3, 4, rngs=nnx.Rngs(0)))
      >>> y, trace = rnn(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 2]), return_gates=True)
      >>> y.shape, trace.gates["forward"].forget.shape, trace.mask.sum().item()
      ((2, 5, 4), (2, 5, 4), 7)
    """

    def __init__(
        self,
        cell: GatedCell,
        *,
        loop: Loop | str = Loop.AUTO,
        time_major: bool = False,
        reverse: bool = False,
        return_carry: bool = False,
        learn_initial_carry: bool = False,
        recurrent_dropout: float = 0.0,
        precompute_inputs: bool | None = None,
        unroll: int = 1,
        rngs: nnx.Rngs | None = None,
    ):
        if not isinstance(cell, GatedCell):
            raise TypeError(
                f"cell must be a gatenets cell (LSTMCell, GRUCell, …); got {type(cell).__name__}."
                " For other cells use flax.nnx.RNN."
            )
        if not 0.0 <= recurrent_dropout < 1.0:
            raise ValueError(f"recurrent_dropout must lie in [0, 1); got {recurrent_dropout!r}.")
        if recurrent_dropout > 0 and rngs is None:
            raise ValueError(
                "recurrent_dropout > 0 needs rngs (an nnx.Rngs with a dropout stream)."
            )
        self.cell = cell
        # A named loop that this cell can never run fails here, before any input is seen.
        self.loop = cell.resolve_loop(loop) if as_loop(loop) is not Loop.AUTO else Loop.AUTO
        self.time_major = time_major
        self.reverse = reverse
        self.return_carry = return_carry
        self.precompute_inputs = precompute_inputs
        self.unroll = unroll
        self.learn_initial_carry = learn_initial_carry
        if learn_initial_carry:
            template = cell.as_carry(cell.initialize_carry((cell.in_features,)))
            self.initial_carry = nnx.data(jax.tree_util.tree_map(nnx.Param, template))
        self.recurrent_dropout = nnx.Dropout(recurrent_dropout, rngs=rngs)

    @property
    def direction(self) -> str:
        """Name of this pass in gate traces: ``"forward"`` or ``"backward"``."""
        return "backward" if self.reverse else "forward"

    def _initial_carry(self, batch: int, initial_carry: Any) -> Any:
        # A subclass may build its carry as Flax does (a tuple): it is converted here once.
        zeros = self.cell.as_carry(self.cell.initialize_carry((batch, self.cell.in_features)))
        if initial_carry is not None:
            initial_carry = self.cell.as_carry(initial_carry, "initial_carry")
            return _check_carry(initial_carry, zeros, "initial_carry")
        if self.learn_initial_carry:
            return jax.tree_util.tree_map(
                lambda p, z: jnp.broadcast_to(p[...].astype(z.dtype), z.shape),
                self.initial_carry,
                zeros,
                is_leaf=lambda v: isinstance(v, nnx.Variable),
            )
        return zeros

    def _recurrent_mask(self, batch: int) -> Array | None:
        dropout = self.recurrent_dropout
        if dropout.rate == 0.0 or dropout.deterministic:
            return None
        dtype = self.cell.carry_spec()["h"][1]
        return dropout(jnp.ones((batch, self.cell.output_features), dtype))

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        seq_lengths: Array | None = None,
        mask: Array | None = None,
        return_carry: bool | None = None,
        return_gates: bool = False,
        gate_overrides: Mapping[str, Any] | None = None,
    ):
        """Runs the cell over ``inputs``.

        Args:
          inputs: ``[batch, time, features]`` (``[time, batch, features]`` if time-major).
          initial_carry: the cell's carry NamedTuple with ``[batch, …]`` leaves; zeros (or the
            learned carry) if None.
          seq_lengths: ``[batch]`` integers in ``[0, time]``; sequences are right-padded.
          mask: ``[batch, time]`` booleans, True at valid steps; instead of ``seq_lengths``.
          return_carry: also return the final carry (each sequence's carry after its last
            valid step); defaults to the constructor's value.
          return_gates: also return a :class:`~gatenets.GateTrace` of the gates.
          gate_overrides: ``{gate_name: constant or function}`` replacing gates inside the scan.

        Returns:
          ``outputs`` (``[batch, time, hidden]``), or ``(carry, outputs)`` with
          ``return_carry``, ``(outputs, trace)`` with ``return_gates``,
          ``(carry, outputs, trace)`` with both.
        """
        return_carry = self.return_carry if return_carry is None else return_carry
        check_switches(self, return_carry=return_carry, return_gates=return_gates)
        prepared = self.prepare(
            inputs,
            initial_carry=initial_carry,
            seq_lengths=seq_lengths,
            mask=mask,
            gate_overrides=gate_overrides,
        )
        carry, outputs, gates = self.cell.scan(
            prepared.carry,
            prepared.xs,
            prepared.valid,
            projected=prepared.projected,
            loop=self.loop,
            reverse=self.reverse,
            return_gates=return_gates,
            gate_overrides=gate_overrides,
            recurrent_mask=prepared.recurrent_mask,
            unroll=self.unroll,
        )
        return self.finish(prepared, carry, outputs, gates, return_carry, return_gates)

    def prepare(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        seq_lengths: Array | None = None,
        mask: Array | None = None,
        gate_overrides: Mapping[str, Any] | None = None,
    ) -> PreparedSequence:
        """Checks a call's arguments and makes what :meth:`GatedCell.scan` takes."""
        x, batch, time = _check_sequence(self.cell, inputs, self.time_major)
        valid = sequence_mask(batch, time, seq_lengths=seq_lengths, mask=mask)
        check_gate_names(gate_overrides, self.cell.gate_names, f"{type(self.cell).__name__}")
        xs = x if self.time_major else jnp.swapaxes(x, 0, 1)
        if valid is not None:
            # Padding never reaches the arithmetic: a NaN or inf there would otherwise meet a
            # zero cotangent in the weight gradients (NaN * 0 = NaN) and poison every one.
            xs = zero_invalid(valid.T, xs)
        precompute = self.precompute_inputs
        if precompute is None:
            precompute = jax.default_backend() != "cpu"
        if precompute:
            xs = self.cell.project(xs)
        return PreparedSequence(
            xs=xs,
            valid=None if valid is None else valid.T,
            carry=self._initial_carry(batch, initial_carry),
            recurrent_mask=self._recurrent_mask(batch),
            projected=precompute,
        )

    def finish(
        self,
        prepared: PreparedSequence,
        carry: Any,
        outputs: Array,
        gates: Any,
        return_carry: bool,
        return_gates: bool,
    ):
        """The call's result from what :meth:`GatedCell.scan` returned (time-major)."""
        if not self.time_major:
            outputs = jnp.swapaxes(outputs, 0, 1)
        result: tuple = (outputs,)
        if return_carry:
            result = (carry, *result)
        if return_gates:
            gates = jax.tree_util.tree_map(lambda g: jnp.swapaxes(g, 0, 1), gates)
            time, batch = prepared.xs.shape[:2]
            valid = prepared.valid
            trace_mask = jnp.ones((batch, time), bool) if valid is None else valid.T
            result = (*result, GateTrace({self.direction: gates}, trace_mask))
        return result[0] if len(result) == 1 else result


def _same_overrides(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two directions got the very same overrides (by identity: arrays and functions
    have no equality that says they compute the same)."""
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


class Bidirectional(nnx.Module):
    """Runs a forward and a backward :class:`RNN` and joins their outputs.

    Padding-aware: with ``seq_lengths`` or ``mask``, the backward pass starts at each
    sequence's last valid step.

    Args:
      forward_rnn: the forward pass (an ``RNN`` with ``reverse=False``).
      backward_rnn: the backward pass (an ``RNN`` with ``reverse=True``).
      merge_fn: joins ``(forward_outputs, backward_outputs)``; concatenation on the last axis by
        default.
      one_loop: run both directions in one loop, the backward pass over the time-reversed
        sequence, each step one batched matmul for both (``jax.vmap`` over the direction): half
        the loop iterations. It applies when both cells have the same structure and options
        and both directions get the same overrides; otherwise the two passes run one after the
        other. None (default) picks per backend (``Bidirectional.one_loop_default``: on CPU
        the two passes measured faster, so one loop is opt-in).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> rngs = nnx.Rngs(0)
      >>> bi = gatenets.Bidirectional(
      ...     gatenets.RNN(gatenets.GRUCell(3, 4, rngs=rngs)),
      ...     gatenets.RNN(gatenets.GRUCell(3, 4, rngs=rngs), reverse=True))
      >>> y, trace = bi(jnp.ones((2, 5, 3)), return_gates=True)
      >>> y.shape, sorted(trace.gates)
      ((2, 5, 8), ['backward', 'forward'])
    """

    def __init__(
        self,
        forward_rnn: RNN,
        backward_rnn: RNN,
        *,
        merge_fn: Callable[[Array, Array], Array] | None = None,
        one_loop: bool | None = None,
    ):
        if forward_rnn.reverse or not backward_rnn.reverse:
            raise ValueError(
                "Bidirectional needs forward_rnn with reverse=False and backward_rnn with "
                f"reverse=True; got reverse={forward_rnn.reverse} and {backward_rnn.reverse}."
            )
        if forward_rnn.time_major != backward_rnn.time_major:
            raise ValueError("forward_rnn and backward_rnn must agree on time_major.")
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.one_loop = one_loop

    # Backends where one loop is the default. Measured on CPU (gatenets bench --bidirectional
    # --variants plain,two_pass): the two passes one after the other were 7-10% faster, with
    # the native and with the fused kernel, so no backend defaults to it until measured.
    one_loop_default: ClassVar[dict[str, bool]] = {}

    @property
    def cell(self) -> GatedCell:
        return self.forward_rnn.cell

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: BidirectionalCarry | None = None,
        seq_lengths: Array | None = None,
        mask: Array | None = None,
        return_carry: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, Any] | None = None,
    ):
        """Same arguments and returns as :meth:`RNN.__call__`; carries are
        :class:`~gatenets.BidirectionalCarry` and ``gate_overrides`` may also be keyed by
        ``"forward"`` / ``"backward"``."""
        check_switches(self, return_carry=return_carry, return_gates=return_gates)
        directions = ("forward", "backward")
        overrides = resolve_overrides(gate_overrides, directions, self.cell.gate_names)
        if initial_carry is not None and not isinstance(initial_carry, BidirectionalCarry):
            raise TypeError(
                "initial_carry of a Bidirectional layer must be a BidirectionalCarry(forward, "
                f"backward); got {type(initial_carry).__name__}."
            )
        per_direction = [
            dict(
                initial_carry=None if initial_carry is None else getattr(initial_carry, name),
                seq_lengths=seq_lengths,
                mask=mask,
                gate_overrides=overrides[name] or None,
            )
            for name in directions
        ]
        if self._runs_in_one_loop(overrides):
            results = self._one_loop(inputs, per_direction, return_gates)
        else:
            results = [
                rnn(inputs, return_carry=True, return_gates=return_gates, **kwargs)
                for rnn, kwargs in zip(
                    (self.forward_rnn, self.backward_rnn), per_direction, strict=True
                )
            ]
        merge = self.merge_fn or (lambda a, b: jnp.concatenate([a, b], axis=-1))
        outputs = merge(results[0][1], results[1][1])
        result: tuple = (outputs,)
        if return_carry:
            result = (BidirectionalCarry(results[0][0], results[1][0]), *result)
        if return_gates:
            result = (*result, merge_traces([results[0][2], results[1][2]]))
        return result[0] if len(result) == 1 else result

    def _runs_in_one_loop(self, overrides: Mapping[str, Any]) -> bool:
        one_loop = self.one_loop
        if one_loop is None:
            one_loop = self.one_loop_default.get(jax.default_backend(), False)
        forward, backward = self.forward_rnn, self.backward_rnn
        return (
            one_loop
            and nnx.graphdef(forward.cell) == nnx.graphdef(backward.cell)
            and (forward.loop, forward.precompute_inputs, forward.unroll)
            == (backward.loop, backward.precompute_inputs, backward.unroll)
            and forward.recurrent_dropout.rate == backward.recurrent_dropout.rate
            and _same_overrides(overrides["forward"], overrides["backward"])
        )

    def _one_loop(self, inputs, per_direction, return_gates):
        """Both directions as one ``jax.vmap``-ed loop: the backward pass runs over the
        time-reversed sequence, which is exactly what a reverse scan computes."""
        rnns = (self.forward_rnn, self.backward_rnn)
        prepared = [
            rnn.prepare(inputs, **kwargs) for rnn, kwargs in zip(rnns, per_direction, strict=True)
        ]
        flipped = prepared[1]._replace(
            xs=prepared[1].xs[::-1],
            valid=None if prepared[1].valid is None else prepared[1].valid[::-1],
        )
        graphdef, forward_state = nnx.split(rnns[0].cell)
        backward_state = nnx.state(rnns[1].cell)
        stacked = jax.tree_util.tree_map(
            lambda a, b: jnp.stack([a, b]),
            (forward_state, prepared[0]._replace(projected=None)),
            (backward_state, flipped._replace(projected=None)),
        )
        overrides = per_direction[0]["gate_overrides"]

        def run(state, sequence):
            return nnx.merge(graphdef, state).scan(
                sequence.carry,
                sequence.xs,
                sequence.valid,
                projected=prepared[0].projected,
                loop=rnns[0].loop,
                return_gates=return_gates,
                gate_overrides=overrides,
                recurrent_mask=sequence.recurrent_mask,
                unroll=rnns[0].unroll,
            )

        carry, outputs, gates = jax.vmap(run)(*stacked)
        results = []
        for k, rnn in enumerate(rnns):
            flip = (lambda a: a[::-1]) if k else (lambda a: a)
            part = jax.tree_util.tree_map(lambda a, k=k: a[k], (carry, outputs, gates))
            results.append(
                rnn.finish(
                    prepared[k],
                    part[0],
                    flip(part[1]),
                    jax.tree_util.tree_map(flip, part[2]),
                    True,
                    return_gates,
                )
            )
        return results


_STACKS: dict[type[GatedCell], type[RecurrentStack]] = {}


class RecurrentStack(nnx.Module):
    """A stack of recurrent layers of one cell type, uni- or bidirectional, as PyTorch's
    ``nn.LSTM`` / ``nn.GRU``: the base of :class:`LSTM` and :class:`GRU`.

    Gate traces name each part ``"layer{k}/forward"`` / ``"layer{k}/backward"``. Carries are a
    tuple with one entry per layer (a :class:`~gatenets.BidirectionalCarry` per layer when
    bidirectional).

    Each family's stack is ``RecurrentStack.of(cell)`` (:mod:`gatenets.registry`): a subclass
    that names its cell in ``cell_type`` and nothing more.

    Args:
      in_features: size of each input step.
      hidden_features: size of each cell's state.
      num_layers: number of stacked layers.
      loop: how each layer runs its sequence; see :class:`RNN`.
      bidirectional: run each layer in both directions and concatenate.
      dropout: dropout rate on the outputs of every layer but the last (training mode only).
      recurrent_dropout: variational dropout rate on the recurrent input of every layer.
      time_major: inputs and outputs are ``[time, batch, …]``.
      learn_initial_carry: trainable initial carries.
      precompute_inputs: see :class:`RNN`.
      unroll: see :class:`RNN`.
      rngs: random streams for parameters and dropout.
      **cell_kwargs: passed to every cell (``proj_size``, ``reset_after``, ``dtype``, …).
    """

    cell_type: ClassVar[type[GatedCell]]

    @classmethod
    def of(cls, cell: type[GatedCell]) -> type[RecurrentStack]:
        """The stacked layer of a cell family, made once: named as the cell without its
        ``Cell`` suffix (``LSTMCell`` → ``LSTM``), documented by the cell's ``layer_doc``.

        Example:
          >>> import gatenets
          >>> gatenets.RecurrentStack.of(gatenets.GRUCell) is gatenets.GRU
          True
        """
        if not (isinstance(cell, type) and issubclass(cell, GatedCell)):
            raise TypeError(f"cell must be a GatedCell subclass; got {cell!r}.")
        if cell not in _STACKS:
            name = cell.__name__.removesuffix("Cell")
            doc = getattr(cell, "layer_doc", None) or (
                f"A (stacked, optionally bidirectional) layer of :class:`{cell.__name__}` cells;"
                " arguments are those of :class:`~gatenets.RecurrentStack`, and the cell's own go"
                " to every layer's cell."
            )
            namespace = {"cell_type": cell, "__doc__": doc, "__qualname__": name}
            _STACKS[cell] = type(name, (cls,), {**namespace, "__module__": "gatenets.registry"})
        return _STACKS[cell]

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_layers: int = 1,
        loop: Loop | str = Loop.AUTO,
        bidirectional: bool = False,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        time_major: bool = False,
        learn_initial_carry: bool = False,
        precompute_inputs: bool | None = None,
        unroll: int = 1,
        rngs: nnx.Rngs,
        **cell_kwargs,
    ):
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int; got {num_layers!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1); got {dropout!r}.")
        self.hidden_features = hidden_features
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.time_major = time_major
        self.loop = as_loop(loop)
        # A stack loop runs the whole stack; each layer keeps "auto" for what it cannot do.
        layer_loop = Loop.AUTO if self.loop in loop_table.STACK_LOOPS else self.loop
        layers = []
        features = in_features
        for _ in range(num_layers):

            def make_rnn(reverse, features=features):
                return RNN(
                    self.cell_type(features, hidden_features, rngs=rngs, **cell_kwargs),
                    loop=layer_loop,
                    time_major=time_major,
                    reverse=reverse,
                    learn_initial_carry=learn_initial_carry,
                    recurrent_dropout=recurrent_dropout,
                    precompute_inputs=precompute_inputs,
                    unroll=unroll,
                    rngs=rngs,
                )

            layer = (
                Bidirectional(make_rnn(False), make_rnn(True)) if bidirectional else make_rnn(False)
            )
            layers.append(layer)
            features = layer.cell.output_features * (2 if bidirectional else 1)
        self.layers = nnx.List(layers)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out_features = features
        if self.loop in loop_table.STACK_LOOPS:
            # A stack loop this configuration can never run fails here, before any input.
            loop_table.choose_stack(self, self.loop, LoopRequest(), None, None)

    @property
    def rnns(self) -> list[RNN]:
        """Every pass in cuDNN's pseudo-layer order: layer 0 forward, layer 0 backward, …"""
        if self.bidirectional:
            return [rnn for layer in self.layers for rnn in (layer.forward_rnn, layer.backward_rnn)]
        return list(self.layers)

    @property
    def family(self) -> str:
        """The family of the stack's cells (the loop table keys stack loops by it)."""
        return self.cell_type.family

    def _stack_carries(self, batch: int, initial_carry: tuple | None) -> list[Any]:
        """The initial carry of every pass, in :attr:`rnns` order."""
        given: list[Any] = []
        for k in range(self.num_layers):
            layer_carry = None if initial_carry is None else initial_carry[k]
            if not self.bidirectional:
                given.append(layer_carry)
            elif layer_carry is None:
                given += [None, None]
            elif isinstance(layer_carry, BidirectionalCarry):
                given += [layer_carry.forward, layer_carry.backward]
            else:
                raise TypeError(
                    f"initial_carry[{k}] of a bidirectional layer must be a BidirectionalCarry"
                    f"(forward, backward); got {type(layer_carry).__name__}."
                )
        return [rnn._initial_carry(batch, c) for rnn, c in zip(self.rnns, given, strict=True)]

    def _run_stack_loop(self, loop, inputs, initial_carry, seq_lengths):
        """The whole stack as one call of a stack loop; returns ``(carries, outputs)``."""
        rnns = self.rnns
        x, batch, time = _check_sequence(rnns[0].cell, inputs, self.time_major)
        valid = sequence_mask(batch, time, seq_lengths=seq_lengths)
        x = x if not self.time_major else jnp.swapaxes(x, 0, 1)
        if valid is not None:
            x = zero_invalid(valid, x)
        lengths = jnp.full((batch,), time, jnp.int32) if seq_lengths is None else seq_lengths
        carries = self._stack_carries(batch, initial_carry)
        finals, y = loop_table.run_stack(self, loop, x, carries, lengths)
        carry_type = rnns[0].cell.carry_type
        finals = [carry_type(*pair) for pair in finals]
        if self.bidirectional:
            finals = [
                BidirectionalCarry(*finals[2 * k : 2 * k + 2]) for k in range(len(finals) // 2)
            ]
        return tuple(finals), (jnp.swapaxes(y, 0, 1) if self.time_major else y)

    def _stack_timers(self, candidates, differentiated, inputs, seq_lengths):
        """``{loop: timed function}`` of this stack's forward (and backward: the parameters'
        gradient) pass with random parameters and inputs of the call's shapes: for the
        measured choice."""
        graphdef, params, rest = nnx.split(self, nnx.Param, ...)
        params, rest = loop_table.concrete_like(params), loop_table.concrete_like(rest)
        x = loop_table.concrete_like(inputs, seed=1)
        axis = 0 if self.time_major else 1
        x = jax.lax.slice_in_dim(x, 0, min(x.shape[axis], loop_table.TUNING_STEPS), axis=axis)
        lengths = None if seq_lengths is None else jnp.full(seq_lengths.shape, x.shape[axis])

        def timer(choice):
            def forward(params, x):
                stack = nnx.merge(graphdef, params, rest)
                overrides = resolve_overrides(None, stack.paths, stack.cell.gate_names)
                return stack._run(x, None, lengths, None, False, overrides, choice)[1]

            def loss(params, x):
                return jnp.sum(forward(params, x).astype(jnp.float32))

            fn = jax.jit(jax.grad(loss, argnums=(0, 1)) if differentiated else forward)
            return functools.partial(fn, params, x)

        return {choice: timer(choice) for choice in candidates}

    @property
    def cell(self) -> GatedCell:
        """The first layer's (forward) cell."""
        return self.layers[0].cell

    @property
    def paths(self) -> tuple[str, ...]:
        """Names of the parts in gate traces and overrides."""
        directions = ("forward", "backward") if self.bidirectional else ("forward",)
        return tuple(f"layer{k}/{d}" for k in range(self.num_layers) for d in directions)

    @scoped
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: tuple | None = None,
        seq_lengths: Array | None = None,
        mask: Array | None = None,
        return_carry: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, Any] | None = None,
    ):
        """Runs the stack.

        Args:
          inputs: ``[batch, time, features]`` (``[time, batch, features]`` if time-major).
          initial_carry: a tuple with one carry per layer (``BidirectionalCarry`` per layer
            when bidirectional), or None for zeros.
          seq_lengths: ``[batch]`` integers in ``[0, time]`` (right padding).
          mask: ``[batch, time]`` booleans, True at valid steps.
          return_carry: also return the tuple of final carries.
          return_gates: also return a :class:`~gatenets.GateTrace` of every layer and direction.
          gate_overrides: ``{gate: value}`` for every layer, or scoped by path:
            ``{"layer1": {"forget": 1.0}}``, ``{"layer0/backward": {"input": 0.0}}``.

        Returns:
          ``outputs``, ``(carry, outputs)``, ``(outputs, trace)`` or ``(carry, outputs, trace)``
          as for :class:`RNN`.
        """
        check_switches(self, return_carry=return_carry, return_gates=return_gates)
        overrides = resolve_overrides(gate_overrides, self.paths, self.cell.gate_names)
        if initial_carry is not None and (
            not isinstance(initial_carry, tuple | list) or len(initial_carry) != self.num_layers
        ):
            raise ValueError(
                f"initial_carry must be a tuple of {self.num_layers} per-layer carries; got "
                f"{type(initial_carry).__name__}"
                + (
                    f" of length {len(initial_carry)}."
                    if isinstance(initial_carry, tuple | list)
                    else "."
                )
            )
        request = LoopRequest(
            return_gates=return_gates,
            gate_overrides=gate_overrides,
            padding="mask" if mask is not None else "lengths" if seq_lengths is not None else None,
        )
        stack_loop = loop_table.choose_stack(
            self,
            self.loop,
            request,
            inputs,
            lambda candidates, differentiated: self._stack_timers(
                candidates, differentiated, inputs, seq_lengths
            ),
        )
        carries, x, traces = self._run(
            inputs, initial_carry, seq_lengths, mask, return_gates, overrides, stack_loop
        )
        result: tuple = (x,)
        if return_carry:
            result = (carries, *result)
        if return_gates:
            result = (*result, merge_traces(traces))
        return result[0] if len(result) == 1 else result

    def _run(self, inputs, initial_carry, seq_lengths, mask, return_gates, overrides, stack_loop):
        """``(carries, outputs, traces)``: as one stack loop call, or layer by layer."""
        if stack_loop in loop_table.STACK_LOOPS:
            carries, outputs = self._run_stack_loop(stack_loop, inputs, initial_carry, seq_lengths)
            return carries, outputs, []
        x = inputs
        carries, traces = [], []
        for k, layer in enumerate(self.layers):
            if self.bidirectional:
                layer_overrides = {
                    d: overrides[f"layer{k}/{d}"]
                    for d in ("forward", "backward")
                    if overrides[f"layer{k}/{d}"]
                }
            else:
                layer_overrides = overrides[f"layer{k}/forward"]
            out = layer(
                x,
                initial_carry=None if initial_carry is None else initial_carry[k],
                seq_lengths=seq_lengths,
                mask=mask,
                return_carry=True,
                return_gates=return_gates,
                gate_overrides=layer_overrides or None,
            )
            carry, x, trace = out if return_gates else (*out, None)
            carries.append(carry)
            if trace is not None:
                traces.append(trace.prefixed(f"layer{k}"))
            if k + 1 < self.num_layers:
                x = self.dropout(x)
        return tuple(carries), x, traces
