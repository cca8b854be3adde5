"""The loop table and the measured choice of ``loop="auto"``.

Measuring is switched off for the rest of the suite (tests/conftest.py); here it is switched
on, with the on-disk cache in a temporary folder, on tiny shapes.
"""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import dot_precisions

import gatenets
from gatenets import Loop
from gatenets import loop as loop_table
from gatenets.registry import FAMILIES

B, T, I, H = 2, 6, 3, 4


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    """Measuring on, a fresh cache folder and a fresh in-process memory."""
    monkeypatch.setenv("GATENETS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(loop_table, "_MEMO", {})
    monkeypatch.setattr(loop_table, "TUNING_BUDGET_S", 0.05)
    with gatenets.loop_tuning(True):
        yield tmp_path / "loops.json"


def x():
    return jnp.asarray(np.random.default_rng(0).standard_normal((B, T, I)), jnp.float32)


def test_every_family_has_the_generic_scan_and_rows_say_why_not():
    table = loop_table.loop_table()
    assert set(table) == set(Loop) - {Loop.AUTO}
    for name, family in FAMILIES.items():
        loops = loop_table.family_loops(name)
        assert loops[0] is Loop.SCAN
        cell = family.cell(I, H, rngs=nnx.Rngs(0))
        assert loop_table.why_not(Loop.SCAN, cell) is None
        for loop in set(table) - set(loops):
            assert "kernels for the families" in loop_table.why_not(loop, cell)
    peephole = gatenets.LSTMCell(I, H, peephole=True, rngs=nnx.Rngs(0))
    assert "peephole" in loop_table.why_not(Loop.FUSED, peephole)
    assert loop_table.resolve(peephole, "auto") is Loop.SCAN
    with pytest.raises(ValueError, match="loop='fused' does not apply: .*peephole"):
        loop_table.resolve(peephole, "fused")
    with pytest.raises(ValueError, match="runs whole stacks"):
        loop_table.resolve(peephole, "cudnn")


def test_auto_measures_once_caches_on_disk_and_never_changes_in_a_process(
    tuning, caplog, monkeypatch
):
    # One pass (no stack, which cuDNN could also run on a GPU): one request, one measurement.
    layer = gatenets.RNN(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0)))
    reference = gatenets.RNN(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0)), loop="scan")
    with caplog.at_level(logging.INFO, logger="gatenets.loop"):
        y = layer(x())
    (line,) = [r.getMessage() for r in caplog.records if "measured" in r.getMessage()]
    assert "forward" in line and "fused" in line and "scan" in line
    np.testing.assert_allclose(y, reference(x()), atol=1e-6)
    (entry,) = json.loads(tuning.read_text())["choices"].values()
    candidates = [str(m) for m in loop_table.resolve_candidates(layer.cell)]
    assert entry["loop"] in candidates and set(entry["median_ms"]) == set(candidates)
    assert entry["mode"] == "forward" and entry["device"] == loop_table.device_name()

    # Same request again: no second measurement, in this process or (from disk) a new one.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gatenets.loop"):
        layer(x())
    assert not caplog.records
    # A new process finds the choice on disk: planted there, it is what runs, unmeasured.
    loop_table._MEMO.clear()
    planted = "scan" if entry["loop"] != "scan" else "fused"
    data = json.loads(tuning.read_text())
    (key,) = data["choices"]
    data["choices"][key]["loop"] = planted
    tuning.write_text(json.dumps(data))
    ran = []
    run = loop_table.run
    monkeypatch.setattr(
        loop_table, "run", lambda cell, loop, *a: ran.append(loop) or run(cell, loop, *a)
    )
    monkeypatch.setattr(loop_table, "_measure", refuse)
    np.testing.assert_allclose(layer(x()), y, atol=1e-6)
    assert ran == [Loop(planted)]
    # Within a process a choice never changes, whatever the cache says afterwards.
    data["choices"][key]["loop"] = entry["loop"]
    tuning.write_text(json.dumps(data))
    layer(x())
    assert ran == [Loop(planted)] * 2


def refuse(*_):
    raise AssertionError("measured although the choice was known")


def test_forward_and_differentiated_calls_are_measured_apart(tuning):
    layer = gatenets.GRU(I, H, rngs=nnx.Rngs(0))
    layer(x())
    nnx.grad(lambda m, v: m(v).sum())(layer, x())
    jax.jit(lambda v: layer(v))(x())  # the forward key again, under jit: no new entry
    modes = sorted(e["mode"] for e in json.loads(tuning.read_text())["choices"].values())
    assert modes == ["forward", "train"]


def test_switched_off_auto_takes_the_static_order_without_measuring(tuning, monkeypatch):
    monkeypatch.setattr(loop_table, "_measure", refuse)
    cell = gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0))
    with gatenets.loop_tuning(False):
        chosen = loop_table.choose(
            cell,
            "auto",
            cell.initialize_carry((B, I)),
            jnp.zeros((T, B, I)),
            None,
            loop_table.LoopRequest(projected=False),
        )
    assert chosen is loop_table.resolve_candidates(cell)[0]
    assert not tuning.exists()


def test_environment_switch_is_checked(monkeypatch):
    monkeypatch.setenv("GATENETS_LOOP_TUNING", "sometimes")
    with pytest.raises(ValueError, match="GATENETS_LOOP_TUNING must be"):
        loop_table.loop_tuning_enabled()
    monkeypatch.setenv("GATENETS_LOOP_TUNING", "off")
    assert not loop_table.loop_tuning_enabled()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        gatenets.set_loop_tuning("yes")


def test_a_corrupt_cache_is_measured_again_with_a_warning(tuning):
    tuning.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        gatenets.MinGRU(I, H, rngs=nnx.Rngs(0))(x())
    assert json.loads(tuning.read_text())["choices"]


def test_a_single_candidate_is_never_measured(tuning):
    gatenets.MGU(I, H, rngs=nnx.Rngs(0))(x())  # only the generic scan runs an MGU
    gatenets.LSTM(I, H, peephole=True, rngs=nnx.Rngs(0))(x())
    assert not tuning.exists()


def test_a_cell_that_names_its_family_must_implement_every_abstract_method():
    class Unfinished(gatenets.GatedCell):  # abstract: no family, may leave step out
        gates_type = gatenets.GRUGates
        carry_type = gatenets.GRUCarry

    with pytest.raises(TypeError, match="Incomplete names a family, so it must implement step"):

        class Incomplete(Unfinished):
            family = "incomplete"

    with pytest.raises(TypeError, match="must implement coefficients"):

        class NoCoefficients(gatenets.DiagonalCell):
            family = "no_coefficients"
            gates_type = gatenets.MinGRUGates

    with pytest.raises(TypeError, match="kernel_operands, kernel_results, kernel_unsupported"):

        class NoKernelOperands(gatenets.cells.base.FusedKernelCell):
            family = "no_kernel_operands"
            gates_type = gatenets.GRUGates
            carry_type = gatenets.GRUCarry

            def step(self, carry, projected, **_):
                return carry, carry.h, None


def test_a_new_cell_is_one_file_and_one_row():
    import gated_elman

    row = gated_elman.ROW
    assert row.layer.__name__ == "GatedElman" and row.layer.cell_type is gated_elman.GatedElmanCell
    assert row.layer is gatenets.RecurrentStack.of(gated_elman.GatedElmanCell)
    assert loop_table.family_loops(row.name) == (Loop.SCAN,)
    with pytest.raises(ValueError, match="family must be a lower-case name"):
        gatenets.registry.CellFamily.of(gatenets.GatedCell)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_precision_reaches_every_matmul_of_every_loop(name):
    family = FAMILIES[name]
    highest = jax.lax.Precision.HIGHEST
    for loop in loop_table.family_loops(name):
        # The native kernels' matmuls are CPU BLAS calls, always full float32: no dot here.
        if loop in (*loop_table.STACK_LOOPS, Loop.NATIVE):
            continue
        layer = family.layer(I, H, loop=loop, precision="highest", rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

        def loss(params, v, graphdef=graphdef, rest=rest):
            return nnx.merge(graphdef, params, rest)(v).sum()

        with jax.default_matmul_precision("bfloat16"):
            jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x()).jaxpr
        precisions = dot_precisions(jaxpr)
        assert precisions, (name, loop)
        assert all(p in ("highest", (highest, highest)) for p in precisions), (name, loop)
    with pytest.raises(ValueError, match="precision must be None, 'default'"):
        family.cell(I, H, precision="exact", rngs=nnx.Rngs(0))
