r"""A whole LSTM stack as one cuDNN call, through ``jax.experimental.rnn.lstm``.

cuDNN runs every layer and direction of an LSTM in one fused call on NVIDIA GPUs. It computes
the plain LSTM — sigmoid and tanh, PyTorch's double bias, no peepholes, no projection — in
float32, on right-padded sequences given by their lengths, and returns no gates. Where a
gatenets stack asks for exactly that, ``Loop.CUDNN`` sends it there; everything else runs on
the gatenets kernels.

cuDNN's weights are one packed vector (layout documented in ``jax.experimental.rnn``): for
each pseudo-layer (layer ``l``, direction ``d``, in the order forward-0, backward-0,
forward-1, …) ``W_ih`` ``[4H, in]`` then ``W_hh`` ``[4H, H]``, all of them first, then every
``b_ih`` and ``b_hh`` ``[4H]``, gate blocks in the order ``i, f, g, o`` — gatenets' own order,
so a gatenets kernel is ``W_ih.T`` and its ``bias`` (which already holds the forget bias or the
chrono initialisation) is ``b_ih``. The packing is plain array code, so autodiff carries the
gradient of the packed vector back to the gatenets parameters exactly.

:data:`lstm_call` is the one call into JAX's cuDNN primitive. Tests replace it with
:func:`reference_lstm_call`, JAX's pure-JAX ``lstm_ref`` on the same packed weights, so that
every line but the cuDNN call itself runs on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from gatenets._typing import Array


def pack_lstm_weights(cells: Sequence[Any]) -> Array:
    """cuDNN's packed weight vector from gatenets ``LSTMCell`` s in pseudo-layer order.

    Args:
      cells: ``num_layers * num_directions`` cells: forward-0, backward-0, forward-1, …

    Returns:
      ``[num_params]`` float32, as ``jax.experimental.rnn.lstm`` takes it.
    """
    matrices, biases = [], []
    for cell in cells:
        kernel = cell.kernel[...].astype(jnp.float32)
        matrices += [kernel.T, cell.recurrent_kernel[...].astype(jnp.float32).T]
        hidden4 = kernel.shape[-1]
        if cell.use_bias:
            b_ih = cell.bias[...].astype(jnp.float32)
            b_hh = (
                cell.recurrent_bias[...].astype(jnp.float32)
                if cell.use_recurrent_bias
                else jnp.zeros((hidden4,), jnp.float32)
            )
        else:
            b_ih = b_hh = jnp.zeros((hidden4,), jnp.float32)
        biases += [b_ih, b_hh]
    return jnp.concatenate([m.reshape(-1) for m in matrices] + biases)


def available() -> bool:
    """Whether JAX can run its cuDNN LSTM here: a CUDA backend with JAX's GPU RNN plugin."""
    if jax.default_backend() != "gpu":
        return False
    from jax.experimental import rnn

    return getattr(rnn, "gpu_rnn", None) is not None


def cudnn_lstm_call(x, h0, c0, weights, seq_lengths, **config):
    """JAX's cuDNN LSTM: ``x [batch, time, in]`` → ``(y, h_n, c_n)``."""
    from jax.experimental import rnn

    return rnn.lstm(x, h0, c0, weights, seq_lengths, **config)


def reference_lstm_call(x, h0, c0, weights, seq_lengths, **config):
    """The same contract as :func:`cudnn_lstm_call`, computed by JAX's pure-JAX ``lstm_ref``
    on the unpacked weights: what stands in for cuDNN where there is no GPU (tests)."""
    from jax.experimental import rnn

    sizes = (config["input_size"], config["hidden_size"], config["num_layers"])
    bidirectional = config["bidirectional"]
    unpacked = rnn.unpack_lstm_weights(weights, *sizes, bidirectional)
    return rnn.lstm_ref(x, h0, c0, *unpacked, seq_lengths, *sizes, config["dropout"], bidirectional)


lstm_call = cudnn_lstm_call
"""The call :func:`lstm_stack` makes; tests set it to :func:`reference_lstm_call`."""


def lstm_stack(
    x: Array,
    h0: Array,
    c0: Array,
    weights: Array,
    seq_lengths: Array,
    *,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    bidirectional: bool,
) -> tuple[Array, Array, Array]:
    r"""Runs an LSTM stack through :data:`lstm_call` (cuDNN on a GPU).

    Args:
      x: ``[batch, time, input_size]`` float32 inputs, right-padded.
      h0: ``[num_layers * num_directions, batch, hidden]`` initial hidden states.
      c0: the same for the cell states.
      weights: packed weights (:func:`pack_lstm_weights`).
      seq_lengths: ``[batch]`` integer lengths in ``[0, time]``.
      input_size: ``x``'s last axis.
      hidden_size: each layer's hidden size.
      num_layers: stacked layers.
      bidirectional: whether each layer runs both directions.

    Returns:
      ``(y [batch, time, hidden * directions], h_n, c_n)``; ``y`` is zero at padded steps, and
      a sequence of length 0 keeps its initial carry (cuDNN does not define that case, so it
      is restored here).
    """
    lengths = seq_lengths.astype(jnp.int32)
    y, h_n, c_n = lstm_call(
        x,
        h0,
        c0,
        weights,
        lengths,
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        dropout=0.0,
        bidirectional=bidirectional,
    )
    empty = (lengths == 0)[None, :, None]
    valid = jnp.arange(x.shape[1])[None, :, None] < lengths[:, None, None]
    return (
        jnp.where(valid, y, jnp.zeros((), y.dtype)),
        jnp.where(empty, h0, h_n),
        jnp.where(empty, c0, c_n),
    )


def why_not(stack: Any, request: Any) -> str | None:
    """Why ``stack`` (a ``gatenets.LSTM``) and this call cannot run as one cuDNN call, beyond
    the machine (the loop table checks :func:`available`), or None if they can."""
    cells = [rnn.cell for rnn in stack.rnns]
    if any(c.peephole or c.proj_size is not None for c in cells):
        return "cuDNN has no peepholes or projection"
    if not all(c.standard_functions for c in cells):
        return "cuDNN computes sigmoid gates and tanh activations only"
    if any(c.compute_dtype != jnp.float32 for c in cells):
        return "cuDNN's LSTM computes in float32 only"
    if request.padding == "mask":
        return "it takes right padding by seq_lengths, not a general mask"
    if request.return_gates:
        return "cuDNN returns no gates (return_gates=True)"
    if request.gate_overrides:
        return "cuDNN takes no gate overrides"
    dropouts = (stack.dropout, *(rnn.recurrent_dropout for rnn in stack.rnns))
    if any(d.rate > 0 and not d.deterministic for d in dropouts):
        return "dropout is active (training mode)"
    return None


def run_stack(stack: Any, kernel: Any, x: Array, carries: list[Any], lengths: Array):
    """The stack as one call of ``kernel`` (:func:`lstm_stack`).

    Args:
      stack: the ``gatenets.LSTM``.
      kernel: :func:`lstm_stack` (the loop table's kernel).
      x: ``[batch, time, features]`` inputs, zero at padded steps.
      carries: the initial ``LSTMCarry`` of every pass, in cuDNN's pseudo-layer order.
      lengths: ``[batch]`` sequence lengths.

    Returns:
      ``(final carries as (c, h) pairs in pseudo-layer order, y [batch, time, out])``.
    """
    y, h_n, c_n = kernel(
        x.astype(jnp.float32),
        jnp.stack([c.h for c in carries]),
        jnp.stack([c.c for c in carries]),
        pack_lstm_weights([rnn.cell for rnn in stack.rnns]),
        lengths,
        input_size=x.shape[-1],
        hidden_size=stack.hidden_features,
        num_layers=stack.num_layers,
        bidirectional=stack.bidirectional,
    )
    return [(c_n[k], h_n[k]) for k in range(len(carries))], y
