"""Run by test_training.py in a fresh process with four virtual CPU devices: trains the same
tiny model with and without data parallelism and prints the differences as JSON."""

import json
import os
import sys

import jax
import numpy as np
import optax
from flax import nnx

from gatenets.tasks import get_task
from gatenets.train import data_parallel_mesh, fit, shard_batch


def train(mesh):
    task = get_task("adding", length=6)
    model = task.make_model("lstm", 8, rngs=nnx.Rngs(0))
    result = fit(
        model,
        optax.adam(1e-2),
        task,
        steps=4,
        batch_size=8,
        eval_every=0,
        log_every=1,
        mesh=mesh,
        progress=False,
    )
    params = jax.tree_util.tree_leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return result, params


def main():
    mesh = data_parallel_mesh()
    task = get_task("adding", length=6)
    batch = shard_batch(next(task.batches("train", 8, seed=0)), mesh)
    single, single_params = train(None)
    sharded, sharded_params = train(mesh)
    report = {
        "devices": jax.device_count(),
        "batch_devices": len(batch.inputs.sharding.device_set),
        "batch_shard_rows": [s.data.shape[0] for s in batch.inputs.addressable_shards],
        "param_devices": min(len(p.sharding.device_set) for p in sharded_params),
        "single_loss": single.train_loss,
        "sharded_loss": sharded.train_loss,
        "max_param_difference": max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(single_params, sharded_params, strict=True)
        ),
        "params_moved": max(float(np.max(np.abs(np.asarray(a)))) for a in single_params),
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    # Set here, not at import: pytest's doctest collection imports this file, and JAX reads
    # the flag only when its CPU backend starts, so it must not leak into the test session.
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    main()
