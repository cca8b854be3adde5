"""Export of gate traces: NumPy ``.npz`` (round trip) and the HDF5 layout that LSTMVis reads.

LSTMVis (Strobelt et al. 2018) reads a directory holding

* ``states.h5``: one dataset per state or gate, ``[steps, units]``, the sequences of a corpus
  laid end to end (here: every sequence's valid steps, sequence after sequence);
* ``words.h5``: dataset ``word_ids`` ``[steps]``, the token at each step;
* ``words.dict``: the vocabulary, one ``token id`` pair per line;
* ``lstm.yml``: the project description that names these files and datasets.

HDF5 needs ``h5py``, an optional extra: ``pip install "gatenets[inspect-h5]"``.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gatenets._files import atomic_write as _atomic_write
from gatenets.gates import GateTrace
from gatenets.inspect.statistics import _check_trace
from gatenets.registry import FAMILIES

# The gate types load_trace rebuilds as themselves: every registered family's.
_KNOWN_GATES: dict[str, type] = {
    family.cell.gates_type.__name__: family.cell.gates_type for family in FAMILIES.values()
}


def save_trace(trace: GateTrace, path: str | os.PathLike) -> str:
    """Writes a trace to a ``.npz`` file (atomically): every gate under ``gates/<path>/<gate>``,
    the mask under ``mask``, and the gate types so that :func:`load_trace` rebuilds them.

    Example:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import load_trace, save_trace
      >>> g = GRUGates(np.full((1, 2, 3), 0.5), np.zeros((1, 2, 3)))
      >>> path = save_trace(GateTrace({"forward": g}, np.ones((1, 2), bool)),
      ...                   os.path.join(tempfile.mkdtemp(), "trace.npz"))
      >>> type(load_trace(path).gates["forward"]).__name__
      'GRUGates'
    """
    mask, _ = _check_trace(trace)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"path must end in .npz; got {path!r}.")
    arrays: dict[str, np.ndarray] = {"mask": mask}
    types = {}
    for part, group in trace.gates.items():
        types[part] = [type(group).__name__, list(group._fields)]
        for name, value in group._asdict().items():
            arrays[f"gates/{part}/{name}"] = np.asarray(value)
    arrays["types"] = np.asarray(json.dumps(types))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    _atomic_write(path, write, ".npz.tmp")
    return path


def load_trace(path: str | os.PathLike) -> GateTrace:
    """Reads a trace written by :func:`save_trace` (gate NamedTuples rebuilt by name).

    The gate types of every registered cell family (:data:`gatenets.registry.FAMILIES`:
    ``LSTMGates``, ``GRUGates``, …) come back as themselves, so statistics still know their
    retention gates; others as a NamedTuple of the same name and fields.
    See :func:`save_trace` for an example.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if "types" not in data or "mask" not in data:
            raise ValueError(f"{os.fspath(path)!r} is not a trace written by save_trace.")
        types = json.loads(str(data["types"]))
        gates = {}
        for part, (type_name, fields) in types.items():
            gate_type = _KNOWN_GATES.get(type_name)
            if gate_type is None or list(gate_type._fields) != fields:
                gate_type = collections.namedtuple(type_name, fields)
            gates[part] = gate_type(*(data[f"gates/{part}/{f}"] for f in fields))
        return GateTrace(gates, data["mask"])


def _require_h5py():
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "HDF5 export needs h5py, an optional extra: pip install 'gatenets[inspect-h5]'."
        ) from err
    return h5py


def _lstmvis_datasets(
    trace: GateTrace, token_ids: Any, vocabulary: Sequence[str], states: Any
) -> tuple[np.ndarray, dict[str, np.ndarray], set[str]]:
    """The valid steps' token ids, the ``[steps, units]`` datasets by name, and the names of
    those that are gates; raises naming the argument that does not fit the trace."""
    mask, flat = _check_trace(trace)
    token_ids = np.asarray(token_ids)
    if token_ids.shape != mask.shape or not np.issubdtype(token_ids.dtype, np.integer):
        raise ValueError(
            f"token_ids must be [batch, time] = {mask.shape} integers; got shape "
            f"{token_ids.shape} and dtype {token_ids.dtype}."
        )
    ids = token_ids[mask]
    if ids.size and (ids.min() < 0 or ids.max() >= len(vocabulary)):
        raise ValueError(
            f"token_ids must lie in [0, len(vocabulary)) = [0, {len(vocabulary)}); got "
            f"values from {ids.min()} to {ids.max()}."
        )
    datasets = {}
    for key, value in {**flat, **dict(states or {})}.items():
        value = np.asarray(value)
        if value.shape[:2] != mask.shape:
            raise ValueError(
                f"{key!r} has shape {value.shape}; expected [batch, time, …] = {mask.shape} + …."
            )
        selected = value[mask]
        datasets[key.replace("/", "_")] = selected.reshape(selected.shape[0], -1)

    return ids, datasets, {key.replace("/", "_") for key in flat}


def _lstmvis_config(name: str, datasets: Mapping[str, Any], gate_keys: set[str]) -> str:
    """The text of ``lstm.yml``."""
    # LSTMVis knows two kinds, "state" and "output", told apart by (type, layer): each dataset
    # gets its own layer number. Gates lie in [0, 1], so they are shown as unsigned and without
    # the tanh that LSTMVis applies to cell states by default.
    types = "\n".join(
        f"    - {{type: state, layer: {k + 1}, path: {key}, unsigned: true, transform: none}}"
        if key in gate_keys
        else f"    - {{type: output, layer: {k + 1}, path: {key}}}"
        for k, key in enumerate(datasets)
    )
    return (
        f"name: {name}\n"
        "description: gate traces exported by gatenets\n"
        "files:\n  states: states.h5\n  train: words.h5\n  words: words.dict\n"
        "word_sequence:\n  file: train\n  path: word_ids\n  dict_file: words\n"
        f"states:\n  file: states\n  types:\n{types}\n"
    )


def export_lstmvis(
    trace: GateTrace,
    directory: str | os.PathLike,
    *,
    token_ids: Any,
    vocabulary: Sequence[str],
    states: Mapping[str, Any] | None = None,
    name: str = "gatenets",
) -> dict[str, str]:
    """Writes a trace (and optionally hidden/cell states) in the layout LSTMVis reads.

    Only valid steps are written, sequence after sequence, so ``states.h5`` datasets and
    ``word_ids`` line up step for step. Dataset names are the gate names with ``/`` replaced
    by ``_`` (``layer0_forward_forget``); attention gates are flattened to ``[steps, units]``.
    In ``lstm.yml`` every dataset is a ``types`` entry of its own (its own ``layer`` number);
    gates are declared ``unsigned`` with ``transform: none``, extra states as ``output``.

    Args:
      trace: the gates, ``[batch, time, …]`` each, with their mask.
      directory: where to write (created if needed).
      token_ids: ``[batch, time]`` integers, the input token at each step.
      vocabulary: ``vocabulary[i]`` is the text of token ``i``.
      states: extra ``{name: [batch, time, units]}`` arrays, such as the hidden states.
      name: project name in ``lstm.yml``.

    Returns:
      ``{"states": path, "words": path, "dict": path, "config": path}``.

    Example:
      >>> import tempfile
      >>> import h5py
      >>> import numpy as np
      >>> from gatenets import GateTrace, GRUGates
      >>> from gatenets.inspect import export_lstmvis
      >>> g = GRUGates(np.full((1, 3, 2), 0.5), np.full((1, 3, 2), 0.25))
      >>> mask = np.array([[True, True, False]])
      >>> paths = export_lstmvis(GateTrace({"forward": g}, mask), tempfile.mkdtemp(),
      ...                        token_ids=np.array([[1, 0, 0]]), vocabulary=["a", "b"])
      >>> with h5py.File(paths["states"]) as f:
      ...     sorted(f), f["forward_update"].shape
      (['forward_reset', 'forward_update'], (2, 2))
    """
    h5py = _require_h5py()
    ids, datasets, gate_keys = _lstmvis_datasets(trace, token_ids, vocabulary, states)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = {
        "states": os.path.join(directory, "states.h5"),
        "words": os.path.join(directory, "words.h5"),
        "dict": os.path.join(directory, "words.dict"),
        "config": os.path.join(directory, "lstm.yml"),
    }

    def write_states(tmp):
        with h5py.File(tmp, "w") as f:
            for key, value in datasets.items():
                f.create_dataset(key, data=value.astype(np.float32))

    def write_words(tmp):
        with h5py.File(tmp, "w") as f:
            f.create_dataset("word_ids", data=ids.astype(np.int64))

    def write_dict(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            for index, token in enumerate(vocabulary):
                f.write(f"{_dict_token(token)} {index}\n")

    config = _lstmvis_config(name, datasets, gate_keys)

    def write_config(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(config)

    _atomic_write(paths["states"], write_states, ".h5.tmp")
    _atomic_write(paths["words"], write_words, ".h5.tmp")
    _atomic_write(paths["dict"], write_dict, ".dict.tmp")
    _atomic_write(paths["config"], write_config, ".yml.tmp")
    return paths


def _dict_token(token: str) -> str:
    """A token as one whitespace-free word for the dictionary file."""
    return {" ": "<space>", "\n": "<newline>", "\t": "<tab>", "": "<empty>"}.get(
        token, token.replace(" ", "_")
    )
