"""The attention-sink example keeps running: its main function at a tiny size."""

import importlib.util
import pathlib
import sys

import numpy as np

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "attention_sink.py"


def load_example():
    spec = importlib.util.spec_from_file_location("attention_sink_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the class is being built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_attention_sink_example_runs_at_a_tiny_size(capsys):
    example = load_example()
    summaries = example.main(
        [
            "--steps=3",
            "--batch-size=2",
            "--seq-len=8",
            "--d-model=8",
            "--num-heads=2",
            "--num-layers=1",
            "--eval-batches=1",
            "--log-every=1",
            "--warmup-steps=1",
            "--data-chars=5000",
            "--gates=none,headwise",
        ]
    )
    assert list(summaries) == ["none", "headwise"]
    for summary in summaries.values():
        assert np.isfinite(summary["valid_loss"])
        # Query t >= 1 attends to t + 1 keys, so its first-token share lies in (0, 1).
        assert 0.0 < summary["first_token_share"] < 1.0
        assert len(summary["first_token_share_per_layer"]) == 1
    assert summaries["none"]["mean_gate"] is None
    assert 0.0 < summaries["headwise"]["mean_gate"] < 1.0
    out = capsys.readouterr().out
    assert "step 3: loss" in out and "first-token share" in out
