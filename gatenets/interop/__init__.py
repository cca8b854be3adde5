"""Interoperability with other frameworks: PyTorch weights (``from_torch`` / ``to_torch``) and
Flax's own recurrent cells, NNX and linen (``from_flax`` / ``to_flax``).

PyTorch is imported lazily, only when a conversion runs.
"""

from gatenets.interop.flax import from_flax as from_flax
from gatenets.interop.flax import to_flax as to_flax
from gatenets.interop.torch import from_torch as from_torch
from gatenets.interop.torch import to_torch as to_torch

__all__ = ["from_flax", "from_torch", "to_flax", "to_torch"]
