"""The cell contract: what every gatenets recurrent cell provides, written once.

A cell splits its work into a time-parallel part, :meth:`GatedCell.project` (the input matmul,
done once for all steps when that pays), and a sequential part, :meth:`GatedCell.step`, which
returns the new carry, the output and the post-sigmoid gates. :meth:`GatedCell.scan` runs the
step over a sequence with the loop :meth:`GatedCell.resolve_loop` chose; ``__call__`` chains
project and step, so a cell also works step by step and inside ``flax.nnx.RNN``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from gatenets import loop as loop_table
from gatenets._layers import check_precision, scoped
from gatenets._typing import Array, Dtype, Initializer, PrecisionLike
from gatenets.gates import GateOverride, hold_invalid, zero_invalid
from gatenets.kernels._common import constant_overrides
from gatenets.loop import Loop, LoopRequest


def state_dtype(dtype: Any) -> Any:
    """Recurrent state dtype: low-precision compute keeps its state in float32."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


def _carry_stream(rngs: Any) -> Any:
    """The key source a random ``carry_init`` draws from: Flax's ``carry`` stream."""
    if rngs is None:
        return nnx.Rngs(carry=0).carry
    if isinstance(rngs, nnx.Rngs):
        try:
            return rngs.carry
        except (AttributeError, KeyError) as err:
            raise ValueError(
                "rngs must have a 'carry' or a default stream to draw the carry from; got "
                f"{rngs!r}."
            ) from err
    if callable(rngs):
        return rngs
    raise TypeError(f"rngs must be an nnx.Rngs, an RngStream or None; got {type(rngs).__name__}.")


def recurrent_input(h: Array, recurrent_mask: Array | None) -> Array:
    """:math:`h_{t-1}` as it enters the recurrent matmul: times the variational dropout mask
    (``[batch, output_features]``, cast to ``h``'s dtype) when there is one."""
    return h if recurrent_mask is None else h * recurrent_mask.astype(h.dtype)


def fused_orthogonal(
    init: Initializer, rngs: nnx.Rngs, rows: int, hidden: int, blocks: int, param_dtype: Dtype
) -> Array:
    """A ``[rows, blocks * hidden]`` kernel made of ``blocks`` separately initialised blocks.

    Orthogonal initialisation is meant per gate (each ``[rows, hidden]`` block), not for the
    fused matrix, whose columns could not all be orthogonal. Blocks are drawn in float32 and
    cast, since the QR decomposition behind orthogonal init has no bf16 kernel.
    """
    return jnp.concatenate(
        [init(rngs.params(), (rows, hidden), jnp.float32) for _ in range(blocks)], axis=-1
    ).astype(param_dtype)


class GatedCell(nnx.RNNCellBase):
    """Base of gatenets' recurrent cells: the contract a new cell implements.

    A cell family is one subclass that sets the class attributes and implements :meth:`step`
    (and :meth:`carry_spec` when its carry holds more than ``h``); :meth:`project` and
    :meth:`scan` are inherited. The sequence layer (:class:`~gatenets.RNN`) relies on nothing
    else. ``precision`` (as Flax's ``Linear`` takes it) goes to every matmul of the cell.

    Class attributes:
      family: the registered family's name (``"lstm"``). A class that sets it is a concrete
        cell: every abstract method must be implemented (checked when the class is made). The
        loop table (:func:`gatenets.loop.loop_table`) keys its kernels by it; a family without
        kernels there runs ``Loop.SCAN``, the generic loop over :meth:`step`.
      gates_type: NamedTuple of the cell's post-sigmoid gates. Its field names are the names
        ``gate_overrides`` takes and a trace shows.
      tuple_carries: whether plain tuples in ``carry_type``'s field order are taken as
        carries (see :meth:`as_carry`); False: only ``carry_type`` or, for one field, an array.
      carry_type: NamedTuple of the state between steps. It must have a field ``h``: the
        output of the step and the recurrent input of the next one (checked when the class is
        made).

    Rules a :meth:`step` follows, so that every loop computes the same thing:

    * each gate is ``apply_override(sigmoid(z), gate_overrides.get(name), name)`` — the override
      replaces the gate where it is made, so the replaced value is what the recurrence uses;
    * ``recurrent_mask`` (variational dropout) multiplies :math:`h_{t-1}` where it enters the
      recurrent matmul, and nowhere else;
    * masks are not the step's business: :meth:`scan` holds the carry and zeroes the output at
      invalid steps (:func:`gatenets.gates.hold_invalid`), for every loop alike.

    The default :meth:`project` reads the parameters ``kernel`` (``[in_features, blocks *
    hidden]``) and the biases :meth:`_input_bias` returns (``bias`` when ``use_bias``); a cell
    whose input weights look different overrides :meth:`project`.
    """

    family: ClassVar[str]
    gates_type: ClassVar[type]
    carry_type: ClassVar[type]
    tuple_carries: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        carry_type = cls.__dict__.get("carry_type")
        if carry_type is not None and "h" not in getattr(carry_type, "_fields", ()):
            raise TypeError(
                f"{cls.__name__}.carry_type must be a NamedTuple with a field 'h' (the output "
                f"and recurrent input); got {carry_type!r}."
            )
        if "family" in cls.__dict__:
            # A class that names its family is a concrete cell: nothing may be left abstract.
            missing = sorted(
                name
                for name in dir(cls)
                if getattr(getattr(cls, name, None), "__isabstractmethod__", False)
            )
            if missing:
                raise TypeError(
                    f"{cls.__name__} names a family, so it must implement {', '.join(missing)}."
                )

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype,
        param_dtype,
        precision: PrecisionLike = None,
    ):
        for name, value in (("in_features", in_features), ("hidden_features", hidden_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = check_precision(precision)

    @property
    def compute_dtype(self) -> Any:
        """The dtype the cell computes in: ``dtype`` if given, else the parameters' dtype."""
        return jnp.dtype(self.dtype if self.dtype is not None else self.param_dtype)

    @property
    def gate_names(self) -> tuple[str, ...]:
        """Names of the gates (the fields of ``gates_type``)."""
        return self.gates_type._fields

    @property
    def output_features(self) -> int:
        """Size of the output ``h`` (and of the recurrent input)."""
        return self.hidden_features

    @property
    def num_feature_axes(self) -> int:
        return 1

    def _carry_dtype(self) -> Any:
        """The dtype of ``h`` between steps: the state dtype of the compute dtype (float32
        under bf16 / f16 compute, so that a gate near 1 does not round small updates away;
        the step's matmuls accumulate into it, :func:`~gatenets.kernels._common.mixed_matmul`)."""
        return state_dtype(self.compute_dtype)

    def carry_spec(self) -> dict[str, tuple[int, Any]]:
        """``{field: (features, dtype)}`` for every field of ``carry_type``, in field order.

        This default serves a ``carry_type`` whose only field is ``h`` (``output_features``
        in :meth:`_carry_dtype`); a cell with more state (an LSTM's ``c``) overrides it.
        """
        if self.carry_type._fields != ("h",):
            raise NotImplementedError(
                f"{type(self).__name__} must implement carry_spec: its carry_type has the fields "
                f"{self.carry_type._fields}, the default describes only ('h',)."
            )
        return {"h": (self.output_features, self._carry_dtype())}

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        carry_init: Initializer | None = None,
    ) -> Any:
        """The carry before the first step, as Flax's ``RNNCellBase.initialize_carry``, with
        the fields and dtypes of :meth:`carry_spec`.

        Args:
          input_shape: shape of one input step, ``[*batch, in_features]``.
          rngs: where a random ``carry_init`` draws its keys: an ``nnx.Rngs`` (its ``carry``
            stream, or its default one) or an ``RngStream``. Zeros need none.
          carry_init: initialiser of every carry field, called once per field; zeros when None.

        Returns:
          a ``carry_type`` with ``[*batch, features]`` leaves in the cell's state dtypes.
        """
        batch = tuple(input_shape[:-1])
        spec = self.carry_spec()
        if carry_init is None:
            fields = {f: jnp.zeros(batch + (n,), dtype) for f, (n, dtype) in spec.items()}
        else:
            stream = _carry_stream(rngs)
            fields = {f: carry_init(stream(), batch + (n,), d) for f, (n, d) in spec.items()}
        return self.carry_type(**fields)

    def as_carry(self, carry: Any, name: str = "carry") -> Any:
        """``carry`` as this cell's ``carry_type``, checked against ``carry_spec``.

        Takes, for a one-field carry, the bare array (a GRU's ``h``). A plain tuple of several
        arrays reads two ways — Flax orders an LSTM carry ``(c, h)``, PyTorch, Keras and
        Equinox ``(h, c)`` — so it is refused, naming both, unless the class sets
        ``tuple_carries = True`` (a subclass that builds Flax-style tuples in ``carry_type``'s
        field order). Carries that come out of gatenets are always ``carry_type``.
        """
        fields = self.carry_type._fields
        if not isinstance(carry, self.carry_type):
            if isinstance(carry, tuple | list) and len(carry) == len(fields):
                if len(fields) > 1 and not self.tuple_carries:
                    readings = ", ".join(fields)
                    raise TypeError(
                        f"{name} is a plain {type(carry).__name__} of {len(carry)} arrays, which "
                        f"reads two ways: ({readings}) as Flax orders it, or "
                        f"({', '.join(reversed(fields))}) as PyTorch, Keras and Equinox do. "
                        f"Build {self.carry_type.__name__}({', '.join(f'{f}=…' for f in fields)})"
                        " by name, or convert a PyTorch or Keras state with "
                        "gatenets.interop.carry_from_torch / carry_from_keras."
                    )
                carry = self.carry_type(*carry)
            elif hasattr(carry, "shape") and len(fields) == 1:
                carry = self.carry_type(carry)
            else:
                raise TypeError(
                    f"{name} must be a {self.carry_type.__name__}{fields} (or a tuple of those "
                    f"fields in order); got {type(carry).__name__}."
                )
        for field, (features, _) in self.carry_spec().items():
            shape = jnp.shape(getattr(carry, field))
            if not shape or shape[-1] != features:
                raise ValueError(
                    f"{name}.{field} must have {features} features on its last axis "
                    f"({type(self).__name__}'s {field}); got shape {shape}."
                )
        return carry

    def _input_bias(self, dtype: Any) -> Array | None:
        """Every bias that adds to the input matmul (None without biases)."""
        return self.bias[...].astype(dtype) if getattr(self, "use_bias", False) else None

    def project(self, x: Array) -> Array:
        """The time-parallel part of the cell, in the compute dtype.

        Args:
          x: ``[..., in_features]`` raw inputs (one step or a whole sequence).

        Returns:
          ``[..., blocks * hidden]``: ``x @ kernel`` plus the input biases, what :meth:`step`
          takes as ``projected``.
        """
        dtype = self.compute_dtype
        z = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype), precision=self.precision)
        bias = self._input_bias(dtype)
        if bias is not None:
            z = z + jnp.broadcast_to(bias, z.shape)
        return z

    @abc.abstractmethod
    def step(
        self,
        carry: Any,
        projected: Array,
        *,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
    ) -> tuple[Any, Array, Any]:
        """The sequential part of the cell: one step (see the rules in the class docstring).

        Args:
          carry: the ``carry_type`` before the step, ``[batch, …]`` leaves.
          projected: ``[batch, blocks * hidden]``, the step's input through :meth:`project`.
          gate_overrides: validated ``{gate name: constant, array or function}``.
          recurrent_mask: ``[batch, output_features]`` multiplier of :math:`h_{t-1}`, or None.

        Returns:
          ``(new_carry, h, gates)``: the ``carry_type`` after the step, the output
          ``[batch, output_features]`` and a ``gates_type`` of ``[batch, units]`` arrays.
        """

    def resolve_loop(
        self, loop: Loop | str = Loop.AUTO, gate_overrides: Mapping[str, GateOverride] | None = None
    ) -> Loop:
        """The loop ``loop`` names for this cell, without measuring
        (:func:`gatenets.loop.resolve`): a named loop if it computes the request, or for
        ``"auto"`` the first in the backend's static order that does.

        Raises:
          ValueError: if a named loop cannot compute the request, saying why.
        """
        return loop_table.resolve(self, loop, LoopRequest(gate_overrides=gate_overrides))

    def scan(
        self,
        carry: Any,
        xs: Array,
        valid: Array | None,
        *,
        projected: bool,
        loop: Loop | str = Loop.AUTO,
        reverse: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
        unroll: int = 1,
    ) -> tuple[Any, Array, Any]:
        """Runs the cell over a time-major sequence with the loop the loop table chooses
        (:func:`gatenets.loop.choose`: measured for ``"auto"``).

        Args:
          carry: initial carry, ``[batch, …]`` leaves.
          xs: ``[time, batch, blocks * hidden]`` projected inputs if ``projected``, else raw
            ``[time, batch, in_features]``.
          valid: ``[time, batch]`` booleans, or None when every step is valid. At an invalid
            step the carry is held and the output is zero.
          projected: whether ``xs`` already went through :meth:`project`.
          loop: which loop runs the sequence (:class:`~gatenets.Loop`).
          reverse: run from the last step to the first (outputs stay in place).
          return_gates: also return the gates, stacked ``[time, batch, units]``.
          gate_overrides: validated ``{gate: constant or function}``.
          recurrent_mask: ``[batch, output_features]`` variational dropout mask on ``h``.
          unroll: steps per loop iteration.

        Returns:
          ``(final_carry, outputs [time, batch, output_features], gates or None)``.
        """
        request = LoopRequest(
            projected=projected,
            reverse=reverse,
            return_gates=return_gates,
            gate_overrides=gate_overrides,
            recurrent_mask=recurrent_mask,
            unroll=unroll,
        )
        chosen = loop_table.choose(self, loop, carry, xs, valid, request)
        return loop_table.run(self, chosen, carry, xs, valid, request)

    def run_kernel(
        self, kernel: Callable[..., Any], carry: Any, xs: Array, valid: Array | None, request
    ) -> tuple[Any, Array, Any]:
        """Runs one of the loop table's kernels for this cell's family (the contract of
        :meth:`scan`); cells with kernels in the table implement it."""
        raise TypeError(f"{type(self).__name__} has no kernels beside the generic scan.")

    def check_input(self, x: Any, name: str = "x", min_rank: int = 1) -> Array:
        """Raises a clear error for input of the wrong type, rank or feature size."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{name} must be a floating-point array; got dtype {x.dtype}. Cast integer "
                "inputs explicitly (e.g. x.astype(jnp.float32)) or embed token ids first."
            )
        if x.ndim < min_rank:
            raise ValueError(f"{name} must have rank >= {min_rank}; got shape {x.shape}.")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{name} must have in_features = {self.in_features} on its last axis; got "
                f"shape {x.shape}."
            )
        return x

    @scoped
    def __call__(self, carry: Any, inputs: Array) -> tuple[Any, Array]:
        """One step on raw input ``[batch, in_features]``: returns ``(new_carry, output)``."""
        inputs = self.check_input(inputs, "inputs")
        carry = self.as_carry(carry)
        for field, leaf in zip(carry._fields, carry, strict=True):
            if jnp.shape(leaf)[:-1] != inputs.shape[:-1]:
                raise ValueError(
                    f"carry.{field} has shape {jnp.shape(leaf)}, but inputs of shape "
                    f"{inputs.shape} need a carry with the batch shape {inputs.shape[:-1]} "
                    "(make it with initialize_carry(inputs.shape))."
                )
        carry, h, _ = self.step(carry, self.project(inputs))
        return carry, h


def scan_steps(
    cell: GatedCell, carry: Any, xs: Array, valid: Array | None, request: LoopRequest
) -> tuple[Any, Array, Any]:
    """``Loop.SCAN``: ``jax.lax.scan`` over ``cell.step``, differentiated by autodiff — the
    generic loop every cell runs and every other loop is tested equal to."""

    def body(carry, step_inputs):
        x_t, valid_t = step_inputs
        if not request.projected:
            x_t = cell.project(x_t)
        new_carry, h, gates = cell.step(
            carry,
            x_t,
            gate_overrides=request.gate_overrides,
            recurrent_mask=request.recurrent_mask,
        )
        new_carry = hold_invalid(valid_t, new_carry, carry)
        h = zero_invalid(valid_t, h)
        return new_carry, ((h, gates) if request.return_gates else h)

    carry, ys = jax.lax.scan(
        body, carry, (xs, valid), reverse=request.reverse, unroll=request.unroll
    )
    outputs, gates = ys if request.return_gates else (ys, None)
    return carry, outputs, gates


class FusedKernelCell(GatedCell):
    r"""A cell the loop table has fused sequence kernels for (``Loop.FUSED``, custom VJP in
    JAX, and ``Loop.NATIVE``, the same contract as one C++ call on CPU).

    Subclasses implement :meth:`kernel_unsupported` (why the kernels do not cover this
    configuration, or None) and :meth:`kernel_operands` (the cell's parameters as the kernel
    takes them), and set ``remat``. The kernels compute :math:`\sigma` and :math:`\tanh`;
    other ``gate_fn`` / ``activation_fn`` (Flax's arguments) run on the generic scan.
    """

    remat: bool

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype,
        param_dtype,
        precision: PrecisionLike = None,
        gate_fn: Callable[[Array], Array] = jax.nn.sigmoid,
        activation_fn: Callable[[Array], Array] = jnp.tanh,
    ):
        super().__init__(
            in_features, hidden_features, dtype=dtype, param_dtype=param_dtype, precision=precision
        )
        for name, fn in (("gate_fn", gate_fn), ("activation_fn", activation_fn)):
            if not callable(fn):
                raise TypeError(f"{name} must be a function of an array; got {fn!r}.")
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn

    @property
    def standard_functions(self) -> bool:
        """Whether the gates are sigmoids and the activations tanh (what the kernels compute)."""
        return self.gate_fn is jax.nn.sigmoid and self.activation_fn is jnp.tanh

    def functions_unsupported(self) -> str | None:
        """Why the kernels cannot compute this cell's ``gate_fn`` / ``activation_fn``."""
        if self.standard_functions:
            return None
        return (
            "the fused kernels compute sigmoid gates and tanh activations; got gate_fn="
            f"{getattr(self.gate_fn, '__name__', self.gate_fn)}, activation_fn="
            f"{getattr(self.activation_fn, '__name__', self.activation_fn)}"
        )

    @abc.abstractmethod
    def kernel_unsupported(self) -> str | None:
        """Why the fused kernels cannot run this cell's configuration, or None."""

    @abc.abstractmethod
    def kernel_operands(self, carry: Any, dtype: Any) -> tuple[tuple, dict[str, Any]]:
        """``(positional state operands, keyword operands)`` the family's kernels take beside
        the inputs: the recurrent kernel and initial states, and family-specific biases."""

    @abc.abstractmethod
    def kernel_results(self, results: tuple, return_gates: bool) -> tuple[Any, Array, Any]:
        """The kernel's results as ``(carry_type, outputs, gates_type or None)``."""

    def run_kernel(self, kernel, carry, xs, valid, request):
        dtype = self.compute_dtype
        input_kernel = bias = None
        if not request.projected:
            input_kernel = self.kernel[...].astype(dtype)
            bias = self._input_bias(dtype)
            if bias is None:
                bias = jnp.zeros((input_kernel.shape[-1],), dtype)
        states, options = self.kernel_operands(carry, dtype)
        mask = request.recurrent_mask
        results = kernel(
            xs,
            *states,
            valid,
            **options,
            input_kernel=input_kernel,
            bias=bias,
            recurrent_mask=None if mask is None else mask.astype(dtype),
            reverse=request.reverse,
            return_gates=request.return_gates,
            overrides=constant_overrides(request.gate_overrides, self.gate_names),
            remat=self.remat,
            unroll=request.unroll,
            precision=self.precision,
        )
        carry, hs, gates = self.kernel_results(results, request.return_gates)
        return carry, zero_invalid(valid, hs), gates
