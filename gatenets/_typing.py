"""The dimension legend and array aliases used across gatenets.

Every docstring speaks of array shapes with these names:

========  ==========================================================
batch     independent sequences in a batch
time      steps of a sequence (keys/queries for attention)
features  size of the last axis of each input step (``in_features``)
hidden    size of a recurrent state (``hidden_features``)
units     size of a gate: ``hidden`` for recurrent cells, ``heads`` or
          ``heads head_dim`` for attention gates
proj      size of a projected LSTM output (``proj_size``)
========  ==========================================================

Recurrent layers are batch-major: inputs are ``[batch, time, features]`` unless
``time_major=True`` is given, in which case they are ``[time, batch, features]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import jax

Array: TypeAlias = jax.Array
Dtype: TypeAlias = Any
Initializer: TypeAlias = Callable[..., Array]
PRNGKey: TypeAlias = jax.Array
PrecisionLike: TypeAlias = None | str | jax.lax.Precision | tuple[Any, Any]
"""A matmul precision as Flax's ``Linear`` takes it: None (JAX's default: TF32 on NVIDIA GPUs
for float32), ``"highest"``, ``jax.lax.Precision.HIGHEST``, or a pair of those."""
