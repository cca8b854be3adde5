"""Times the native (C++ / XLA FFI) LSTM and GRU kernels against the JAX fused kernels and
PyTorch's nn.LSTM / nn.GRU, forward and forward + backward.

Each shape runs in interleaved rounds (every variant once per round, A B C A B C ...) and the
median per variant is reported, so that a change of machine load hits all variants alike. The
``bound`` column is the matmul-bound time: the run's FLOPs divided by the best sgemm rate
measured (OpenBLAS, jnp.dot, torch.matmul; 1 or 2 threads) at the per-step shape
``[batch, in + hidden] x [in + hidden, gates * hidden]``; ``share`` is bound / time. The
machine's load (``uptime``) is printed before and after each phase: on a busy machine the
numbers are only rough guidance, and the CPU time per call is the steadier measure.

Usage::

    python benchmarks/native_kernel.py                  # both cells, all shapes
    python benchmarks/native_kernel.py --cell lstm --rounds 9 --shapes 64,128,64,256
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from gatenets.kernels import gru_sequence, lstm_sequence, native

SHAPES = [  # (batch, time, input, hidden)
    (64, 128, 64, 256),
    (32, 256, 128, 512),
    (16, 512, 32, 128),
    (128, 64, 256, 1024),
    (1, 1024, 32, 256),
]
GATES = {"lstm": 4, "gru": 3}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _openblas():
    import scipy_openblas32

    lib = ctypes.CDLL(
        os.path.join(scipy_openblas32.get_lib_dir(), f"lib{scipy_openblas32.get_library()}.so")
    )
    lib.scipy_cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [
        ctypes.c_float,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_float,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    return lib


def sgemm_rates(m: int, k: int, n: int, rounds: int) -> dict[str, float]:
    """GFLOP/s of ``[m, k] @ [k, n]`` in float32: OpenBLAS (1 and 2 threads), jnp.dot under
    jit, torch.matmul (1 and 2 threads), interleaved, median of ``rounds``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.zeros((m, n), np.float32)
    flops = 2.0 * m * n * k
    repeats = max(1, int(5e7 / flops))
    variants = {}
    try:
        lib = _openblas()

        def blas(threads):
            def run():
                lib.scipy_openblas_set_num_threads(threads)
                for _ in range(repeats):
                    lib.scipy_cblas_sgemm(
                        101, 111, 111, m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data, n, 0.0,
                        c.ctypes.data, n,
                    )  # fmt: skip

            return run

        variants["openblas-1"] = blas(1)
        variants["openblas-2"] = blas(2)
    except ImportError:
        pass
    dot = jax.jit(jnp.dot)
    ja, jb = jnp.asarray(a), jnp.asarray(b)

    def jax_dot():
        for _ in range(repeats):
            out = dot(ja, jb)
        out.block_until_ready()

    variants["jnp.dot"] = jax_dot
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def torch_mm(threads):
            def run():
                torch.set_num_threads(threads)
                for _ in range(repeats):
                    torch.matmul(ta, tb)

            return run

        variants["torch-1"] = torch_mm(1)
        variants["torch-2"] = torch_mm(2)
    except ImportError:
        pass
    times = interleave(variants, rounds)
    if "openblas-1" in variants:
        # The native kernels run OpenBLAS single-threaded and split the work themselves.
        lib.scipy_openblas_set_num_threads(1)
    return {name: flops * repeats / t / 1e9 for name, t in times.items()}


def interleave(variants: dict, rounds: int, cpu: dict | None = None) -> dict[str, float]:
    """Median seconds per call of each variant, run once each per round after a warm-up.

    With ``cpu`` (a dict), also stores each variant's median process CPU seconds per call: on a
    busy machine the CPU time of a single-threaded variant is a steadier measure of its work than
    the wall time (threads that spin while waiting count in it, though).
    """
    for run in variants.values():
        run()
    samples = {name: [] for name in variants}
    cpu_samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            samples[name].append(time.perf_counter() - start)
            cpu_samples[name].append(time.process_time() - start_cpu)
    if cpu is not None:
        cpu.update({name: statistics.median(values) for name, values in cpu_samples.items()})
    return {name: statistics.median(values) for name, values in samples.items()}


def jax_variants(cell: str, batch: int, steps: int, features: int, hidden: int) -> dict:
    gates = GATES[cell]
    rng = np.random.default_rng(1)

    def rand(*shape):
        return jnp.asarray(rng.standard_normal(shape) * 0.1, jnp.float32)

    xs, u = rand(steps, batch, features), rand(hidden, gates * hidden)
    w, b = rand(features, gates * hidden), rand(gates * hidden)
    c0, h0 = rand(batch, hidden), rand(batch, hidden)
    weights = rand(steps, batch, hidden)

    def make(function):
        if cell == "lstm":

            def hs(xs, u, w, b):
                return function(xs, u, c0, h0, input_kernel=w, bias=b)[2]
        else:

            def hs(xs, u, w, b):
                return function(xs, u, h0, input_kernel=w, bias=b)[1]

        forward = jax.jit(hs)
        backward = jax.jit(
            jax.grad(lambda *args: jnp.sum(hs(*args) * weights), argnums=(0, 1, 2, 3))
        )
        return (
            lambda: forward(xs, u, w, b).block_until_ready(),
            lambda: jax.block_until_ready(backward(xs, u, w, b)),
        )

    out = {}
    fused = make(lstm_sequence if cell == "lstm" else gru_sequence)
    out["jax-fused"] = fused
    if native.available():
        function = native.lstm_sequence_native if cell == "lstm" else native.gru_sequence_native
        runs = make(function)
        for threads in (1, 2):

            def with_threads(run, threads=threads):
                def go():
                    native.set_threads(threads)  # the loops' own threads (OpenBLAS stays at 1)
                    run()

                return go

            out[f"native-{threads}"] = tuple(with_threads(run) for run in runs)
    return out


def torch_variants(cell: str, batch: int, steps: int, features: int, hidden: int) -> dict:
    try:
        import torch
    except ImportError:
        return {}
    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(features, hidden)
    x = torch.randn(steps, batch, features)
    weights = torch.randn(steps, batch, hidden)

    def forward():
        with torch.no_grad():
            module(x)

    def backward():
        x_grad = x.detach().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        (module(x_grad)[0] * weights).sum().backward()

    out = {}
    for threads in (1, 2):

        def with_threads(run, threads=threads):
            def go():
                torch.set_num_threads(threads)
                run()

            return go

        out[f"torch-{threads}"] = (with_threads(forward), with_threads(backward))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=["lstm", "gru", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--shapes",
        nargs="*",
        default=None,
        help="batch,time,input,hidden tuples (default: the five standard shapes)",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["jax-fused", "native-1", "native-2", "torch-1", "torch-2"],
        help="which of jax-fused, native-1, native-2, torch-1, torch-2 to run",
    )
    args = parser.parse_args()
    chosen = set(args.variants)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    cells = ["lstm", "gru"] if args.cell == "both" else [args.cell]
    if args.rounds < 7:
        print(f"note: {args.rounds} rounds (medians of at least 7 are the standard)")
    print("load before:", uptime())
    native_blas = native.blas() if native.available() else "-"
    print(
        f"native available: {native.available()} {native.unavailable_reason} (BLAS: {native_blas})"
    )
    for cell in cells:
        for batch, steps, features, hidden in shapes:
            gates = GATES[cell]
            rates = sgemm_rates(batch, features + hidden, gates * hidden, args.rounds)
            # The best rate any library reached at the step shape: the bound no variant should beat
            # by much (MKL's packed GEMM, which only the native kernel uses, can).
            best = max(rates.values())
            # Forward: one [batch, in + hidden] x [in + hidden, gates hidden] product per step.
            # Backward: dz U^T per step, and dU, dW, dX after the loop: twice the forward.
            forward_flops = 2.0 * steps * batch * (features + hidden) * gates * hidden
            bounds = {"fwd": forward_flops / best / 1e9, "fwd+bwd": 3 * forward_flops / best / 1e9}
            variants = jax_variants(cell, batch, steps, features, hidden)
            variants.update(torch_variants(cell, batch, steps, features, hidden))
            print(
                f"\n{cell} B={batch} T={steps} I={features} H={hidden}  sgemm GFLOP/s at the step "
                "shape: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
            )
            for index, phase in enumerate(("fwd", "fwd+bwd")):
                cpu = {}
                times = interleave(
                    {name: runs[index] for name, runs in variants.items() if name in chosen},
                    args.rounds,
                    cpu,
                )
                bound = bounds[phase]
                print(f"  {phase:8s} matmul-bound {bound * 1e3:8.1f} ms   ({uptime()})")
                for name, seconds in times.items():
                    print(
                        f"    {name:10s} {seconds * 1e3:9.1f} ms   share {bound / seconds:5.2f}"
                        f"   cpu {cpu[name] * 1e3:9.1f} ms"
                    )
    print("\nload after:", uptime())


if __name__ == "__main__":
    main()
