"""Run by test_multiprocess.py as one of two processes with two CPU devices each, or alone as
the one-process reference with four: trains the adding task data-parallel over the four
devices for four steps, either straight or ("resume") two steps, then from the checkpoint on,
and writes the final parameters (process 0) and a JSON report line.

usage: multiprocess_fit.py OUT_DIR NUM_PROCESSES PROCESS_ID COORDINATOR_ADDRESS straight|resume
"""

import json
import pathlib
import sys
import time

import jax
import numpy as np
import optax
from flax import nnx


def train(out_dir, mesh, steps, resume):
    from gatenets.tasks import get_task
    from gatenets.train import fit

    task = get_task("adding", length=6)
    model = task.make_model("lstm", 8, rngs=nnx.Rngs(0))
    result = fit(
        model,
        optax.adam(1e-2),
        task,
        steps=steps,
        batch_size=8,
        eval_every=0,
        log_every=1,
        out_dir=out_dir,
        checkpoint_every=2,
        resume=resume,
        mesh=mesh,
        progress=True,
    )
    return model, result


def main(out_dir, num_processes, process_id, coordinator_address, mode):
    from gatenets.train import data_parallel_mesh
    from gatenets.train.distributed import DistributedSettings, initialize

    began = time.perf_counter()
    if num_processes > 1:
        initialize(DistributedSettings(coordinator_address, num_processes, process_id))
    mesh = data_parallel_mesh()
    if mode == "resume":
        train(out_dir, mesh, steps=2, resume=False)
    model, result = train(out_dir, mesh, steps=4, resume=mode == "resume")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    from gatenets.tasks import get_task

    initial = nnx.to_pure_dict(
        nnx.state(get_task("adding", length=6).make_model("lstm", 8, rngs=nnx.Rngs(0)), nnx.Param)
    )
    report = {
        "moved": max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(
                jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(initial), strict=True
            )
        ),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "step": result.step,
        "train_loss": result.train_loss,
        "seconds": time.perf_counter() - began,
        "batch_rows_here": 8 * jax.local_device_count() // jax.device_count(),
    }
    if jax.process_index() == 0:
        np.savez(
            pathlib.Path(out_dir) / "params.npz",
            **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves},
        )
    print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    out_dir, num_processes, process_id, coordinator_address, mode = sys.argv[1:]
    # Set here, not at import: pytest's doctest collection imports this file, and the device
    # count can only be set before JAX's CPU backend starts.
    jax.config.update("jax_num_cpu_devices", 4 // int(num_processes))
    main(pathlib.Path(out_dir), int(num_processes), int(process_id), coordinator_address, mode)
