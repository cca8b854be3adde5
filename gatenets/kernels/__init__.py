"""Fast sequence kernels chosen by the cells' ``scan``: custom-VJP LSTM/GRU loops and the
log-space parallel scan of the diagonal cells."""

from gatenets.kernels.gru import gru_sequence as gru_sequence
from gatenets.kernels.lstm import lstm_sequence as lstm_sequence

__all__ = ["gru_sequence", "lstm_sequence"]
