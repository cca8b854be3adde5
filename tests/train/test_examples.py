"""Each task's example script runs end to end at tiny settings and reports its metric."""

import pytest
from helpers import load_example, require_mnist1d


@pytest.mark.parametrize(
    ("name", "settings", "printed"),
    [
        ("adding", {"length": 6, "hidden": 4, "batch": 8}, "test MSE"),
        ("copying", {"delay": 3, "hidden": 8, "batch": 8}, "memoryless baseline"),
        ("mnist1d", {"hidden": 4, "batch": 8, "num_samples": 500}, "published GRU 0.91"),
        ("temporal_order", {"min_length": 12, "max_length": 14, "hidden": 4, "batch": 8}, "Brier"),
    ],
)
def test_example_runs(name, settings, printed, capsys):
    if name == "mnist1d":
        require_mnist1d()
    metrics = load_example(name).main(steps=2, progress=False, **settings)
    assert printed in capsys.readouterr().out
    assert all(value == value for value in metrics.values())  # no NaN


def test_charlm_example_samples_text(capsys):
    valid, sample = load_example("charlm").main(
        seq_len=16, hidden=8, steps=2, batch=4, progress=False, prompt="import "
    )
    out = capsys.readouterr().out
    assert "bits/char" in out and sample.startswith("import ") and len(sample) == 307
    assert valid["bits_per_char"] > 0


def test_min_rnn_adding_takes_every_model_name_in_any_case():
    example = load_example("min_rnn_adding")
    assert [example.model_name(n) for n in ("MinGRU", "RGLRU", "attention")] == [
        "mingru",
        "rglru",
        "attention",
    ]
    with pytest.raises(ValueError, match=r"--models: unknown model 'GRUCell'; the models are \["):
        example.model_name("GRUCell")
