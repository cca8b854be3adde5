"""Checkpoints verify themselves: a flipped bit, random bytes, a truncated or missing file, a
missing manifest or non-finite values are refused, naming the step and the file, and an
earlier intact step can still be restored."""

import json
import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import gatenets
from gatenets.train import Checkpointer, CorruptCheckpointError
from gatenets.train.checkpoint import MANIFEST


def model_and_optimizer(seed):
    model = gatenets.GRU(3, 5, rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


def params_of(model):
    return [np.asarray(p) for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))]


def largest_file(step_dir):
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST]
    return max(files, key=lambda p: p.stat().st_size)


def flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def random_bytes(path):
    data = bytearray(path.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    start = max(0, len(data) // 2 - 100)
    data[start : start + 200] = noise
    path.write_bytes(bytes(data[: max(len(data), start + 200)]))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "one flipped bit": (flip_a_bit, "does not match its checksum"),
    "200 random bytes": (random_bytes, "does not match its checksum|bytes; "),
    "truncated": (truncate, r"has \d+ bytes; \d+ were written"),
    "deleted": (lambda path: path.unlink(), "is missing"),
}


@pytest.fixture
def saved(tmp_path):
    """Steps 2 and 4 of two different models in one directory; returns the directory and
    the parameters of each step."""
    directory = tmp_path / "checkpoints"
    with Checkpointer(directory, keep=3) as checkpoints:
        params = {}
        for step, seed in ((2, 0), (4, 1)):
            model, optimizer = model_and_optimizer(seed)
            checkpoints.save(step, model, optimizer)
            params[step] = params_of(model)
    return directory, params


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_refused_naming_the_step_and_file(saved, corruption):
    directory, params = saved
    corrupt, problem = CORRUPTIONS[corruption]
    victim = largest_file(directory / "4")
    name = victim.relative_to(directory / "4").as_posix()
    corrupt(victim)
    model, optimizer = model_and_optimizer(7)
    before = params_of(model)
    with Checkpointer(directory) as checkpoints:
        with pytest.raises(CorruptCheckpointError) as raised:
            checkpoints.restore(model, optimizer)
        message = str(raised.value)
        assert message.startswith(f"checkpoint step 4 in {str(directory)!r} is corrupt: file ")
        assert repr(name) in message and re.search(problem, message)
        assert message.endswith(
            "restore an earlier step with step=N (gatenets run … --resume-step N); the "
            "earlier steps are [2]."
        )
        # Nothing was loaded from the corrupt step.
        for a, b in zip(params_of(model), before, strict=True):
            np.testing.assert_array_equal(a, b)
        assert checkpoints.restore(model, optimizer, step=2) == 2
    for a, b in zip(params_of(model), params[2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_without_its_manifest_is_refused(saved):
    directory, _ = saved
    (directory / "4" / MANIFEST).unlink()
    with Checkpointer(directory) as checkpoints:
        with pytest.raises(
            CorruptCheckpointError,
            match=rf"step 4 .* is corrupt: it has no {MANIFEST} \(its save did not finish",
        ):
            checkpoints.restore(*model_and_optimizer(7))


def test_a_checkpoint_holding_nan_is_refused_naming_the_entry(tmp_path):
    model, optimizer = model_and_optimizer(0)
    kernel = model.layers[0].cell.kernel
    kernel[...] = kernel[...].at[1, 2].set(np.nan)
    with Checkpointer(tmp_path) as checkpoints:
        checkpoints.save(3, model, optimizer)
        with pytest.raises(
            CorruptCheckpointError,
            match=r"step 3 .* is corrupt: model entry 'layers/0/cell/kernel' holds NaN or "
            r"infinite values; there is no earlier step to restore; start the run again\.",
        ):
            checkpoints.restore(*model_and_optimizer(7))


def test_restoring_a_step_that_does_not_exist_names_the_steps(saved):
    directory, _ = saved
    with Checkpointer(directory) as checkpoints:
        with pytest.raises(FileNotFoundError, match=r"no step 3 in .*; the steps are \[2, 4\]"):
            checkpoints.restore(*model_and_optimizer(7), step=3)


def test_every_finished_save_carries_a_manifest_of_all_its_files(saved):
    directory, _ = saved
    for step in ("2", "4"):
        files = {
            p.relative_to(directory / step).as_posix()
            for p in (directory / step).rglob("*")
            if p.is_file() and p.name != MANIFEST
        }
        listed = json.loads((directory / step / MANIFEST).read_text())["files"]
        assert set(listed) == files and len(files) > 5
