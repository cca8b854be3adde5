"""Interoperability with other frameworks: PyTorch weights (``from_torch`` / ``to_torch``).

PyTorch is imported lazily, only when a conversion runs.
"""

from gatenets.interop.torch import from_torch as from_torch
from gatenets.interop.torch import to_torch as to_torch

__all__ = ["from_torch", "to_torch"]
