"""gatenets: recurrent and attention layers built around sigmoid gates you can inspect."""

from gatenets import inspect as inspect
from gatenets.cells.base import GatedCell as GatedCell
from gatenets.cells.gru import GRUCell as GRUCell
from gatenets.cells.lstm import LSTMCell as LSTMCell
from gatenets.gates import BidirectionalCarry as BidirectionalCarry
from gatenets.gates import GateTrace as GateTrace
from gatenets.gates import GRUCarry as GRUCarry
from gatenets.gates import GRUGates as GRUGates
from gatenets.gates import LSTMCarry as LSTMCarry
from gatenets.gates import LSTMGates as LSTMGates
from gatenets.inspect.ablation import AblationResult as AblationResult
from gatenets.inspect.probe import GradientProfile as GradientProfile
from gatenets.inspect.statistics import FirstTokenShare as FirstTokenShare
from gatenets.inspect.statistics import GateAccumulator as GateAccumulator
from gatenets.inspect.statistics import GateStatistics as GateStatistics
from gatenets.recurrent import GRU as GRU
from gatenets.recurrent import LSTM as LSTM
from gatenets.recurrent import RNN as RNN
from gatenets.recurrent import Bidirectional as Bidirectional
from gatenets.recurrent import RecurrentStack as RecurrentStack

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "AblationResult",
    "Bidirectional",
    "BidirectionalCarry",
    "FirstTokenShare",
    "GRUCarry",
    "GRUCell",
    "GRUGates",
    "GateAccumulator",
    "GateStatistics",
    "GateTrace",
    "GatedCell",
    "GradientProfile",
    "LSTMCarry",
    "LSTMCell",
    "LSTMGates",
    "RecurrentStack",
    "__version__",
    "inspect",
]
