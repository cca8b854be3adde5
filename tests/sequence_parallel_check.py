"""Run by test_sequence_parallel.py in a fresh process with four CPU devices: each diagonal
layer with its time axis split over the devices against the same layer unsplit (values and
gradients, with padding, both directions, both loops), and prints the largest differences as
JSON."""

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

import gatenets

CELLS = {
    "mingru": gatenets.MinGRUCell,
    "minlstm": gatenets.MinLSTMCell,
    "rglru": gatenets.RGLRUCell,
}


def loss_and_grads(rnn, x, *, seq_lengths, weights):
    graphdef, params = nnx.split(rnn)

    def loss(params, x):
        y = nnx.merge(graphdef, params)(x, seq_lengths=seq_lengths)
        return jnp.sum(y * weights), y

    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return y, jax.tree_util.tree_leaves(grads)


def largest_difference(a, b):
    return max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


# One case per row, together covering every cell, both directions, both loops and both meshes
# (time alone; batch and time) while compiling little.
CASES = (
    ("mingru", False, "linear_scan", "time"),
    ("minlstm", True, "associative", "data_time"),
    ("rglru", True, "linear_scan", "time"),
    ("rglru", False, "associative", "data_time"),
)


def main():
    meshes = {
        "time": (Mesh(np.array(jax.devices()), ("time",)), None),
        "data_time": (Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "time")), "data"),
    }
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 8, 3)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(2, 8, 4)), jnp.float32)
    # The second sequence is padded after 3 steps: its chunks 2 to 4 hold the state.
    seq_lengths = jnp.array([8, 3])
    report = {"devices": jax.device_count(), "cases": {}}
    for name, reverse, loop, mesh_name in CASES:
        rnn = gatenets.RNN(CELLS[name](3, 4, rngs=nnx.Rngs(1)), reverse=reverse, loop=loop)
        run = jax.jit(
            functools.partial(loss_and_grads, rnn, seq_lengths=seq_lengths, weights=weights)
        )
        y, grads = run(x)
        mesh, batch_axis = meshes[mesh_name]
        with gatenets.sequence_parallel(mesh, "time", batch_axis=batch_axis):
            # A fresh jit: the one above was traced outside the block and stays unsplit.
            compiled = jax.jit(run.__wrapped__).lower(x).compile()
        y_split, grads_split = compiled(x)
        key = f"{name}/{'reverse' if reverse else 'forward'}/{loop}/{mesh_name}"
        report["cases"][key] = {
            "values": largest_difference(y, y_split),
            "gradients": largest_difference(grads, grads_split),
            "scale": float(jnp.max(jnp.abs(y))),
            "padded_output": float(jnp.max(jnp.abs(y_split[1, 3:]))),
            "all_gather": "all-gather" in compiled.as_text(),
        }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    # Set here, not at import: pytest's doctest collection imports this file, and the device
    # count can only be set before JAX's CPU backend starts.
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    main()
