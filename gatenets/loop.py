"""How a sequence is run: the one loop table, and the measured choice that sits on it.

Every recurrent layer takes ``loop=``. Every loop is one row of :func:`loop_table`: which
families it has a kernel for, whether this machine can run it (backend, build), why it cannot
compute a given request, and how it is called. ``"auto"`` takes, among the rows that compute a
request exactly, the one that was **measured** fastest for that request on this machine —
timed once per device model, layer configuration, shapes, dtype and forward-only or
differentiated, cached on disk, never changed within a process — or, with measuring switched
off (:func:`set_loop_tuning`, ``GATENETS_LOOP_TUNING=0``), the first in the backend's static
order (:data:`STATIC_ORDER`). Naming a loop forces it, and a loop that cannot compute the
request raises, saying why. Every loop is tested equal to ``"scan"``, the generic reference
(``tests/test_conformance.py``).

Adding a loop is one kernel file and one row in :func:`loop_table` (plus its place in
:data:`STATIC_ORDER`); nothing else decides which loop runs.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger("gatenets.loop")


class Loop(str, enum.Enum):
    """The ways a gatenets layer can run over a sequence.

    Attributes:
      AUTO: the fastest loop that computes the request exactly, measured on this machine (the
        default; see :func:`set_loop_tuning`).
      SCAN: ``jax.lax.scan`` over the cell's step, differentiated by autodiff: every cell,
        every option (functions as gate overrides, peepholes, projections, any ``gate_fn``).
        The reference every other loop is tested equal to.
      FUSED: a custom-VJP sequence kernel with a hand-written backward pass (LSTM, GRU): the
        weight gradients are one large matmul after the loop instead of one per step.
      NATIVE: the same kernel as one C++ call through ``jax.ffi`` on CPU — the time loop, the
        gate math and BLAS matmuls outside XLA's op-by-op execution
        (:mod:`gatenets.kernels.native`; compiled on first use, float32/float64).
      LINEAR_SCAN: for the diagonal cells whose gates read only the input (minGRU, minLSTM,
        RG-LRU): every step's coefficients at once, then one multiply-add per step.
      ASSOCIATIVE: the same coefficients, then a log-space associative (parallel prefix)
        scan, :math:`O(\\log T)` depth.
      CUDNN: a whole LSTM stack as one cuDNN call on an NVIDIA GPU (``gatenets.LSTM`` only;
        float32, no gates returned, no overrides, ``seq_lengths`` padding, dropout inactive).

    Example:
      >>> import gatenets
      >>> gatenets.Loop("fused") is gatenets.Loop.FUSED
      True
    """

    AUTO = "auto"
    SCAN = "scan"
    FUSED = "fused"
    NATIVE = "native"
    LINEAR_SCAN = "linear_scan"
    ASSOCIATIVE = "associative"
    CUDNN = "cudnn"

    def __str__(self) -> str:
        return self.value


def as_loop(value: Any, name: str = "loop") -> Loop:
    """``value`` as a :class:`Loop` (a member or its name), or a ValueError naming ``name``."""
    try:
        return Loop(value)
    except ValueError:
        raise ValueError(
            f"{name} must be one of {tuple(m.value for m in Loop)}; got {value!r}."
        ) from None


class LoopRequest(NamedTuple):
    """What one call asks of a loop, beyond the cell and the arrays.

    Attributes:
      projected: whether the inputs already went through the cell's input projection.
      reverse: run from the last step to the first.
      return_gates: also return the gates.
      gate_overrides: validated ``{gate: constant, array or function}``, or None.
      recurrent_mask: ``[batch, output_features]`` dropout multiplier of :math:`h_{t-1}`, or None.
      unroll: steps per loop iteration.
      padding: ``"lengths"`` (right padding by ``seq_lengths``), ``"mask"`` (any mask) or
        None (no padding).
    """

    projected: bool = True
    reverse: bool = False
    return_gates: bool = False
    gate_overrides: Mapping[str, Any] | None = None
    recurrent_mask: Any = None
    unroll: int = 1
    padding: str | None = None


class LoopRow(NamedTuple):
    """One loop of the table.

    Attributes:
      loop: its name.
      kernels: ``{family: backend function}`` for the cell families the loop has a kernel for,
        or None when it runs every cell (the generic scan).
      run: ``run(cell, kernel, carry, xs, valid, request) -> (carry, outputs, gates)``: how a
        cell runs the kernel (the contract of :meth:`gatenets.GatedCell.scan`); for a loop of
        :data:`STACK_LOOPS`, ``run(stack, kernel, x, carries, lengths)`` (see
        :func:`gatenets.kernels.cudnn.run_stack`).
      why_not: ``why_not(cell, request) -> str | None``: why the loop cannot compute this
        request exactly for this cell, beyond the family (None when it can).
      available: ``available() -> str | None``: why this machine cannot run it (backend,
        build), or None.
    """

    loop: Loop
    kernels: Mapping[str, Callable[..., Any]] | None
    run: Callable[..., Any]
    why_not: Callable[[Any, LoopRequest], str | None]
    available: Callable[[], str | None]


def _always(*_: Any) -> None:
    return None


def _native_available() -> str | None:
    from gatenets.kernels import native

    if jax.default_backend() != "cpu":
        return f"it runs on CPU; the backend is {jax.default_backend()}"
    if not native.available():
        return f"the native kernels are not available here: {native.unavailable_reason}"
    return None


def _cudnn_available() -> str | None:
    from gatenets.kernels import cudnn

    return None if cudnn.available() else "it needs a CUDA GPU with JAX's cuDNN RNN"


def _kernel_why_not(cell: Any, request: LoopRequest) -> str | None:
    """What the fused kernels (JAX and native) cannot compute."""
    from gatenets.kernels._common import constant_overrides

    reason = cell.kernel_unsupported()
    if reason is None and constant_overrides(request.gate_overrides, cell.gate_names) is None:
        reason = (
            "the fused kernel takes gate_overrides only as scalar constants; got "
            f"{dict(request.gate_overrides)!r} (functions and arrays run on loop='scan')"
        )
    return reason


def _native_why_not(cell: Any, request: LoopRequest) -> str | None:
    reason = _kernel_why_not(cell, request)
    dtype = jnp.dtype(cell.compute_dtype)
    if reason is None and dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        reason = f"the native kernels compute in float32 or float64; got dtype {dtype}"
    if reason is None and getattr(cell, "remat", False):
        reason = "the native kernels do not rematerialise (remat=True runs loop='fused')"
    return reason


def _scan_why_not(cell: Any, request: LoopRequest) -> str | None:
    from gatenets.kernels.sequence_parallel import active_sequence_sharding

    if active_sequence_sharding() is not None and getattr(cell, "family", None) in DIAGONAL:
        return (
            "inside sequence_parallel the diagonal cells split their recurrence over time with "
            "loop='linear_scan' or 'associative'"
        )
    return None


def _run_cell_kernel(cell, kernel, carry, xs, valid, request):
    return cell.run_kernel(kernel, carry, xs, valid, request)


DIAGONAL = ("mingru", "minlstm", "rglru")
"""The families whose recurrence is diagonal and linear (the linear-recurrence solvers')."""


@functools.cache
def loop_table() -> dict[Loop, LoopRow]:
    """Every loop, one row each (see :class:`LoopRow`); the cuDNN row runs whole stacks.

    Example:
      >>> from gatenets.loop import Loop, loop_table
      >>> sorted(loop_table()[Loop.FUSED].kernels)
      ['gru', 'lstm']
    """
    from gatenets.cells.base import scan_steps
    from gatenets.kernels import cudnn, gru, lstm, native, parallel_scan

    diagonal = DIAGONAL
    rows = (
        LoopRow(Loop.SCAN, None, lambda c, k, *a: scan_steps(c, *a), _scan_why_not, _always),
        LoopRow(
            Loop.FUSED,
            {"lstm": lstm.lstm_sequence, "gru": gru.gru_sequence},
            _run_cell_kernel,
            _kernel_why_not,
            _always,
        ),
        LoopRow(
            Loop.NATIVE,
            {"lstm": native.lstm_sequence_native, "gru": native.gru_sequence_native},
            _run_cell_kernel,
            _native_why_not,
            _native_available,
        ),
        LoopRow(
            Loop.LINEAR_SCAN,
            dict.fromkeys(diagonal, parallel_scan.sequential_recurrence),
            _run_cell_kernel,
            _always,
            _always,
        ),
        LoopRow(
            Loop.ASSOCIATIVE,
            dict.fromkeys(diagonal, parallel_scan.associative_recurrence),
            _run_cell_kernel,
            _always,
            _always,
        ),
        LoopRow(
            Loop.CUDNN, {"lstm": cudnn.lstm_stack}, cudnn.run_stack, cudnn.why_not, _cudnn_available
        ),
    )
    return {row.loop: row for row in rows}


STATIC_ORDER: dict[str, tuple[Loop, ...]] = {
    # Measured on 2-core Intel Xeon and AMD EPYC machines (README, "Speed"): which of the
    # native and fused kernels wins depends on the processor and the shape, which is why
    # "auto" measures; this order serves when measuring is off.
    "cpu": (Loop.NATIVE, Loop.FUSED, Loop.LINEAR_SCAN, Loop.ASSOCIATIVE, Loop.SCAN),
    # On an NVIDIA H200 the fused kernel beat cuDNN at every measured point.
    "gpu": (Loop.FUSED, Loop.ASSOCIATIVE, Loop.LINEAR_SCAN, Loop.CUDNN, Loop.SCAN),
    "default": (Loop.FUSED, Loop.ASSOCIATIVE, Loop.LINEAR_SCAN, Loop.SCAN),
}
"""Per backend, the order ``"auto"`` takes loops in when measuring is off."""

STACK_LOOPS = (Loop.CUDNN,)
"""Loops that run a whole stack at once rather than one cell's pass."""


def static_order(backend: str | None = None) -> tuple[Loop, ...]:
    """The loops in the order ``"auto"`` tries them on ``backend`` (the default one if None)
    when measuring is off."""
    backend = backend or jax.default_backend()
    return STATIC_ORDER.get(backend, STATIC_ORDER["default"])


def why_not(loop: Loop | str, cell: Any, request: LoopRequest = LoopRequest()) -> str | None:
    """Why ``loop`` cannot compute ``request`` exactly for ``cell`` here, or None if it can.

    Example:
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.loop import why_not
      >>> cell = gatenets.LSTMCell(2, 3, peephole=True, rngs=nnx.Rngs(0))
      >>> why_not("fused", cell)[:54]
      'the fused LSTM kernel supports neither peephole nor pr'
      >>> why_not("scan", cell) is None
      True
    """
    row = loop_table()[as_loop(loop)]
    family = getattr(cell, "family", None)
    if row.kernels is not None and family not in row.kernels:
        names = ", ".join(sorted(row.kernels))
        return f"it has kernels for the families {names}; got {family!r}"
    return row.available() or row.why_not(cell, request)


def family_loops(family: str) -> tuple[Loop, ...]:
    """Every loop of the table that runs ``family``'s cells (stack loops included), in table
    order; ``Loop.SCAN`` always.

    Example:
      >>> from gatenets.loop import family_loops
      >>> [str(m) for m in family_loops("mingru")]
      ['scan', 'linear_scan', 'associative']
    """
    return tuple(
        row.loop for row in loop_table().values() if row.kernels is None or family in row.kernels
    )


def resolve_candidates(cell: Any, request: LoopRequest = LoopRequest()) -> tuple[Loop, ...]:
    """The loops that compute ``request`` exactly for ``cell`` here, in the static order:
    what ``"auto"`` measures."""
    return tuple(
        loop
        for loop in static_order()
        if loop not in STACK_LOOPS and why_not(loop, cell, request) is None
    )


def resolve(cell: Any, loop: Loop | str, request: LoopRequest = LoopRequest()) -> Loop:
    """The loop ``loop`` names for one pass of ``cell``, without measuring: a named loop if it
    computes the request (else a ValueError saying why), or for ``"auto"`` the first of
    :func:`static_order` that does."""
    loop = as_loop(loop)
    if loop is Loop.AUTO:
        return resolve_candidates(cell, request)[0]
    if loop in STACK_LOOPS:
        raise ValueError(
            f"loop={str(loop)!r} runs whole stacks ({type(cell).__name__} is one pass); use it "
            "on a stacked layer such as gatenets.LSTM."
        )
    reason = why_not(loop, cell, request)
    if reason is not None:
        raise ValueError(f"loop={str(loop)!r} does not apply: {reason}. Use loop='auto'.")
    return loop


def choose(cell: Any, loop: Loop | str, carry: Any, xs: Any, valid: Any, request: LoopRequest):
    """The loop one pass of ``cell`` runs: :func:`resolve` for a named loop; for ``"auto"``
    the measured fastest of the loops that compute the request (see the module docstring)."""
    loop = as_loop(loop)
    if loop is not Loop.AUTO:
        return resolve(cell, loop, request)
    candidates = resolve_candidates(cell, request)
    if len(candidates) == 1 or not loop_tuning_enabled():
        return candidates[0]
    differentiated = _differentiated(_state_of(cell), carry, xs)
    key = _key(
        "cell",
        cell,
        request,
        _avals((carry, xs, valid, request.recurrent_mask)),
        differentiated,
        candidates,
    )

    def timers() -> dict[Loop, Callable[[], Any]]:
        return _cell_timers(cell, candidates, carry, xs, valid, request, differentiated)

    return _measured(key, candidates, timers, _MODES[differentiated])


def run(cell: Any, loop: Loop, carry: Any, xs: Any, valid: Any, request: LoopRequest):
    """Runs one pass of ``cell`` with the resolved ``loop``: ``(carry, outputs, gates)``."""
    _record(cell, loop)
    row = loop_table()[loop]
    kernel = None if row.kernels is None else row.kernels[cell.family]
    with jax.named_scope(f"{type(cell).__name__}.{loop}"):
        return row.run(cell, kernel, carry, xs, valid, request)


def choose_stack(
    stack: Any, loop: Loop, request: LoopRequest, inputs: Any, timers: Callable
) -> Loop:
    """Whether ``stack`` runs as one stack-level call (a loop of :data:`STACK_LOOPS`) or layer
    by layer (``Loop.AUTO`` then, each layer choosing its own loop): a named stack loop if it
    applies (else a ValueError saying why); for ``"auto"``, measured like :func:`choose` where
    both can run.

    ``timers(candidates)`` returns ``{loop: zero-argument timed function}`` for the stack.
    """
    if loop in STACK_LOOPS:
        reason = why_not(loop, stack, request)
        if reason is not None:
            raise ValueError(f"loop={str(loop)!r} does not apply: {reason}. Use loop='auto'.")
        return loop
    if loop is not Loop.AUTO:
        return Loop.AUTO
    order = static_order()
    stack_loops = [m for m in STACK_LOOPS if m in order and why_not(m, stack, request) is None]
    if not stack_loops:
        return Loop.AUTO
    # Layer by layer sits where the backend's first cell loop sits in the static order.
    first_cell_loop = min(order.index(m) for m in order if m not in STACK_LOOPS)
    candidates = tuple(
        sorted(
            [*stack_loops, Loop.AUTO],
            key=lambda m: order.index(m) if m in order else first_cell_loop,
        )
    )
    if not loop_tuning_enabled():
        return candidates[0]
    differentiated = _differentiated(_state_of(stack), inputs)
    key = _key("stack", stack, request, _avals(inputs), differentiated, candidates)
    return _measured(
        key, candidates, lambda: timers(candidates, differentiated), _MODES[differentiated]
    )


def run_stack(stack: Any, loop: Loop, x: Any, carries: list[Any], lengths: Any):
    """Runs ``stack`` as one call of the stack loop ``loop`` (see :data:`STACK_LOOPS`)."""
    _record(stack, loop)
    row = loop_table()[loop]
    with jax.named_scope(f"{type(stack).__name__}.{loop}"):
        return row.run(stack, row.kernels[stack.family], x, carries, lengths)


_RECORDERS: list[list[tuple[str, Loop]]] = []


def _record(module: Any, loop: Loop) -> None:
    for recorder in _RECORDERS:
        recorder.append((type(module).__name__, loop))


@contextlib.contextmanager
def recorded_loops() -> Iterator[list[tuple[str, Loop]]]:
    """Collects ``(layer or cell class name, loop)`` for every pass traced inside the block.

    Example:
      >>> import jax.numpy as jnp, gatenets
      >>> from flax import nnx
      >>> with gatenets.loop.recorded_loops() as loops:
      ...     _ = gatenets.GRU(2, 3, loop="scan", rngs=nnx.Rngs(0))(jnp.ones((1, 4, 2)))
      >>> [(name, str(loop)) for name, loop in loops]
      [('GRUCell', 'scan')]
    """
    recorder: list[tuple[str, Loop]] = []
    _RECORDERS.append(recorder)
    try:
        yield recorder
    finally:
        _RECORDERS.remove(recorder)


def tune_loops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[tuple[str, Loop]]:
    """Fills the loop-choice cache for ``fn(*args, **kwargs)`` ahead of time: traces it under
    ``jax.jit`` with measuring on (nothing runs but the measurements) and returns the loop
    every pass chose, as :func:`recorded_loops`. A later process that runs the same shapes
    finds the choices on disk.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> layer = gatenets.MGU(2, 3, rngs=nnx.Rngs(0))
      >>> [(name, str(loop)) for name, loop in gatenets.tune_loops(layer, jnp.ones((1, 4, 2)))]
      [('MGUCell', 'scan')]
    """
    with loop_tuning(True), recorded_loops() as loops:
        jax.jit(lambda a, k: fn(*a, **k)).lower(args, kwargs)
    return loops


# --- measuring -------------------------------------------------------------------------------

_TUNING = {"enabled": None}
_MODES = {True: "train", False: "forward", None: "any"}
_MEMO: dict[str, Loop] = {}
_LOCK = threading.RLock()
TUNING_STEPS = 32
"""Sequences are timed over at most this many steps: the loops differ per step."""
TUNING_BUDGET_S = 1.0
"""Time for the timed rounds of a new request, compiling and one warm call of each candidate
aside: as many rounds as fit (at least one, at most seven)."""


def loop_tuning_enabled() -> bool:
    """Whether ``"auto"`` measures: :func:`set_loop_tuning`, else ``GATENETS_LOOP_TUNING``
    (``0``/``off``/``false`` switch it off), else on."""
    if _TUNING["enabled"] is not None:
        return _TUNING["enabled"]
    value = os.environ.get("GATENETS_LOOP_TUNING", "1").strip().lower()
    if value in ("0", "off", "false", "no"):
        return False
    if value not in ("1", "on", "true", "yes", ""):
        raise ValueError(f"GATENETS_LOOP_TUNING must be 1/on/true or 0/off/false; got {value!r}.")
    return True


def set_loop_tuning(enabled: bool | None) -> None:
    """Switches the measured loop choice on or off for this process (None: back to the
    ``GATENETS_LOOP_TUNING`` environment variable). Choices already made stay.

    Example:
      >>> import gatenets
      >>> gatenets.set_loop_tuning(False)  # "auto" takes the static order
      >>> gatenets.set_loop_tuning(None)
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool or None; got {enabled!r}.")
    _TUNING["enabled"] = enabled


@contextlib.contextmanager
def loop_tuning(enabled: bool) -> Iterator[None]:
    """:func:`set_loop_tuning` for a ``with`` block."""
    previous = _TUNING["enabled"]
    set_loop_tuning(enabled)
    try:
        yield
    finally:
        _TUNING["enabled"] = previous


def cache_path() -> Path:
    """Where measured choices are kept: ``$GATENETS_CACHE_DIR/loops.json``, else
    ``$XDG_CACHE_HOME/gatenets/loops.json`` (``~/.cache`` by default)."""
    if os.environ.get("GATENETS_CACHE_DIR"):
        return Path(os.environ["GATENETS_CACHE_DIR"]) / "loops.json"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gatenets" / "loops.json"


@functools.cache
def device_name() -> str:
    """The device model choices are measured on: the CPU model, or the accelerator's kind."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{device.platform}:{device.device_kind}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu:{model}:{os.cpu_count()} cores"


def _versions() -> str:
    from importlib import metadata

    try:
        own = metadata.version("gatenets")
    except metadata.PackageNotFoundError:
        own = "0"
    return f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, gatenets {own}"


def _state_of(module: Any) -> Any:
    from flax import nnx

    return nnx.state(module)


def _avals(tree: Any) -> tuple:
    return tuple(
        (tuple(np.shape(leaf)), str(jnp.result_type(leaf))) for leaf in jax.tree.leaves(tree)
    )


def _differentiated(*trees: Any) -> bool:
    """Whether a tracer of reverse- or forward-mode autodiff is among the leaves (the call is
    being differentiated, as far as can be known while tracing)."""
    for leaf in jax.tree.leaves(trees):
        value = leaf
        while isinstance(value, jax.core.Tracer):
            name = type(value).__name__
            if "JVP" in name or "Linearize" in name:
                return True
            value = getattr(value, "primal", None)
    return False


def _configuration(module: Any) -> str:
    """The static configuration of a layer or cell: its class and plain attributes."""
    from flax import nnx

    parts = []
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Module):
            attrs = {
                k: v
                for k, v in sorted(vars(node).items())
                if isinstance(v, int | float | str | bool | type(None)) and not k.startswith("_")
            }
            parts.append(f"{'/'.join(map(str, path))}:{type(node).__name__}{attrs}")
    return ";".join(parts)


def _key(kind, module, request, avals, differentiated, candidates) -> str:
    overrides = {k: repr(v) for k, v in sorted((request.gate_overrides or {}).items())}
    text = json.dumps(
        [
            kind,
            device_name(),
            _versions(),
            _configuration(module),
            avals,
            [request.projected, request.reverse, request.return_gates, overrides, request.unroll],
            _MODES[differentiated],
            [str(c) for c in candidates],
        ],
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_cache() -> dict[str, Any]:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        warnings.warn(
            f"the loop-choice cache {path} cannot be read ({err}); measuring again.",
            RuntimeWarning,
            stacklevel=3,
        )
        return {}
    choices = data.get("choices") if isinstance(data, dict) else None
    return choices if isinstance(choices, dict) else {}


def _write_cache(key: str, entry: dict[str, Any]) -> None:
    from gatenets._files import atomic_write

    path = cache_path()
    choices = _read_cache()
    choices[key] = entry
    text = json.dumps({"version": 1, "choices": choices}, indent=1, sort_keys=True)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text), ".json.tmp")
    except OSError as err:
        warnings.warn(
            f"the loop-choice cache {path} cannot be written ({err}); the choice holds for "
            "this process only.",
            RuntimeWarning,
            stacklevel=3,
        )


def _measured(key: str, candidates: tuple[Loop, ...], timers: Callable, mode: str) -> Loop:
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        cached = _read_cache().get(key)
        if isinstance(cached, dict) and cached.get("loop") in [str(c) for c in candidates]:
            choice = Loop(cached["loop"])
        else:
            choice, entry = _measure(candidates, timers, mode)
            _write_cache(key, entry)
        if jax.process_count() > 1:
            # Every process traces the same program, so each reaches this point for the same
            # keys in the same order; caches may differ between hosts, process 0's choice wins.
            choice = _from_process_zero(key, choice, candidates)
        _MEMO[key] = choice
        return choice


def _from_process_zero(key: str, choice: Loop, candidates: tuple[Loop, ...]) -> Loop:
    """Process 0's choice on every process (they must all compile the same program), passed
    through ``jax.distributed``'s key-value store: it needs no computation, so it works while
    a function is being traced."""
    from jax._src import distributed

    client = distributed.global_state.client
    name = f"gatenets/loop/{key}"
    if jax.process_index() == 0:
        client.key_value_set(name, str(choice))
        return choice
    # Process 0 may still be measuring; it takes seconds, never this long.
    chosen = Loop(client.blocking_key_value_get(name, 600_000))
    return chosen if chosen in candidates else choice


def _measure(
    candidates: tuple[Loop, ...], timers: Callable, mode: str
) -> tuple[Loop, dict[str, Any]]:
    """Interleaved rounds of every candidate: the one with the lowest median wins."""
    start = time.perf_counter()
    recorders = _RECORDERS[:]
    _RECORDERS.clear()  # the candidates' own traces are not what the call chose
    try:
        medians, rounds = _time_rounds(timers)
    finally:
        _RECORDERS.extend(recorders)
    choice = min(medians, key=medians.get)
    total = time.perf_counter() - start
    times = ", ".join(f"{loop} {1e3 * t:.3g} ms" for loop, t in medians.items())
    logger.info(
        "loop='auto' measured %s (%s) in %.1f s (%d rounds): %s -> %s",
        device_name(),
        mode,
        total,
        rounds,
        times,
        choice,
    )
    entry = {
        "loop": str(choice),
        "mode": mode,
        "median_ms": {str(k): 1e3 * v for k, v in medians.items()},
        "device": device_name(),
        "versions": _versions(),
        "measured_s": round(total, 3),
    }
    return choice, entry


def _time_rounds(timers: Callable) -> tuple[dict[Loop, float], int]:
    """Compiles every candidate and times one warm call of each, then times interleaved
    rounds — as many as :data:`TUNING_BUDGET_S` allows at the warm calls' pace, at least one,
    at most seven: the median of each."""
    with jax.ensure_compile_time_eval():
        fns = timers()
        warm = {}
        for loop, fn in fns.items():
            jax.block_until_ready(fn())  # compile
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            warm[loop] = time.perf_counter() - t0
        rounds = int(min(7, max(1, TUNING_BUDGET_S // max(sum(warm.values()), 1e-9))))
        samples: dict[Loop, list[float]] = {loop: [] for loop in fns}
        for round_ in range(rounds):
            order = list(fns)[round_ % len(fns) :] + list(fns)[: round_ % len(fns)]
            for loop in order:
                t0 = time.perf_counter()
                jax.block_until_ready(fns[loop]())
                samples[loop].append(time.perf_counter() - t0)
    medians = {loop: statistics.median(ts) for loop, ts in samples.items()}
    return medians, rounds


def concrete_like(tree: Any, seed: int = 0) -> Any:
    """Random concrete arrays of the shapes and dtypes of ``tree``'s leaves (tracers too);
    random keys (a dropout stream's) become fresh keys of the same implementation."""
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    out = []
    for leaf in leaves:
        dtype = jnp.result_type(leaf) if not _is_key(leaf) else None
        shape = np.shape(leaf)
        if dtype is None:
            keys = jax.random.split(
                jax.random.key(seed, impl=jax.random.key_impl(leaf)), max(1, int(np.prod(shape)))
            )
            out.append(keys.reshape(shape))
            continue
        if jnp.issubdtype(dtype, jnp.floating):
            value = (0.5 * rng.standard_normal(shape)).astype(np.float32)
        elif dtype == jnp.bool_:
            value = np.ones(shape, bool)
        else:
            value = np.zeros(shape, np.int32)
        out.append(jnp.asarray(value, dtype))
    return jax.tree.unflatten(treedef, out)


def _is_key(leaf: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _shorten(xs: Any, valid: Any) -> tuple[Any, Any]:
    steps = np.shape(xs)[0]
    if steps <= TUNING_STEPS:
        return xs, valid
    return xs[:TUNING_STEPS], None if valid is None else valid[:TUNING_STEPS]


def _cell_timers(cell, candidates, carry, xs, valid, request, differentiated):
    """``{loop: timed function}``: one pass of a copy of ``cell`` with random parameters and
    inputs of the call's shapes, forward or forward and backward (the gradient of the
    parameters, the initial carry and the inputs)."""
    from flax import nnx

    graphdef, params, rest = nnx.split(cell, nnx.Param, ...)
    params, rest = concrete_like(params), concrete_like(rest)
    carry, xs, valid, mask = concrete_like((carry, xs, valid, request.recurrent_mask), seed=1)
    xs, valid = _shorten(xs, valid)
    request = request._replace(recurrent_mask=mask)

    def timer(loop: Loop) -> Callable[[], Any]:
        def forward(params, carry, xs):
            clone = nnx.merge(graphdef, params, rest)
            return run(clone, loop, carry, xs, valid, request)

        def loss(params, carry, xs):
            final, ys, gates = forward(params, carry, xs)
            total = jnp.sum(ys.astype(jnp.float32))
            for leaf in jax.tree.leaves((final, gates)):
                total = total + jnp.sum(leaf.astype(jnp.float32))
            return total

        fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)) if differentiated else forward)
        return functools.partial(fn, params, carry, xs)

    return {loop: timer(loop) for loop in candidates}
