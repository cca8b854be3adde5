"""Interoperability with other frameworks: PyTorch (``from_torch`` / ``to_torch``), Flax's own
recurrent cells, NNX and linen (``from_flax`` / ``to_flax``), Keras 3 (``from_keras`` /
``to_keras``) and Equinox (``from_equinox`` / ``to_equinox``), and final states both ways
(``carry_from_torch`` / ``carry_to_torch``, ``carry_from_keras`` / ``carry_to_keras``).

PyTorch, Keras and Equinox are imported lazily, only when a conversion runs.
"""

from gatenets.interop.equinox import from_equinox as from_equinox
from gatenets.interop.equinox import reseed_dropout as reseed_dropout
from gatenets.interop.equinox import to_equinox as to_equinox
from gatenets.interop.flax import from_flax as from_flax
from gatenets.interop.flax import to_flax as to_flax
from gatenets.interop.keras import KerasRecurrentOutput as KerasRecurrentOutput
from gatenets.interop.keras import carry_from_keras as carry_from_keras
from gatenets.interop.keras import carry_to_keras as carry_to_keras
from gatenets.interop.keras import from_keras as from_keras
from gatenets.interop.keras import to_keras as to_keras
from gatenets.interop.torch import carry_from_torch as carry_from_torch
from gatenets.interop.torch import carry_to_torch as carry_to_torch
from gatenets.interop.torch import from_torch as from_torch
from gatenets.interop.torch import to_torch as to_torch

__all__ = [
    "KerasRecurrentOutput",
    "carry_from_keras",
    "carry_from_torch",
    "carry_to_keras",
    "carry_to_torch",
    "from_equinox",
    "from_flax",
    "from_keras",
    "from_torch",
    "reseed_dropout",
    "to_equinox",
    "to_flax",
    "to_keras",
    "to_torch",
]
