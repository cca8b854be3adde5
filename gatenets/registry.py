"""The one list of recurrent cell families.

Each row is a cell class; its file declares everything else (``family``, ``gates_type``,
``carry_type``, the stack's ``layer_doc``), and the family's stacked layer is derived from it
(:meth:`gatenets.RecurrentStack.of`). Everything that enumerates cell families derives from
:data:`FAMILIES`: the stacks exported here (``LSTM``, ``GRU``, …), the CLI's ``--model``
choices, the task models, the linen wrappers, the gate types saved traces rebuild and the
conformance tests. A new cell is one file in ``cells/`` and one row here (the loop table,
:func:`gatenets.loop.loop_table`, gives it the generic scan; kernels are rows there).
"""

from __future__ import annotations

from typing import NamedTuple

from gatenets.cells.base import GatedCell
from gatenets.cells.gru import GRUCell
from gatenets.cells.lstm import LSTMCell
from gatenets.cells.mgu import MGUCell
from gatenets.cells.minimal import MinGRUCell, MinLSTMCell
from gatenets.cells.rglru import RGLRUCell
from gatenets.recurrent import RecurrentStack


class CellFamily(NamedTuple):
    """One registered family of recurrent cells.

    Attributes:
      name: lower-case name, as the CLI and task configs spell it (``"lstm"``): the cell's
        ``family``.
      cell: the cell class (``LSTMCell``).
      layer: the stacked layer over that cell (``LSTM``).
    """

    name: str
    cell: type[GatedCell]
    layer: type[RecurrentStack]

    @classmethod
    def of(cls, cell: type[GatedCell]) -> CellFamily:
        """The row of ``cell``: its name and its derived stacked layer.

        Example:
          >>> import gatenets
          >>> from gatenets.registry import CellFamily
          >>> CellFamily.of(gatenets.MGUCell).layer is gatenets.MGU
          True
        """
        family = getattr(cell, "family", None)
        if not isinstance(family, str) or family != family.lower() or not family:
            raise ValueError(
                f"{getattr(cell, '__name__', cell)}.family must be a lower-case name; got "
                f"{family!r}."
            )
        return cls(family, cell, RecurrentStack.of(cell))


FAMILIES: dict[str, CellFamily] = {
    row.name: row
    for row in map(
        CellFamily.of,
        (
            LSTMCell,
            GRUCell,
            MinGRUCell,
            MinLSTMCell,
            RGLRUCell,
            MGUCell,
        ),
    )
}
"""Registered cell families by name."""

# The stacked layers, by their names (gatenets.LSTM, …), derived from the rows above.
globals().update({row.layer.__name__: row.layer for row in FAMILIES.values()})
__all__ = ["FAMILIES", "CellFamily", *(row.layer.__name__ for row in FAMILIES.values())]
