"""gatenets: recurrent and attention layers built around sigmoid gates you can inspect."""

from gatenets import linen as linen
from gatenets.cells.base import GatedCell as GatedCell
from gatenets.cells.diagonal import DiagonalCarry as DiagonalCarry
from gatenets.cells.diagonal import DiagonalCell as DiagonalCell
from gatenets.cells.gru import GRUCell as GRUCell
from gatenets.cells.lstm import LSTMCell as LSTMCell
from gatenets.cells.minimal import MinGRU as MinGRU
from gatenets.cells.minimal import MinGRUCell as MinGRUCell
from gatenets.cells.minimal import MinGRUGates as MinGRUGates
from gatenets.cells.minimal import MinLSTM as MinLSTM
from gatenets.cells.minimal import MinLSTMCell as MinLSTMCell
from gatenets.cells.minimal import MinLSTMGates as MinLSTMGates
from gatenets.cells.rglru import RGLRU as RGLRU
from gatenets.cells.rglru import RGLRUGates as RGLRUGates
from gatenets.cells.rglru import RGLRUStack as RGLRUStack
from gatenets.gates import BidirectionalCarry as BidirectionalCarry
from gatenets.gates import GateTrace as GateTrace
from gatenets.gates import GRUCarry as GRUCarry
from gatenets.gates import GRUGates as GRUGates
from gatenets.gates import LSTMCarry as LSTMCarry
from gatenets.gates import LSTMGates as LSTMGates
from gatenets.recurrent import GRU as GRU
from gatenets.recurrent import LSTM as LSTM
from gatenets.recurrent import RNN as RNN
from gatenets.recurrent import Bidirectional as Bidirectional
from gatenets.recurrent import RecurrentStack as RecurrentStack

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RGLRU",
    "RNN",
    "Bidirectional",
    "BidirectionalCarry",
    "DiagonalCarry",
    "DiagonalCell",
    "GRUCarry",
    "GRUCell",
    "GRUGates",
    "GateTrace",
    "GatedCell",
    "LSTMCarry",
    "LSTMCell",
    "LSTMGates",
    "MinGRU",
    "MinGRUCell",
    "MinGRUGates",
    "MinLSTM",
    "MinLSTMCell",
    "MinLSTMGates",
    "RGLRUGates",
    "RGLRUStack",
    "RecurrentStack",
    "__version__",
    "linen",
]
