"""What every gatenets recurrent cell shares.

A cell splits its work into a time-parallel part, :meth:`GatedCell.project` (the input matmul,
done once for all steps when that pays), and a sequential part, :meth:`GatedCell.step`, which
returns the new carry, the output and the post-sigmoid gates. ``__call__`` chains the two, so a
cell also works step by step and inside ``flax.nnx.RNN``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from gatenets._typing import Array, Dtype, Initializer
from gatenets.gates import GateOverride
from gatenets.kernels._common import constant_overrides


def compute_dtype(dtype: Dtype | None, param_dtype: Dtype) -> Any:
    """The dtype a cell computes in: ``dtype`` if given, else the parameters' dtype."""
    return jnp.dtype(dtype if dtype is not None else param_dtype)


def state_dtype(dtype: Any) -> Any:
    """Recurrent state dtype: low-precision compute keeps its state in float32."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


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
    """Base of gatenets' recurrent cells (``nnx.RNNCellBase`` compatible).

    Subclasses set ``gates_type`` and ``carry_type`` (NamedTuples) and implement
    ``initialize_carry``, ``project`` and ``step``.
    """

    gates_type: ClassVar[type]
    carry_type: ClassVar[type]

    def __init__(self, in_features: int, hidden_features: int, *, dtype, param_dtype):
        for name, value in (("in_features", in_features), ("hidden_features", hidden_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        self.param_dtype = param_dtype

    @property
    def gate_names(self) -> tuple[str, ...]:
        return self.gates_type._fields

    @property
    def output_features(self) -> int:
        """Size of the output ``h`` (and of the recurrent input)."""
        return self.hidden_features

    @property
    def num_feature_axes(self) -> int:
        return 1

    def _input_bias(self, dtype: Any) -> Array | None:
        """Every bias that adds to the input matmul (None without biases)."""
        return self.bias[...].astype(dtype) if getattr(self, "use_bias", False) else None

    def project(self, x: Array) -> Array:
        """Time-parallel part: ``x @ kernel`` plus the input biases, in the compute dtype:
        ``[..., in_features] -> [..., blocks * hidden]``."""
        dtype = compute_dtype(self.dtype, self.param_dtype)
        z = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype))
        bias = self._input_bias(dtype)
        if bias is not None:
            z = z + jnp.broadcast_to(bias, z.shape)
        return z

    def step(
        self,
        carry: Any,
        projected: Array,
        *,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
    ) -> tuple[Any, Array, Any]:
        raise NotImplementedError

    def scan(
        self,
        carry: Any,
        xs: Array,
        valid: Array | None,
        *,
        projected: bool,
        reverse: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
        unroll: int = 1,
    ) -> tuple[Any, Array, Any]:
        """Runs the cell over a time-major sequence: the one place a time loop lives.

        The sequence layer calls this; a cell family overrides it to run a faster kernel (a
        custom-VJP loop, a parallel scan) with the same contract.

        Args:
          carry: initial carry, ``[batch, …]`` leaves.
          xs: ``[time, batch, 4 * hidden]`` projected inputs if ``projected``, else raw
            ``[time, batch, features]``.
          valid: ``[time, batch]`` booleans, or None when every step is valid. At an invalid
            step the carry is held and the output is zero.
          projected: whether ``xs`` already went through :meth:`project`.
          reverse: run from the last step to the first (outputs stay in place).
          return_gates: also return the gates, stacked ``[time, batch, units]``.
          gate_overrides: validated ``{gate: constant or function}``.
          recurrent_mask: ``[batch, output_features]`` variational dropout mask on ``h``.
          unroll: steps per loop iteration.

        Returns:
          ``(final_carry, outputs [time, batch, output_features], gates or None)``.
        """

        def body(carry, step_inputs):
            x_t, valid_t = step_inputs if valid is not None else (step_inputs, None)
            if not projected:
                x_t = self.project(x_t)
            new_carry, h, gates = self.step(
                carry, x_t, gate_overrides=gate_overrides, recurrent_mask=recurrent_mask
            )
            if valid_t is not None:
                keep = valid_t[:, None]
                new_carry = jax.tree_util.tree_map(
                    lambda new, old: jnp.where(keep, new, old), new_carry, carry
                )
                h = jnp.where(keep, h, jnp.zeros((), h.dtype))
            return new_carry, ((h, gates) if return_gates else h)

        step_inputs = xs if valid is None else (xs, valid)
        carry, ys = jax.lax.scan(body, carry, step_inputs, reverse=reverse, unroll=unroll)
        outputs, gates = ys if return_gates else (ys, None)
        return carry, outputs, gates

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

    def __call__(self, carry: Any, inputs: Array) -> tuple[Any, Array]:
        """One step on raw input ``[batch, in_features]``: returns ``(new_carry, output)``."""
        inputs = self.check_input(inputs, "inputs")
        carry, h, _ = self.step(carry, self.project(inputs))
        return carry, h


class FusedKernelCell(GatedCell):
    """A cell with a fused sequence kernel (custom VJP) beside the generic scan.

    Subclasses set ``kernel_choice`` (``"auto"``, ``"scan"`` or ``"fused"``) and ``remat``, and
    implement ``_fused_applies`` (whether the kernel covers this configuration) and
    ``_fused_scan`` (the kernel call). :meth:`scan` picks between the two paths.
    """

    kernel_choice: str
    remat: bool

    def _fused_applies(self) -> bool:
        return True

    def _fused_scan(
        self,
        carry: Any,
        xs: Array,
        valid: Array | None,
        *,
        dtype: Any,
        input_kernel: Array | None,
        bias: Array | None,
        recurrent_mask: Array | None,
        reverse: bool,
        return_gates: bool,
        overrides: tuple,
        unroll: int,
    ) -> tuple[Any, Array, Any]:
        raise NotImplementedError

    def scan(
        self,
        carry: Any,
        xs: Array,
        valid: Array | None,
        *,
        projected: bool,
        reverse: bool = False,
        return_gates: bool = False,
        gate_overrides: Mapping[str, GateOverride] | None = None,
        recurrent_mask: Array | None = None,
        unroll: int = 1,
    ) -> tuple[Any, Array, Any]:
        """Runs the cell over a sequence: the fused kernel where it applies (``kernel="auto"``
        or ``"fused"``), the generic scan otherwise; same contract as :meth:`GatedCell.scan`."""
        constants = constant_overrides(gate_overrides, self.gate_names)
        if self.kernel_choice == "fused" and constants is None:
            raise ValueError(
                "kernel='fused' takes gate_overrides only as scalar constants; got "
                f"{dict(gate_overrides)!r}. Use kernel='auto' or 'scan' for functions or arrays."
            )
        if self.kernel_choice == "scan" or constants is None or not self._fused_applies():
            return super().scan(
                carry,
                xs,
                valid,
                projected=projected,
                reverse=reverse,
                return_gates=return_gates,
                gate_overrides=gate_overrides,
                recurrent_mask=recurrent_mask,
                unroll=unroll,
            )
        dtype = compute_dtype(self.dtype, self.param_dtype)
        input_kernel = bias = None
        if not projected:
            input_kernel = self.kernel[...].astype(dtype)
            bias = self._input_bias(dtype)
            if bias is None:
                bias = jnp.zeros((input_kernel.shape[-1],), dtype)
        carry, hs, gates = self._fused_scan(
            carry,
            xs,
            valid,
            dtype=dtype,
            input_kernel=input_kernel,
            bias=bias,
            recurrent_mask=None if recurrent_mask is None else recurrent_mask.astype(dtype),
            reverse=reverse,
            return_gates=return_gates,
            overrides=constants,
            unroll=unroll,
        )
        outputs = hs if valid is None else jnp.where(valid[..., None], hs, jnp.zeros((), dtype))
        return carry, outputs, gates
