"""The examples' own helpers; each example runs as a script in tests/test_examples_as_scripts.py."""

import pytest
from helpers import load_example


def test_min_rnn_adding_takes_every_model_name_in_any_case():
    example = load_example("min_rnn_adding")
    assert [example.model_name(n) for n in ("MinGRU", "RGLRU", "attention")] == [
        "mingru",
        "rglru",
        "attention",
    ]
    with pytest.raises(ValueError, match=r"--models: unknown model 'GRUCell'; the models are \["):
        example.model_name("GRUCell")
