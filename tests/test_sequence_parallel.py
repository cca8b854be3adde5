"""Sequence parallelism: MinGRU, MinLSTM and RG-LRU with the time axis split over four CPU
devices equal the unsplit layers, values and gradients, with padding; bad meshes are named."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cpu_process_env
from jax.sharding import Mesh

import gatenets
from gatenets.kernels.parallel_scan import linear_recurrence

ROOT = pathlib.Path(__file__).parent.parent


def test_split_layers_equal_unsplit_layers_on_four_devices():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sequence_parallel_check.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cpu_process_env(),
        timeout=50,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["devices"] == 4
    assert {key.split("/")[0] for key in report["cases"]} == {"mingru", "minlstm", "rglru"}
    for key, case in report["cases"].items():
        assert case["all_gather"], f"{key}: the time axis was not split"
        assert case["scale"] > 0.1, key
        assert case["values"] < 1e-6, (key, case)
        assert case["gradients"] < 5e-6, (key, case)
        assert case["padded_output"] == 0.0, key


def test_one_device_split_equals_linear_recurrence_with_masks():
    rng = np.random.default_rng(3)
    log_a = jnp.asarray(-rng.uniform(0.0, 2.0, size=(6, 2, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(6, 2, 3)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    valid = jnp.arange(6)[:, None] < jnp.array([[6, 4]])
    mesh = Mesh(jax.devices()[:1], ("time",))
    expected = linear_recurrence(log_a, b, h0, valid=valid, reverse=True, loop="linear_scan")
    got = jax.jit(
        lambda log_a, b, h0: gatenets.sharded_linear_recurrence(
            log_a, b, h0, mesh=mesh, axis_name="time", valid=valid, reverse=True
        )
    )(log_a, b, h0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_bad_meshes_and_axes_are_named():
    mesh = Mesh(jax.devices()[:1], ("time",))
    zeros = jnp.zeros((4, 1, 2))
    with pytest.raises(ValueError, match="axis_name must be one of the mesh axes"):
        gatenets.sharded_linear_recurrence(zeros, zeros, zeros[0], mesh=mesh, axis_name="seq")
    with pytest.raises(ValueError, match="h0 must be"):
        gatenets.sharded_linear_recurrence(zeros, zeros, zeros, mesh=mesh, axis_name="time")
    with pytest.raises(ValueError, match="batch_axis must be one of"):
        with gatenets.sequence_parallel(mesh, "time", batch_axis="data"):
            pass
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh; got list"):
        with gatenets.sequence_parallel(jax.devices(), "time"):
            pass
    with pytest.raises(ValueError, match="mesh axis 'time' must be of type Auto"):
        explicit = jax.make_mesh((1,), ("time",), axis_types=(jax.sharding.AxisType.Explicit,))
        with gatenets.sequence_parallel(explicit, "time"):
            pass
    assert gatenets.kernels.sequence_parallel.active_sequence_sharding() is None
