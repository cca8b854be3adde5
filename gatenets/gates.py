"""Gate traces, gate overrides and sequence masks: what every layer shares about its gates.

Every gatenets layer speaks the same language about its sigmoid gates:

* a cell's gates are a NamedTuple of post-sigmoid values, defined beside the cell
  (``LSTMGates`` in ``cells/lstm.py``, ``GRUGates`` in ``cells/gru.py``, …);
* a layer asked for its gates (``return_gates=True``) returns a :class:`GateTrace`: the gates of
  every layer and direction by name, each field shaped ``[batch, time, units]``, plus the
  ``[batch, time]`` mask of valid steps so that statistics never count padding;
* a layer takes ``gate_overrides`` that replace named gates inside the computation.
"""

from __future__ import annotations

import contextvars
import functools
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from gatenets._typing import Array

# --------------------------------------------------------------------------------------------
# Traces.


class GateTrace(NamedTuple):
    """The gates of a whole layer or model over a sequence, with the mask of valid steps.

    Attributes:
      gates: mapping from a path naming the layer and direction (``"forward"``,
        ``"layer1/backward"``, ``"attention"``, …) to the gate NamedTuple of that part; every
        field is ``[batch, time, ...]``.
      mask: ``[batch, time]`` booleans, True where the step is real input (not padding).

    Example:
      >>> import jax.numpy as jnp
      >>> from gatenets import GateTrace, GRUGates
      >>> g = GRUGates(reset=jnp.full((2, 3, 4), 0.5), update=jnp.zeros((2, 3, 4)))
      >>> trace = GateTrace({"forward": g}, jnp.ones((2, 3), bool))
      >>> sorted(trace.flat())
      ['forward/reset', 'forward/update']
    """

    gates: dict[str, Any]
    mask: Array

    def flat(self) -> dict[str, Array]:
        """Every gate as ``{"path/gate_name": array}``, in a stable order."""
        return dict(self.items())

    def items(self) -> Iterator[tuple[str, Array]]:
        for path in sorted(self.gates):
            group = self.gates[path]
            for name, value in group._asdict().items():
                yield f"{path}/{name}", value

    def prefixed(self, prefix: str) -> GateTrace:
        """The same trace with ``prefix/`` put before every path (used by stacks)."""
        return GateTrace({f"{prefix}/{k}": v for k, v in self.gates.items()}, self.mask)


def merge_traces(traces: Sequence[GateTrace]) -> GateTrace:
    """Join traces of parts that share the same mask (the layers of a stack, two directions)."""
    gates: dict[str, Any] = {}
    for trace in traces:
        for path, group in trace.gates.items():
            if path in gates:
                raise ValueError(f"merge_traces: the path {path!r} appears twice.")
            gates[path] = group
    return GateTrace(gates, traces[0].mask)


# --------------------------------------------------------------------------------------------
# Overrides.

GateOverride: TypeAlias = float | Array | Callable[[Array], Array]
"""A replacement for a gate: a constant (scalar or array broadcastable to the gate) or a function
from the gate's value to its new value."""


def apply_override(gate: Array, override: GateOverride | None, name: str = "") -> Array:
    """Returns ``gate`` replaced by ``override`` (a constant or a function of the gate).

    Args:
      gate: the gate's value, ``[..., units]``.
      override: None, a constant or array that broadcasts to ``gate``'s shape, or a function
        of the gate.
      name: the gate's name, for the error when an array does not fit.
    """
    if override is None:
        return gate
    if callable(override):
        return jnp.asarray(override(gate), gate.dtype)
    value = jnp.asarray(override, gate.dtype)
    try:
        return jnp.broadcast_to(value, gate.shape)
    except ValueError:
        raise ValueError(
            f"gate_overrides[{name!r}] has shape {value.shape}, which does not broadcast to "
            f"the gate's shape {gate.shape} (batch first, units last)."
        ) from None


def apply_overrides(gates: NamedTuple, overrides: Mapping[str, GateOverride] | None) -> NamedTuple:
    """Replaces the fields of a gate NamedTuple named in ``overrides`` (already validated)."""
    if not overrides:
        return gates
    return gates._replace(
        **{k: apply_override(getattr(gates, k), v, k) for k, v in overrides.items()}
    )


def check_override_value(name: str, value: Any, where: str) -> None:
    """Raises unless ``value`` can replace a gate: a function, or a number or array of numbers
    in ``[0, 1]`` (arrays checked when their values are known, i.e. outside ``jit``; a traced
    array is checked with ``checkify`` inside a function wrapped by :func:`with_checks`)."""
    if callable(value):
        return
    label = f"gate_overrides[{name!r}] for {where}"
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real) or isinstance(value, np.ndarray | np.generic | jax.Array)
    ):
        raise TypeError(
            f"{label} must be a number in [0, 1], an array of them or a function of the gate; "
            f"got {type(value).__name__} {value!r}."
        )
    dtype = np.asarray(value).dtype if not isinstance(value, jax.core.Tracer) else value.dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"{label} must hold numbers in [0, 1]; got dtype {dtype}.")
    if isinstance(value, jax.core.Tracer):
        if _CHECKS.get():  # under jit, inside with_checks: checked when the values exist
            checkify.check(
                jnp.all(jnp.isfinite(value) & (value >= 0) & (value <= 1)),
                f"{label} must lie in [0, 1] (a gate is a sigmoid's output)",
            )
        return
    values = np.asarray(value, np.float64)
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
        shown = (
            repr(value)
            if values.ndim == 0
            else f"an array with values from {values.min()} to {values.max()}"
        )
        raise ValueError(f"{label} must lie in [0, 1] (a gate is a sigmoid's output); got {shown}.")


def check_static_flag(value: Any, name: str, where: str) -> None:
    """Raises unless ``value`` is a Python bool: the switches that change what a layer computes
    or returns are static, fixed when the function is traced, never traced arrays."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{where}: {name} must be a Python bool (a static switch, fixed at trace time); "
            f"got {type(value).__name__}. Under jax.jit, pass it as a static argument "
            "(static_argnames) or close over it."
        )


def check_gate_names(
    overrides: Mapping[str, GateOverride] | None, gate_names: Sequence[str], where: str
) -> None:
    """Raises if ``overrides`` names a gate that ``where`` does not have, or gives one a value
    that no gate can take (see :func:`check_override_value`)."""
    if overrides is None:
        return
    if not isinstance(overrides, Mapping):
        raise TypeError(
            f"gate_overrides for {where} must be a mapping from gate name to a constant or a "
            f"function; got {type(overrides).__name__}."
        )
    for name, value in overrides.items():
        if name not in gate_names:
            raise ValueError(
                f"gate_overrides for {where}: unknown gate {name!r}; this layer's gates are "
                f"{tuple(gate_names)}."
            )
        check_override_value(name, value, where)


def resolve_overrides(
    overrides: Mapping[str, Any] | None, paths: Sequence[str], gate_names: Sequence[str]
) -> dict[str, dict[str, GateOverride]]:
    """Resolves user overrides for a layer made of several parts into one dict per part.

    ``overrides`` keys are either gate names, which apply to every part, or paths (or path
    prefixes) of parts such as ``"layer1"`` or ``"layer1/backward"``, whose values are mappings
    of gate names. More specific keys win.

    Example:
      >>> from gatenets.gates import resolve_overrides
      >>> r = resolve_overrides({"forget": 1.0, "layer1": {"forget": 0.0}},
      ...                       ["layer0/forward", "layer1/forward"], ["input", "forget"])
      >>> r["layer0/forward"], r["layer1/forward"]
      ({'forget': 1.0}, {'forget': 0.0})
    """
    resolved: dict[str, dict[str, GateOverride]] = {p: {} for p in paths}
    if not overrides:
        return resolved
    if not isinstance(overrides, Mapping):
        raise TypeError(
            "gate_overrides must be a mapping such as {'forget': 1.0} or "
            f"{{'layer0': {{'forget': 1.0}}}}; got {type(overrides).__name__}."
        )
    prefixes = {"/".join(p.split("/")[:k]) for p in paths for k in range(1, p.count("/") + 2)}
    scoped: list[tuple[int, str, Mapping[str, GateOverride]]] = []
    for key, value in overrides.items():
        if key in gate_names:
            scoped.append((0, "", {key: value}))
        elif key in prefixes:
            check_gate_names(value, gate_names, key)
            scoped.append((key.count("/") + 1, key, value))
        else:
            raise ValueError(
                f"gate_overrides: unknown key {key!r}; expected a gate name {tuple(gate_names)} "
                f"or a layer path {tuple(sorted(prefixes))}."
            )
    for _, scope, gate_values in sorted(scoped, key=lambda s: s[0]):
        for path in paths:
            if not scope or path == scope or path.startswith(scope + "/"):
                resolved[path].update(gate_values)
    return resolved


# --------------------------------------------------------------------------------------------
# Masks.


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar("gatenets_checks", default=False)


def with_checks(fn: Callable) -> Callable:
    """``fn`` with gatenets' value checks on for values known only at run time.

    Outside ``jax.jit`` every argument is checked when a layer is called. Under ``jit`` the
    values of ``seq_lengths`` are not known at trace time; by default a length above ``time``
    counts as ``time`` and a negative one as 0 (the mask is ``arange(time) < length``), and
    a traced array in ``gate_overrides`` is used as it is. Inside a function wrapped by
    ``with_checks`` and then by ``jax.experimental.checkify.checkify``, such a length, or an
    override outside ``[0, 1]``, is an error instead, raised by ``err.throw()``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.experimental import checkify
      >>> from flax import nnx
      >>> import gatenets
      >>> layer = gatenets.GRU(2, 3, rngs=nnx.Rngs(0))
      >>> run = jax.jit(checkify.checkify(gatenets.with_checks(
      ...     lambda x, lengths: layer(x, seq_lengths=lengths))))
      >>> err, y = run(jnp.ones((2, 4, 2)), jnp.array([4, 9]))
      >>> err.get()
      'seq_lengths must lie in [0, time] = [0, 4] (`check` failed)'
    """

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        token = _CHECKS.set(True)
        try:
            return fn(*args, **kwargs)
        finally:
            _CHECKS.reset(token)

    return checked


def sequence_mask(
    batch: int,
    time: int,
    *,
    seq_lengths: Array | None = None,
    mask: Array | None = None,
) -> Array | None:
    """Validates ``seq_lengths`` or ``mask`` and returns the ``[batch, time]`` mask (or None).

    Args:
      batch: number of sequences.
      time: number of steps.
      seq_lengths: ``[batch]`` integers in ``[0, time]``: sequences are right-padded. Checked
        when concrete; traced values outside the range count as ``time`` or 0 unless checked
        with :func:`with_checks`.
      mask: ``[batch, time]`` booleans, True at valid steps (any pattern).

    Returns:
      ``[batch, time]`` booleans, or None when neither was given (every step valid).

    Example:
      >>> import jax.numpy as jnp
      >>> from gatenets.gates import sequence_mask
      >>> sequence_mask(2, 3, seq_lengths=jnp.array([1, 3])).astype(int).tolist()
      [[1, 0, 0], [1, 1, 1]]
    """
    if seq_lengths is not None and mask is not None:
        raise ValueError("Pass either seq_lengths or mask, not both.")
    if seq_lengths is not None:
        seq_lengths = jnp.asarray(seq_lengths)
        if seq_lengths.shape != (batch,):
            raise ValueError(
                f"seq_lengths must have shape [batch] = ({batch},); got {seq_lengths.shape}."
            )
        if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
            raise TypeError(f"seq_lengths must hold integers; got dtype {seq_lengths.dtype}.")
        if _is_concrete(seq_lengths):
            values = np.asarray(seq_lengths)
            if values.size and (values.min() < 0 or values.max() > time):
                raise ValueError(
                    f"seq_lengths must lie in [0, time] = [0, {time}]; got values from "
                    f"{values.min()} to {values.max()}."
                )
        elif _CHECKS.get():
            checkify.check(
                jnp.all((seq_lengths >= 0) & (seq_lengths <= time)),
                f"seq_lengths must lie in [0, time] = [0, {time}]",
            )
        return jnp.arange(time)[None, :] < seq_lengths[:, None]
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != (batch, time):
            raise ValueError(
                f"mask must have shape [batch, time] = ({batch}, {time}); got {mask.shape}."
            )
        if mask.dtype != jnp.bool_:
            raise TypeError(
                f"mask must be boolean (True at valid steps); got dtype {mask.dtype}. "
                "Convert it explicitly, e.g. mask.astype(bool)."
            )
        return mask
    return None


def hold_invalid(valid: Array | None, new: Any, old: Any) -> Any:
    """The masking rule of every recurrent loop: ``new`` where the step is valid, else ``old``.

    Args:
      valid: ``[batch]`` booleans for one step (or ``[time, batch]`` for a whole sequence), or
        None when every step is valid.
      new: the value after the step (an array or a tree of arrays, batch on the first axis of
        ``valid``'s rank).
      old: the value before it, same structure.

    Returns:
      ``new`` at valid steps and ``old`` at invalid ones: a carry is held through padding.
    """
    if valid is None:
        return new

    def where(n, o):
        keep = valid.reshape(valid.shape + (1,) * (jnp.ndim(n) - valid.ndim))
        return jnp.where(keep, n, o)

    return jax.tree_util.tree_map(where, new, old)


def zero_invalid(valid: Array | None, outputs: Array) -> Array:
    """``outputs`` with every invalid step set to zero (the output side of the masking rule).

    Args:
      valid: ``[time, batch]`` (or ``[batch]``) booleans, or None.
      outputs: ``[time, batch, features]`` (or ``[batch, features]``).
    """
    if valid is None:
        return outputs
    return hold_invalid(valid, outputs, jnp.zeros((), outputs.dtype))


def check_switches(layer: Any, **switches: Any) -> None:
    """Raises unless every switch is a Python bool (they decide what a call returns)."""
    for name, value in switches.items():
        check_static_flag(value, name, type(layer).__name__)
