"""gatenets: recurrent and attention layers built around sigmoid gates you can inspect."""

from gatenets import inspect as inspect
from gatenets import interop as interop
from gatenets import linen as linen
from gatenets._environment import warn_unknown_variables as _warn_unknown_environment_variables
from gatenets._version import __version__ as __version__
from gatenets.attention._core import RoPE as RoPE
from gatenets.attention.gated import GatedAttention as GatedAttention
from gatenets.attention.gated import GatedAttentionGates as GatedAttentionGates
from gatenets.attention.gau import GatedAttentionUnit as GatedAttentionUnit
from gatenets.attention.gau import GAUGates as GAUGates
from gatenets.attention.sigmoid import SigmoidAttention as SigmoidAttention
from gatenets.attention.sigmoid import SigmoidAttentionGates as SigmoidAttentionGates
from gatenets.blocks.heads import BinaryHead as BinaryHead
from gatenets.blocks.heads import BinaryHeadGates as BinaryHeadGates
from gatenets.blocks.heads import GatedFeedForward as GatedFeedForward
from gatenets.blocks.heads import GatedFeedForwardGates as GatedFeedForwardGates
from gatenets.blocks.router import ExpertBias as ExpertBias
from gatenets.blocks.router import RouterGates as RouterGates
from gatenets.blocks.router import Routing as Routing
from gatenets.blocks.router import SigmoidMoE as SigmoidMoE
from gatenets.blocks.router import SigmoidRouter as SigmoidRouter
from gatenets.cells.base import GatedCell as GatedCell
from gatenets.cells.diagonal import DiagonalCarry as DiagonalCarry
from gatenets.cells.diagonal import DiagonalCell as DiagonalCell
from gatenets.cells.gru import GRUCarry as GRUCarry
from gatenets.cells.gru import GRUCell as GRUCell
from gatenets.cells.gru import GRUGates as GRUGates
from gatenets.cells.lstm import LSTMCarry as LSTMCarry
from gatenets.cells.lstm import LSTMCell as LSTMCell
from gatenets.cells.lstm import LSTMGates as LSTMGates
from gatenets.cells.mgu import MGUCarry as MGUCarry
from gatenets.cells.mgu import MGUCell as MGUCell
from gatenets.cells.mgu import MGUGates as MGUGates
from gatenets.cells.minimal import MinGRUCell as MinGRUCell
from gatenets.cells.minimal import MinGRUGates as MinGRUGates
from gatenets.cells.minimal import MinLSTMCell as MinLSTMCell
from gatenets.cells.minimal import MinLSTMGates as MinLSTMGates
from gatenets.cells.rglru import RGLRUCell as RGLRUCell
from gatenets.cells.rglru import RGLRUGates as RGLRUGates
from gatenets.gates import GateTrace as GateTrace
from gatenets.gates import with_checks as with_checks
from gatenets.inspect.ablation import AblationResult as AblationResult
from gatenets.inspect.probe import GradientProfile as GradientProfile
from gatenets.inspect.statistics import FirstTokenShare as FirstTokenShare
from gatenets.inspect.statistics import GateAccumulator as GateAccumulator
from gatenets.inspect.statistics import GateStatistics as GateStatistics
from gatenets.kernels.gru import gru_sequence as gru_sequence
from gatenets.kernels.lstm import lstm_sequence as lstm_sequence
from gatenets.kernels.sequence_parallel import SequenceSharding as SequenceSharding
from gatenets.kernels.sequence_parallel import sequence_parallel as sequence_parallel
from gatenets.kernels.sequence_parallel import (
    sharded_linear_recurrence as sharded_linear_recurrence,
)
from gatenets.loop import Loop as Loop
from gatenets.loop import loop_tuning as loop_tuning
from gatenets.loop import set_loop_tuning as set_loop_tuning
from gatenets.loop import tune_loops as tune_loops
from gatenets.recurrent import RNN as RNN
from gatenets.recurrent import Bidirectional as Bidirectional
from gatenets.recurrent import BidirectionalCarry as BidirectionalCarry
from gatenets.recurrent import RecurrentStack as RecurrentStack
from gatenets.registry import GRU as GRU
from gatenets.registry import LSTM as LSTM
from gatenets.registry import MGU as MGU
from gatenets.registry import RGLRU as RGLRU
from gatenets.registry import MinGRU as MinGRU
from gatenets.registry import MinLSTM as MinLSTM

_warn_unknown_environment_variables()

__all__ = [
    "AblationResult",
    "Bidirectional",
    "BidirectionalCarry",
    "BinaryHead",
    "BinaryHeadGates",
    "DiagonalCarry",
    "DiagonalCell",
    "ExpertBias",
    "FirstTokenShare",
    "GAUGates",
    "GRU",
    "GRUCarry",
    "GRUCell",
    "GRUGates",
    "GateAccumulator",
    "GateStatistics",
    "GateTrace",
    "GatedAttention",
    "GatedAttentionGates",
    "GatedAttentionUnit",
    "GatedCell",
    "GatedFeedForward",
    "GatedFeedForwardGates",
    "GradientProfile",
    "LSTM",
    "LSTMCarry",
    "LSTMCell",
    "LSTMGates",
    "Loop",
    "loop_tuning",
    "set_loop_tuning",
    "tune_loops",
    "MGU",
    "MGUCarry",
    "MGUCell",
    "MGUGates",
    "MinGRU",
    "MinGRUCell",
    "MinGRUGates",
    "MinLSTM",
    "MinLSTMCell",
    "MinLSTMGates",
    "RGLRU",
    "RGLRUCell",
    "RGLRUGates",
    "RNN",
    "RecurrentStack",
    "RouterGates",
    "SequenceSharding",
    "Routing",
    "RoPE",
    "SigmoidAttention",
    "SigmoidAttentionGates",
    "SigmoidMoE",
    "SigmoidRouter",
    "__version__",
    "gru_sequence",
    "inspect",
    "interop",
    "linen",
    "lstm_sequence",
    "sequence_parallel",
    "sharded_linear_recurrence",
    "with_checks",
]
