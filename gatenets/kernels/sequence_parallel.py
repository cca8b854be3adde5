r"""Sequence parallelism for the diagonal linear recurrences: the time axis split over devices.

A recurrence :math:`h_t = e^{\ell_t} h_{t-1} + b_t` over :math:`T` steps is cut into :math:`n`
chunks of :math:`T / n` steps, one per device of a mesh axis. Within ``shard_map``:

1. each device scans its chunk from a zero state, giving states :math:`\hat h_t`, and the
   chunk's summary: its summed decay log :math:`L_k = \sum_{t \in k} \ell_t` and its last state
   :math:`B_k = \hat h_{\text{last}}`;
2. the :math:`n` summaries are all-gathered (one ``[batch, hidden]`` state and one decay per
   device) and combined with the same associative rule as the steps,
   :math:`S_k = e^{L_k} S_{k-1} + B_k` from :math:`S_{-1} = h_0`, so every device knows the
   state :math:`S_{k-1}` entering its chunk;
3. a correction pass fixes every step of the chunk at once,
   :math:`h_t = \hat h_t + e^{\sum_{s \le t,\, s \in k} \ell_s} S_{k-1}`.

Only the recurrence is exact this way: it is linear in :math:`h`, so a chunk's effect on its
successors is the pair :math:`(L_k, B_k)`. An LSTM or GRU gate reads :math:`h_{t-1}` through a
nonlinearity, no such summary exists, and their time axis cannot be split.

The cost per device is the local scan, a cumulative sum and one multiply-add per step (about
twice the work of the unsplit scan, over :math:`T / n` steps) plus one all-gather of :math:`n`
states. It pays when sequences are long enough that a chunk of activations per device is what
fits in memory, or when the time loop dominates and devices are otherwise idle.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gatenets._typing import Array
from gatenets.gates import hold_invalid
from gatenets.kernels.parallel_scan import linear_recurrence, sequential_recurrence, solver
from gatenets.loop import Loop


class SequenceSharding(NamedTuple):
    """Where a sequence's time axis is split: the mesh and the name of its axis for time.

    Attributes:
      mesh: the device mesh.
      axis_name: the mesh axis the time axis is split over.
      batch_axis: a mesh axis the batch is split over as well (data and sequence parallelism
        together), or None.
    """

    mesh: Mesh
    axis_name: str
    batch_axis: str | None = None


_ACTIVE = threading.local()


@contextlib.contextmanager
def sequence_parallel(
    mesh: Mesh, axis_name: str, *, batch_axis: str | None = None
) -> Iterator[SequenceSharding]:
    """Runs the recurrence of every diagonal cell (minGRU, minLSTM, RG-LRU) traced inside the
    block with its time axis split over ``mesh``'s axis ``axis_name``.

    The choice is read when a layer is traced. The block also makes ``mesh`` JAX's current mesh
    (``jax.set_mesh``), which is part of every jit's cache key, so a jitted function compiled
    outside the block is traced again inside it; like ``jax.set_mesh``, enter it outside
    ``jax.jit``. Two blocks over the same mesh naming different axes share compiled functions:
    use one function per choice. Other cells are unaffected.

    Args:
      mesh: the device mesh.
      axis_name: the mesh axis the time axis is split over; the sequence length must be a
        multiple of its size.
      batch_axis: a mesh axis the batch is split over too, or None.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatenets
      >>> from gatenets.kernels.sequence_parallel import sequence_parallel
      >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("time",))
      >>> rnn = gatenets.RNN(gatenets.MinGRUCell(2, 3, rngs=nnx.Rngs(0)))
      >>> x = jnp.ones((1, 4, 2))
      >>> with sequence_parallel(mesh, "time"):
      ...     y = rnn(x)
      >>> bool(jnp.allclose(y, rnn(x), atol=1e-6))
      True
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    for name, axis in (("axis_name", axis_name), ("batch_axis", batch_axis)):
        if axis is not None and axis not in mesh.axis_names:
            raise ValueError(
                f"{name} must be one of the mesh axes {mesh.axis_names}; got {axis!r}."
            )
    if batch_axis == axis_name:
        raise ValueError(f"batch_axis must differ from axis_name; both are {axis_name!r}.")
    _check_auto(mesh, axis_name, batch_axis)
    previous = getattr(_ACTIVE, "sharding", None)
    _ACTIVE.sharding = SequenceSharding(mesh, axis_name, batch_axis)
    try:
        with jax.set_mesh(mesh):
            yield _ACTIVE.sharding
    finally:
        _ACTIVE.sharding = previous


def _check_auto(mesh: Mesh, *axes: str | None) -> None:
    """Raises unless the named axes of ``mesh`` are Auto: under Explicit axes (the default of
    ``jax.make_mesh``) the layer around the split recurrence would have to be explicit too."""
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    for axis in axes:
        if axis is not None and types[axis] != AxisType.Auto:
            raise ValueError(
                f"mesh axis {axis!r} must be of type Auto for sequence parallelism; got "
                f"{types[axis]}. Make the mesh with jax.sharding.Mesh(devices, names) or "
                "jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * rank)."
            )


def active_sequence_sharding() -> SequenceSharding | None:
    """The :class:`SequenceSharding` of the innermost :func:`sequence_parallel` block, or None."""
    return getattr(_ACTIVE, "sharding", None)


def sharded_linear_recurrence(
    log_a: Array,
    b: Array,
    h0: Array,
    *,
    mesh: Mesh,
    axis_name: str,
    batch_axis: str | None = None,
    valid: Array | None = None,
    reverse: bool = False,
    loop: Loop | str | Callable[..., Array] = Loop.ASSOCIATIVE,
    unroll: int = 1,
) -> Array:
    r""":func:`~gatenets.kernels.parallel_scan.linear_recurrence` with the time axis split over
    the mesh axis ``axis_name``: local scans, an all-gather of one summary per device, and a
    correction pass (see the module docstring).

    Args:
      log_a: ``[time, batch, hidden]`` logs of the decays (non-positive).
      b: ``[time, batch, hidden]`` inputs of the recurrence.
      h0: ``[batch, hidden]`` state before the first step.
      mesh: the device mesh.
      axis_name: the mesh axis for time; ``time`` must be a multiple of its size.
      batch_axis: a mesh axis for the batch as well, or None (batch replicated over the rest).
      valid: ``[time, batch]`` booleans or None; an invalid step holds the state.
      reverse: run from the last step to the first (states stay in time order).
      loop: how each device solves its chunk: ``"associative"`` or ``"linear_scan"`` (the
        loop table's solvers, :func:`gatenets.kernels.parallel_scan.solver`).
      unroll: steps per loop iteration of ``"linear_scan"``.

    Returns:
      ``[time, batch, hidden]`` states, equal to the unsplit recurrence up to rounding, split
      over ``axis_name`` along time.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from gatenets.kernels.sequence_parallel import sharded_linear_recurrence
      >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("time",))
      >>> log_a = jnp.log(jnp.full((4, 1, 1), 0.5))
      >>> h = sharded_linear_recurrence(log_a, jnp.ones((4, 1, 1)), jnp.zeros((1, 1)),
      ...                               mesh=mesh, axis_name="time")
      >>> h[:, 0, 0].tolist()
      [1.0, 1.5, 1.75, 1.875]
    """
    if log_a.shape != b.shape or log_a.ndim != 3:
        raise ValueError(
            f"log_a and b must both be [time, batch, hidden]; got {log_a.shape} and {b.shape}."
        )
    if h0.shape != b.shape[1:]:
        raise ValueError(f"h0 must be [batch, hidden] = {b.shape[1:]}; got {h0.shape}.")
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"axis_name must be one of the mesh axes {mesh.axis_names}; got {axis_name!r}."
        )
    _check_auto(mesh, axis_name, batch_axis)
    devices = mesh.shape[axis_name]
    if b.shape[0] % devices:
        raise ValueError(
            f"the sequence length must be a multiple of the {devices} devices of mesh axis "
            f"{axis_name!r} for sequence parallelism; got {b.shape[0]} steps."
        )
    if batch_axis is not None and b.shape[1] % mesh.shape[batch_axis]:
        raise ValueError(
            f"the batch size must be a multiple of the {mesh.shape[batch_axis]} devices of mesh "
            f"axis {batch_axis!r}; got {b.shape[1]}."
        )
    solve = loop if callable(loop) else solver(loop)
    if b.shape[0] == 0:
        return b
    # An invalid step is the identity (a = 1, b = 0), as in the unsplit recurrence.
    log_a = hold_invalid(valid, log_a, jnp.zeros((), log_a.dtype))
    b = hold_invalid(valid, b, jnp.zeros((), b.dtype))
    h0 = h0.astype(b.dtype)

    def chunk(log_a: Array, b: Array, h0: Array) -> Array:
        # h0 is the same on every device of the time axis; the scans' carries vary over it.
        h0 = jax.lax.pcast(h0, (axis_name,), to="varying")
        if reverse:
            log_a, b = log_a[::-1], b[::-1]
        local = solve(log_a, b, jnp.zeros_like(h0), unroll=unroll)
        decay = jnp.cumsum(log_a, axis=0)
        # One summary per device, in processing order: chunk k's decay and last state.
        decays = jax.lax.all_gather(decay[-1], axis_name)
        lasts = jax.lax.all_gather(local[-1], axis_name)
        index = jax.lax.axis_index(axis_name)
        if reverse:
            decays, lasts, index = decays[::-1], lasts[::-1], devices - 1 - index
        # S_k = e^{L_k} S_{k-1} + B_k from S_{-1} = h0: a recurrence over the n chunks.
        after = sequential_recurrence(decays, lasts, h0)
        before = jnp.concatenate([h0[None], after[:-1]], axis=0)[index]
        h = local + jnp.exp(decay) * before[None]
        return h[::-1] if reverse else h

    steps = PartitionSpec(axis_name, batch_axis)
    in_specs = (steps, steps, PartitionSpec(batch_axis))
    # Placed first, so that inputs laid out otherwise (eagerly, under jax.set_mesh) are split.
    log_a, b, h0 = (
        jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
        for x, spec in zip((log_a, b, h0), in_specs, strict=True)
    )
    return jax.shard_map(chunk, mesh=mesh, in_specs=in_specs, out_specs=steps)(log_a, b, h0)


def run_linear_recurrence(
    log_a: Array, b: Array, h0: Array, *, solver: Callable[..., Array], **options
) -> Array:
    """The recurrence solved by ``solver`` (a loop table solver): split over the time axis
    inside a :func:`sequence_parallel` block (:func:`sharded_linear_recurrence`), else over the
    whole sequence; ``options`` are ``valid``, ``reverse`` and ``unroll``."""
    sharding = active_sequence_sharding()
    if sharding is None:
        return linear_recurrence(log_a, b, h0, loop=solver, **options)
    return sharded_linear_recurrence(
        log_a,
        b,
        h0,
        mesh=sharding.mesh,
        axis_name=sharding.axis_name,
        batch_axis=sharding.batch_axis,
        loop=solver,
        **options,
    )
