"""`gatenets bench`: one tiny point end to end, the load warning, the table, bad options."""

import importlib.util
import json

import jax.numpy as jnp
import pytest
from flax import nnx

import gatenets
from gatenets import bench
from gatenets.cli import main


def test_bench_times_gatenets_against_every_installed_peer_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "gru", "--sizes", "2,3,2,4", "--modes", "forward"]
    argv += ["--variants", "plain,one_loop", "--bidirectional", "--repeats", "2", "--warmup", "0"]
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "load average" in printed and "share" in printed
    data = json.loads(out.read_text())
    assert len(data["environment"]["load_average_before"]) == 3
    rows = data["rows"]
    assert [row["variant"] for row in rows] == ["plain", "one_loop"]
    # Tuning is off in the suite: "auto" ran the first loop of the static order that applies.
    assert rows[0]["loop"] == str(
        gatenets.loop.resolve_candidates(gatenets.GRUCell(2, 4, rngs=nnx.Rngs(0)))[0]
    )
    assert data["environment"]["device"] == gatenets.loop.device_name()
    # PyTorch is a peer where it is installed (it is in .[dev]; a GPU machine may lack it).
    torch = {"torch1", "torch2"} if importlib.util.find_spec("torch") else set()
    for row in rows:
        assert set(row["peers_ms"]) == {"flax"} | torch
        fastest = min(row["peers_ms"].values())
        assert row["x_fastest_peer"] == pytest.approx(fastest / row["gatenets_ms"])
        assert row["x_flax"] == pytest.approx(row["peers_ms"]["flax"] / row["gatenets_ms"])
        assert row["bound_share"] == pytest.approx(row["matmul_bound_ms"] / row["gatenets_ms"])
        assert len(row["times_ms"]) == 2
    # Matmul FLOPs of a 1-layer bidirectional GRU forward: 2 * B * T * (I + H) * 3H per direction.
    assert bench.Point("gru", 2, 3, 2, 4, "forward", 1, True).flops() == 2 * (2 * 2 * 3 * 6 * 12)
    assert main(["bench", "--markdown", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| model | mode | layers |") and "forward (one_loop)" in table


def test_loops_variant_is_plain_and_every_loop_this_machine_runs():
    expanded = bench.expand_loops(["loops"])
    assert expanded[0] == "plain" and "scan" in expanded and "fused" in expanded
    cudnn_here = gatenets.loop.loop_table()[gatenets.Loop.CUDNN].available() is None
    assert ("cudnn" in expanded) == cudnn_here
    assert all(v in bench.VARIANTS for v in expanded)
    assert bench.expand_loops(["plain", "gates"]) == ["plain", "gates"]


def test_load_warning_only_above_half_the_cores():
    assert bench.load_warning(0.9, 2) is None
    assert "WARNING: load average 1.20 exceeds half of the 2 cores" in bench.load_warning(1.2, 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "rnn"], "--models: unknown 'rnn'"),
        (["--variants", "fast"], "--variants: unknown 'fast'"),
        (["--sizes", "1,2,3"], "--sizes: each point is B,T,I,H"),
        (["--layers", "0"], "--layers, --repeats and --unroll must be >= 1"),
        (["--unroll", "0"], "--layers, --repeats and --unroll must be >= 1"),
    ],
)
def test_bench_bad_options_are_one_line_with_exit_2(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bf16_variants_run_mixed_precision_against_peers_in_mixed_precision():
    point = bench.Point("gru", 2, 3, 2, 4, "train")
    assert [bench.peer_variant(v) for v in ("plain", "mask", "bf16", "bf16_fused", "fused")] == [
        "plain",
        "mask",
        "bf16",
        "bf16",
        "plain",
    ]
    module = bench.gatenets_module(point, "bf16_fused")
    assert module.layers[0].loop == gatenets.Loop.FUSED
    assert module.cell.dtype == jnp.bfloat16 and module.cell.kernel[...].dtype == jnp.float32
    assert bench.gatenets_module(point, "bf16").layers[0].loop == gatenets.Loop.AUTO
    assert bench.gatenets_module(point._replace(unroll=4), "bf16").layers[0].unroll == 4
    flax_cell = bench.flax_module(point, "bf16")[0].cell
    assert flax_cell.dtype == jnp.bfloat16 and flax_cell.param_dtype == jnp.float32
