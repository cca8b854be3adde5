"""gatenets: recurrent and attention layers built around sigmoid gates you can inspect."""

from gatenets.gates import BidirectionalCarry as BidirectionalCarry
from gatenets.gates import GateTrace as GateTrace
from gatenets.gates import GRUCarry as GRUCarry
from gatenets.gates import GRUGates as GRUGates
from gatenets.gates import LSTMCarry as LSTMCarry
from gatenets.gates import LSTMGates as LSTMGates

__version__ = "0.1.0"

__all__ = [
    "BidirectionalCarry",
    "GRUCarry",
    "GRUGates",
    "GateTrace",
    "LSTMCarry",
    "LSTMGates",
    "__version__",
]
