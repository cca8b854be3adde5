"""Fast sequence kernels (custom VJP) that the LSTM and GRU cells choose in their ``scan``."""

from gatenets.kernels._common import KERNELS as KERNELS
from gatenets.kernels.gru import gru_sequence as gru_sequence
from gatenets.kernels.lstm import lstm_sequence as lstm_sequence

__all__ = ["KERNELS", "gru_sequence", "lstm_sequence"]
