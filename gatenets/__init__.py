"""gatenets: recurrent and attention layers built around sigmoid gates you can inspect."""

from gatenets.attention.gated import GatedAttention as GatedAttention
from gatenets.attention.gated import GatedAttentionGates as GatedAttentionGates
from gatenets.attention.gau import GatedAttentionUnit as GatedAttentionUnit
from gatenets.attention.gau import GAUGates as GAUGates
from gatenets.attention.heads import BinaryHead as BinaryHead
from gatenets.attention.heads import BinaryHeadGates as BinaryHeadGates
from gatenets.attention.heads import GatedFeedForward as GatedFeedForward
from gatenets.attention.heads import GatedFeedForwardGates as GatedFeedForwardGates
from gatenets.attention.router import ExpertBias as ExpertBias
from gatenets.attention.router import RouterGates as RouterGates
from gatenets.attention.router import Routing as Routing
from gatenets.attention.router import SigmoidMoE as SigmoidMoE
from gatenets.attention.router import SigmoidRouter as SigmoidRouter
from gatenets.attention.sigmoid import SigmoidAttention as SigmoidAttention
from gatenets.attention.sigmoid import SigmoidAttentionGates as SigmoidAttentionGates
from gatenets.cells.base import GatedCell as GatedCell
from gatenets.cells.gru import GRUCell as GRUCell
from gatenets.cells.lstm import LSTMCell as LSTMCell
from gatenets.gates import BidirectionalCarry as BidirectionalCarry
from gatenets.gates import GateTrace as GateTrace
from gatenets.gates import GRUCarry as GRUCarry
from gatenets.gates import GRUGates as GRUGates
from gatenets.gates import LSTMCarry as LSTMCarry
from gatenets.gates import LSTMGates as LSTMGates
from gatenets.recurrent import Bidirectional as Bidirectional
from gatenets.recurrent import GRU as GRU
from gatenets.recurrent import LSTM as LSTM
from gatenets.recurrent import RecurrentStack as RecurrentStack
from gatenets.recurrent import RNN as RNN

__version__ = "0.1.0"

__all__ = [
    "Bidirectional",
    "BidirectionalCarry",
    "BinaryHead",
    "BinaryHeadGates",
    "ExpertBias",
    "GAUGates",
    "GRU",
    "GRUCarry",
    "GRUCell",
    "GRUGates",
    "GateTrace",
    "GatedAttention",
    "GatedAttentionGates",
    "GatedAttentionUnit",
    "GatedCell",
    "GatedFeedForward",
    "GatedFeedForwardGates",
    "LSTM",
    "LSTMCarry",
    "LSTMCell",
    "LSTMGates",
    "RNN",
    "RecurrentStack",
    "RouterGates",
    "Routing",
    "SigmoidAttention",
    "SigmoidAttentionGates",
    "SigmoidMoE",
    "SigmoidRouter",
    "__version__",
]
