"""The one list of recurrent cell families.

Everything that enumerates cell families derives from :data:`FAMILIES`: the CLI's ``--model``
choices, the task models, the linen wrappers and the conformance tests. A new cell is one file
in ``cells/``, a one-line stack in ``recurrent.py`` and one row here.
"""

from __future__ import annotations

from typing import NamedTuple

from gatenets.cells.base import GatedCell
from gatenets.recurrent import GRU, LSTM, MGU, RGLRU, MinGRU, MinLSTM, RecurrentStack


class CellFamily(NamedTuple):
    """One registered family of recurrent cells.

    Attributes:
      name: lower-case name, as the CLI and task configs spell it (``"lstm"``).
      cell: the cell class (``LSTMCell``).
      layer: the stacked layer over that cell (``LSTM``).
    """

    name: str
    cell: type[GatedCell]
    layer: type[RecurrentStack]


FAMILIES: dict[str, CellFamily] = {
    family.name: family
    for family in (
        CellFamily("lstm", LSTM.cell_type, LSTM),
        CellFamily("gru", GRU.cell_type, GRU),
        CellFamily("mingru", MinGRU.cell_type, MinGRU),
        CellFamily("minlstm", MinLSTM.cell_type, MinLSTM),
        CellFamily("rglru", RGLRU.cell_type, RGLRU),
        CellFamily("mgu", MGU.cell_type, MGU),
    )
}
"""Registered cell families by name."""
