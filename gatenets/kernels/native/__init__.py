r"""Native CPU LSTM and GRU sequence kernels: the whole time loop in one C++ call through
:mod:`jax.ffi`, with the matmuls from a BLAS (MKL or OpenBLAS).

Under XLA:CPU a ``lax.scan`` step of an LSTM spends about a third of its time dispatching ops
and running the gate arithmetic as separate loops, besides the matmul. The C++ loop here does,
per step, one GEMM per thread for :math:`h_{t-1} U` (each thread owns a slice of the hidden
units, see :func:`set_threads`) and one vectorised pass of gate math over its units; the input
projection (none when the inputs come pre-projected) runs a chunk of about 512 rows at a
time. Its backward loop computes only what is sequential, :math:`\delta z_t` and
:math:`\delta h_{t-1} = \delta z_t U^\top`, and the weight gradients are one large GEMM each
after the loop, exactly as in :mod:`gatenets.kernels.lstm` and :mod:`gatenets.kernels.gru`,
whose functions :func:`lstm_sequence_native` and :func:`gru_sequence_native` replace
argument for argument. The C++ source (``gatenets/kernels/csrc/recurrent.cc``) has one forward
and one backward time loop, templated over the cell (LSTM, GRU).

The package is in three parts: ``_build`` (compiler, BLAS, the cache and its integrity
check), ``_registration`` (loading the library, its FFI targets and threads) and
``_autodiff`` (the custom-VJP functions).

Build: the source is compiled on first use with the system C++ compiler against the XLA FFI
headers of the *installed* jaxlib (:func:`jax.ffi.include_dir`) and a BLAS: MKL when the
``mkl`` and ``mkl-include`` wheels are installed (``pip install gatenets[mkl]``; its packed GEMM
packs the recurrent kernel once per loop instead of once per step, and is markedly faster at
these shapes), else the OpenBLAS of the ``scipy-openblas32`` wheel
(``GATENETS_NATIVE_BLAS=mkl|openblas|auto`` forces one), into a cache directory
(``$GATENETS_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/gatenets/native``, else
``~/.cache/gatenets/native``), keyed by a hash of the source, the compiler, its flags, jaxlib's
version and the BLAS. A cached library is loaded only when its size and SHA-256 match the
record written beside it at build time; otherwise it is rebuilt (a damaged library would crash
the process when loaded). A cache that cannot be written gives a warning, and the library is
then built in a temporary directory in each process. Compiling at install time instead would
need jax and jaxlib (about 600 MB with their dependencies) in pip's isolated build environment
of every fresh install, and would tie the binary to the jaxlib present at build time; here the
headers always match the jaxlib that loads the handlers, the code is tuned to the CPU that runs
it (AVX2/FMA when the CPU has them), and an install never fails for want of a compiler. The
compile takes a few seconds, once per cache key. Without a compiler or the BLAS,
:func:`available` is False and ``unavailable_reason`` says why; callers then use the pure-JAX
kernels. Set ``GATENETS_NATIVE=0`` to turn the native kernels off.

Scope: float32 and float64, constant gate overrides, no ``remat``; ``precision`` is accepted
and ignored (CPU matmuls are full precision).
"""

from gatenets.kernels.native._autodiff import gru_sequence_native as gru_sequence_native
from gatenets.kernels.native._autodiff import lstm_sequence_native as lstm_sequence_native
from gatenets.kernels.native._registration import available as available
from gatenets.kernels.native._registration import blas as blas
from gatenets.kernels.native._registration import set_threads as set_threads
from gatenets.kernels.native._registration import threads as threads

__all__ = [
    "available",
    "blas",
    "gru_sequence_native",
    "lstm_sequence_native",
    "set_threads",
    "threads",
    "unavailable_reason",
]


def __getattr__(name: str) -> str:
    # unavailable_reason: read when asked, so that it is never a stale copy of the state.
    if name == "unavailable_reason":
        from gatenets.kernels.native import _registration

        return _registration.unavailable_reason()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
