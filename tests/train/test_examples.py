"""The examples' own helpers; each example runs as a script in tests/test_examples_as_scripts.py."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parent.parent.parent


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_min_rnn_adding_takes_every_model_name_in_any_case():
    example = load_example("min_rnn_adding")
    assert [example.model_name(n) for n in ("MinGRU", "RGLRU", "attention")] == [
        "mingru",
        "rglru",
        "attention",
    ]
    with pytest.raises(ValueError, match=r"--models: unknown model 'GRUCell'; the models are \["):
        example.model_name("GRUCell")
