"""Cost of watching gates during training: ``fit(..., gate_stats_every=N)`` against plain steps.

The README's main job (adding problem, T=100, 64-unit LSTM, batch 64) trains in one process;
blocks of steps without the gate hook and with it alternate (A B A B …) so that a machine whose
load drifts charges both alike. The hook's own time (:attr:`GateStatsHook.seconds`) is also set
beside the steps' time. Both compile before timing starts.

python benchmarks/gate_stats_overhead.py                 # N = 50, 6 pairs of 100-step blocks
python benchmarks/gate_stats_overhead.py --every 10 --pairs 4
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import optax
from flax import nnx

from gatenets.tasks import get_task
from gatenets.train import GateStatsHook, LoopState, Schedule, make_train_step, train_loop
from gatenets.train.watch import PROBE_BATCH_SIZE

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--every", type=int, default=50, help="gate_stats_every")
parser.add_argument("--block", type=int, default=100, help="steps per timed block")
parser.add_argument("--pairs", type=int, default=6, help="pairs of blocks (without, with)")
parser.add_argument("--length", type=int, default=100)
parser.add_argument("--hidden", type=int, default=64)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--json", help="write the results here")


def main() -> None:
    args = parser.parse_args()
    task = get_task("adding", length=args.length)
    model = task.make_model("lstm", args.hidden, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    step_fn = make_train_step(task)
    batches = task.batches("train", args.batch_size, seed=0)
    probe = next(task.batches("valid", PROBE_BATCH_SIZE, seed=0))  # as fit() watches
    records: list[dict] = []
    hook = GateStatsHook(probe, Schedule(args.every, None), records.append)
    done = 0

    def block(hooks) -> float:
        nonlocal done
        began = time.perf_counter()
        state = train_loop(
            step_fn,
            batches,
            hooks,
            model=model,
            optimizer=optimizer,
            start=done,
            steps=done + args.block,
        )
        done = state.step
        return time.perf_counter() - began

    # Compile the train step and the gate probe before timing.
    block([])
    warm = LoopState(done, 0.0, 0.0, 0, done, model, optimizer)
    GateStatsHook(probe, Schedule(1, None), lambda record: None).after_step(warm)
    load_before = os.getloadavg()
    plain, watched = [], []
    hook_seconds = 0.0
    for _ in range(args.pairs):
        plain.append(block([]))
        before = hook.seconds
        watched.append(block([hook]))
        hook_seconds += hook.seconds - before
    load_after = os.getloadavg()
    per_step_plain = float(np.median(plain)) / args.block
    per_step_watched = float(np.median(watched)) / args.block
    result = {
        "every": args.every,
        "block_steps": args.block,
        "pairs": args.pairs,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "ms_per_step_plain_median": 1e3 * per_step_plain,
        "ms_per_step_watched_median": 1e3 * per_step_watched,
        "overhead_from_blocks": per_step_watched / per_step_plain - 1.0,
        "pairwise_overheads": [w / p - 1.0 for p, w in zip(plain, watched, strict=True)],
        "hook_seconds_share_of_watched_time": hook_seconds / sum(watched),
        "gate_records": len(records),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(result, stream, indent=2)


if __name__ == "__main__":
    main()
