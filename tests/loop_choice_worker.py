"""One of two processes joined by ``jax.distributed``, each "measuring" a different winner
for the same request: prints the loop ``loop="auto"`` ran, which must be process 0's."""

import json
import sys

import jax
import jax.numpy as jnp
from flax import nnx

import gatenets
from gatenets import loop as loop_table
from gatenets.train.distributed import DistributedSettings, initialize


def main(process_id: int, coordinator: str, winner: str) -> None:
    initialize(DistributedSettings(coordinator, 2, process_id))

    def measure(candidates, timers, mode):  # a machine where `winner` is the fastest
        return gatenets.Loop(winner), {"loop": winner, "mode": mode}

    loop_table._measure = measure
    layer = gatenets.LSTM(3, 4, rngs=nnx.Rngs(0))
    with gatenets.loop_tuning(True), loop_table.recorded_loops() as ran:
        jax.jit(lambda x: layer(x)).lower(jnp.ones((2, 5, 3)))
    print("REPORT " + json.dumps([str(loop) for _, loop in ran]), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
