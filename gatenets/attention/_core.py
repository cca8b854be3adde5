"""How attention is computed once the projections are made: the path rule, the memory-efficient
blockwise kernel, cuDNN's fused kernel, and rotary positions.

Three paths compute the same function:

- ``"materialised"``: the ``[batch, heads, query, key]`` weights as one array. The only path
  that can return them, so it is taken whenever weights (or, for sigmoid attention, its
  weight-gates) are asked for.
- ``"cudnn"``: :func:`jax.nn.dot_product_attention` with ``implementation="cudnn"`` (the
  flash-attention kernel of cuDNN) for softmax attention on an NVIDIA GPU, in bfloat16 or
  float16, with right padding (``seq_lengths``) or no padding.
- ``"blockwise"``: a ``lax.scan`` over key blocks inside a loop over query blocks, each query
  block rematerialised in the backward pass (``jax.checkpoint``), so memory grows linearly
  with the sequence length: an online softmax (Milakov and Gimelshein, 2018; Dao et al., 2022) for
  softmax attention, a plain running sum for the unnormalised kernels (sigmoid attention,
  Ramapuram et al., 2024; the GAU's squared ReLU).

:func:`choose_path` is the whole rule, in one function, so that a measured choice (timing the
rows that apply on the machine, as the recurrent loops do) can replace it without touching a
layer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatenets._typing import Array

PATHS = ("materialised", "blockwise", "cudnn")
"""The values of a layer's ``implementation`` argument (None lets :func:`choose_path` pick)."""

KINDS = ("softmax", "sigmoid", "squared_relu")
"""The attention kernels: softmax rows, independent sigmoids, the GAU's squared ReLU."""

DEFAULT_BLOCK_SIZE = 512
"""Query and key block length of the blockwise path: a ``[512, 512]`` float32 block per head
is 1 MiB, small next to a cache, large enough that each block's matmuls are efficient."""

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def check_implementation(implementation: Any, kind: str, where: str) -> str | None:
    """Validates a layer's ``implementation`` argument."""
    if implementation is not None and implementation not in PATHS:
        raise ValueError(
            f"{where}: implementation must be None (chosen per call) or one of {PATHS}; got "
            f"{implementation!r}."
        )
    if implementation == "cudnn" and kind != "softmax":
        raise ValueError(
            f"{where}: implementation='cudnn' runs softmax attention only (cuDNN's fused "
            f"kernel normalises each row); this layer's kernel is {kind!r}. Use 'blockwise'."
        )
    return implementation


def check_block_size(block_size: Any, where: str) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{where}: block_size must be a positive int; got {block_size!r}.")
    return block_size


def cudnn_refusal(dtype: Any, head_dim: int, has_holes: bool) -> str | None:
    """Why cuDNN's fused kernel cannot compute this request, or None when it can."""
    if jax.default_backend() != "gpu":
        return f"it needs an NVIDIA GPU; the default backend is {jax.default_backend()!r}"
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
        return f"it computes in bfloat16 or float16; the compute dtype is {jnp.dtype(dtype)}"
    if head_dim % 8 or head_dim > 128:
        return f"it needs head_dim a multiple of 8 and at most 128; got {head_dim}"
    if has_holes:
        return (
            "a [batch, time] mask may have holes, which it takes only as a full [T, T] mask; "
            "pass seq_lengths for right padding"
        )
    return None


MATERIALISE_BYTES = 64 * 2**20
"""Below this many bytes of float32 ``[batch, heads, query, key]`` logits, the materialised
path is taken when no weights are asked for: at such sizes it is the faster (on the 2-core
CPU, a ``GatedAttention`` train step at T=1,024, 4 heads — 16 MiB of logits — took 94.5 ms
materialised against 123.6 ms blockwise) and its memory is small anyway."""


def choose_path(
    *,
    kind: str,
    weights_needed: bool,
    implementation: str | None,
    dtype: Any,
    head_dim: int,
    has_holes: bool,
    where: str,
    logits_bytes: int | None = None,
) -> str:
    """The attention path of one call: the rule, in one place.

    1. Weights asked for (or, for sigmoid attention, its gates, which are the weights):
       ``"materialised"``, the only path that has them.
    2. An ``implementation`` the layer was built with: that path (``"cudnn"`` raises, saying
       why, when cuDNN cannot compute the request).
    3. Softmax attention that cuDNN's fused kernel can compute: ``"cudnn"``.
    4. Logits of at most :data:`MATERIALISE_BYTES` (``logits_bytes``, the float32
       ``[batch, heads, query, key]`` array): ``"materialised"``.
    5. Everything else: ``"blockwise"``, whose memory is linear in the sequence length.

    A measured choice (time each applicable path on the call's shapes, cache the winner per
    device, shape and dtype) would replace steps 3-5 and nothing else.
    """
    if weights_needed:
        return "materialised"
    if implementation is not None:
        if implementation == "cudnn":
            reason = cudnn_refusal(dtype, head_dim, has_holes)
            if reason is not None:
                raise ValueError(f"{where}: implementation='cudnn' cannot run this call: {reason}.")
        return implementation
    if kind == "softmax" and cudnn_refusal(dtype, head_dim, has_holes) is None:
        return "cudnn"
    if logits_bytes is not None and logits_bytes <= MATERIALISE_BYTES:
        return "materialised"
    return "blockwise"


def cudnn_attention(
    query: Array, key: Array, value: Array, *, seq_lengths: Array | None, causal: bool
) -> Array:
    """Softmax attention by cuDNN's fused kernel (:func:`jax.nn.dot_product_attention`).

    ``query`` ``[batch, time, heads, head_dim]``; ``key``/``value`` ``[batch, time, kv_heads,
    head_dim]`` (grouped-query heads are handled by the kernel). It takes no ``precision``:
    cuDNN computes in the inputs' dtype with float32 accumulation.
    """
    lengths = None if seq_lengths is None else jnp.asarray(seq_lengths, jnp.int32)
    return jax.nn.dot_product_attention(
        query,
        key,
        value,
        is_causal=causal,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation="cudnn",
    )


class BlockwiseKernel(NamedTuple):
    """What the blockwise path computes besides the logits.

    Attributes:
      kind: one of :data:`KINDS`.
      scale: multiplies :math:`q \\cdot k` (``1/sqrt(head_dim)``).
      row_bias: ``[batch, query]`` float32 added to every logit of a query row (sigmoid
        attention's :math:`-\\log n_i`), a float, or None.
      relative_bias: ``[2 M + 1]`` float32 bias of the clipped distance ``query - key``
        (the GAU's), or None.
      row_scale: ``[batch, query]`` float32 multiplying each output row (the GAU's
        :math:`1/n_i`), or None.
    """

    kind: str
    scale: float
    row_bias: Any = None
    relative_bias: Array | None = None
    row_scale: Array | None = None


def _pad_time(x: Array, length: int, value: Any = 0) -> Array:
    pad = length - x.shape[1]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _blocks(x: Array, count: int, size: int) -> Array:
    """``[batch, count * size, ...]`` -> ``[count, batch, size, ...]``."""
    x = x.reshape(x.shape[0], count, size, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def blockwise_attention(
    query: Array,
    key: Array,
    value: Array,
    kernel: BlockwiseKernel,
    *,
    key_valid: Array | None,
    causal: bool,
    block_size: int = DEFAULT_BLOCK_SIZE,
    precision: Any = None,
) -> Array:
    r"""Attention whose memory is linear in the sequence length.

    For each block of queries, a ``lax.scan`` visits the blocks of keys and keeps, per query,
    a running sum of weighted values (and, for softmax, the running maximum :math:`m` and sum
    :math:`\ell` of the exponentials, rescaled by :math:`e^{m_{old} - m_{new}}` whenever the
    maximum grows). Each query block is rematerialised in the backward pass, so the backward
    holds one query block's ``[block, key_time]`` intermediates at a time, never the whole
    ``[query, key]`` array: memory linear in the length. Key blocks that lie wholly in a causal
    query block's future are skipped. Logits and sums are float32 whatever the input dtype.

    Args:
      query: ``[batch, query_time, heads, head_dim]``.
      key: ``[batch, key_time, kv_heads, head_dim]`` (``kv_heads`` divides ``heads``; query
        head ``h`` reads key/value head ``h // (heads // kv_heads)``).
      value: ``[batch, key_time, kv_heads, value_dim]``.
      kernel: the kind of attention and its biases.
      key_valid: ``[batch, key_time]`` True at keys that may be attended, or None.
      causal: the query at step ``i`` sees keys at steps ``<= i`` only.
      block_size: length of the query and key blocks; the last block of a length that is not
        a multiple is padded (padded keys are never attended).
      precision: passed to both matrix products of each block.

    Returns:
      ``[batch, query_time, heads, value_dim]`` in the dtype of ``value``. A query that
      attends to no key gets zeros.
    """
    batch, q_time, heads, head_dim = query.shape
    k_time, kv_heads = key.shape[1], key.shape[2]
    value_dim = value.shape[-1]
    groups = heads // kv_heads
    bq, bk = min(block_size, q_time), min(block_size, k_time)
    nq, nk = -(-q_time // bq), -(-k_time // bk)
    out_dtype = value.dtype

    q = _blocks(_pad_time(query, nq * bq), nq, bq)
    q = q.reshape(nq, batch, bq, kv_heads, groups, head_dim)
    k = _blocks(_pad_time(key, nk * bk), nk, bk)
    v = _blocks(_pad_time(value, nk * bk), nk, bk)
    if key_valid is None and nk * bk != k_time:
        key_valid = jnp.ones((batch, k_time), bool)
    kv_valid = None
    if key_valid is not None:
        kv_valid = _blocks(_pad_time(key_valid, nk * bk, False), nk, bk)

    def rows(x: Any) -> Any:
        """A per-query ``[batch, query]`` array in query blocks."""
        if x is None:
            return None
        return _blocks(_pad_time(jnp.asarray(x, jnp.float32), nq * bq), nq, bq)

    # A constant bias is closed over; a per-row one is split into query blocks.
    scalar_bias = kernel.row_bias is not None and jnp.ndim(kernel.row_bias) == 0
    setup = _BlockSetup(
        kernel=kernel,
        const_bias=kernel.row_bias if scalar_bias else None,
        causal=causal,
        bq=bq,
        bk=bk,
        precision=precision,
        shape=(batch, kv_heads, groups, value_dim),
        out_dtype=out_dtype,
    )
    row_bias = None if scalar_bias else rows(kernel.row_bias)
    row_scale = rows(kernel.row_scale)

    def query_block(args: Any) -> Array:
        qb, qi, rb, rs = args
        return _query_block(setup, qb, qi, rb, rs, (k, v, kv_valid, jnp.arange(nk)))

    # Each query block is recomputed in the backward pass, so only one block's [block, key]
    # intermediates are alive at a time: memory linear in the length, the forward computed
    # twice (rematerialising every key step too would compute it three times for ~1/3 less
    # memory).
    out = jax.lax.map(jax.checkpoint(query_block), (q, jnp.arange(nq), row_bias, row_scale))
    out = jnp.moveaxis(out, 0, 1).reshape(batch, nq * bq, heads, value_dim)
    return out[:, :q_time]


_NEG = float(jnp.finfo(jnp.float32).min)


class _BlockSetup(NamedTuple):
    """What every block of :func:`blockwise_attention` shares."""

    kernel: BlockwiseKernel
    const_bias: Any
    causal: bool
    bq: int
    bk: int
    precision: Any
    shape: tuple[int, int, int, int]  # batch, kv_heads, groups, value_dim
    out_dtype: Any


def _block_logits(setup: _BlockSetup, qb, kb, rb, q_pos, k_pos) -> Array:
    """``[batch, kv_heads, groups, bq, bk]`` float32 logits of one query and key block."""
    kernel = setup.kernel
    logits = jnp.einsum(
        "bqkgd,bskd->bkgqs", qb, kb, precision=setup.precision, preferred_element_type=jnp.float32
    )
    logits = logits * kernel.scale
    if rb is not None:
        logits = logits + rb[:, None, None, :, None]
    if setup.const_bias is not None:
        logits = logits + setup.const_bias
    if kernel.relative_bias is not None:
        distance = (len(kernel.relative_bias) - 1) // 2
        offsets = jnp.clip(q_pos[:, None] - k_pos[None, :], -distance, distance)
        logits = logits + kernel.relative_bias[offsets + distance][None, None, None]
    return logits


def _block_allowed(setup: _BlockSetup, kvb, q_pos, k_pos) -> Array | None:
    """Where a query may attend a key of the block (valid keys, causality), or None: all."""
    allowed = None if kvb is None else kvb[:, None, None, None, :]
    if setup.causal:
        lower = (k_pos[None, :] <= q_pos[:, None])[None, None, None]
        allowed = lower if allowed is None else allowed & lower
    return allowed


def _key_step(setup: _BlockSetup, qb, qi, rb, carry, kargs):
    """One key block into a query block's running sums (and, for softmax, the running maximum
    and total, rescaled when the maximum grows)."""
    kb, vb, kvb, ki = kargs
    q_pos = qi * setup.bq + jnp.arange(setup.bq)
    k_pos = ki * setup.bk + jnp.arange(setup.bk)
    logits = _block_logits(setup, qb, kb, rb, q_pos, k_pos)
    allowed = _block_allowed(setup, kvb, q_pos, k_pos)
    if setup.kernel.kind == "softmax":
        acc, top, total = carry
        masked = logits if allowed is None else jnp.where(allowed, logits, _NEG)
        new_top = jnp.maximum(top, jnp.max(masked, axis=-1))
        weights = jnp.exp(masked - new_top[..., None])
        rescale = jnp.exp(top - new_top)
        acc = acc * jnp.moveaxis(rescale, -1, 1)[..., None]
    else:
        (acc,) = carry
        weights = (
            jax.nn.sigmoid(logits)
            if setup.kernel.kind == "sigmoid"
            else jnp.square(jax.nn.relu(logits))
        )
    if allowed is not None:
        weights = jnp.where(allowed, weights, 0.0)
    acc = acc + jnp.einsum(
        "bkgqs,bske->bqkge",
        weights.astype(vb.dtype),
        vb,
        precision=setup.precision,
        preferred_element_type=jnp.float32,
    )
    if setup.kernel.kind == "softmax":
        return (acc, new_top, total * rescale + jnp.sum(weights, axis=-1)), None
    return (acc,), None


def _query_block(setup: _BlockSetup, qb, qi, rb, rs, keys) -> Array:
    """One block of queries against every key block: ``[batch, bq, heads, value_dim]``."""
    batch, kv_heads, groups, value_dim = setup.shape
    bq, bk = setup.bq, setup.bk

    def step(carry, kargs):
        if not setup.causal:
            return _key_step(setup, qb, qi, rb, carry, kargs)
        # A key block starting after the query block's last query is all future: skip it.
        needed = kargs[3] * bk <= qi * bq + bq - 1
        return jax.lax.cond(
            needed,
            lambda c, a: _key_step(setup, qb, qi, rb, c, a),
            lambda c, _: (c, None),
            carry,
            kargs,
        )

    acc = jnp.zeros((batch, bq, kv_heads, groups, value_dim), jnp.float32)
    init = (acc,)
    if setup.kernel.kind == "softmax":
        init = (
            acc,
            jnp.full((batch, kv_heads, groups, bq), _NEG, jnp.float32),
            jnp.zeros((batch, kv_heads, groups, bq), jnp.float32),
        )
    carry, _ = jax.lax.scan(step, init, keys)
    acc = carry[0]
    if setup.kernel.kind == "softmax":
        total = jnp.moveaxis(carry[2], -1, 1)[..., None]
        acc = acc / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)
    if rs is not None:
        acc = acc * rs[:, :, None, None, None]
    return acc.reshape(batch, bq, kv_heads * groups, value_dim).astype(setup.out_dtype)


class RoPE(NamedTuple):
    r"""Rotary position embedding (Su et al., 2021) in the Llama / Qwen layout.

    The first ``rotary_dim`` features of each query and key head are split in two halves
    :math:`(x_1, x_2)` and rotated by the angle :math:`p\,\theta_i` of position :math:`p`,
    :math:`\theta_i = \text{base}^{-2i / \text{rotary\_dim}}`:

    .. math::
        \operatorname{RoPE}(x, p) = [x_1 \cos p\theta - x_2 \sin p\theta,\;
            x_2 \cos p\theta + x_1 \sin p\theta,\; x_{rest}]

    This is Hugging Face's ``rotate_half`` convention of Llama and Qwen (halves, not
    interleaved pairs as in the paper or GPT-J); the features after ``rotary_dim`` pass
    unchanged (Qwen's ``partial_rotary_factor``). A query and key rotated at positions
    :math:`p` and :math:`p'` have a dot product that depends on :math:`p - p'` only.

    Attributes:
      rotary_dim: number of rotated features per head (even, at most ``head_dim``); None
        rotates all of them.
      base: the base of the frequencies (10,000 in Llama 2; Qwen uses larger ones).

    Example:
      >>> import jax.numpy as jnp
      >>> from gatenets import RoPE
      >>> x = jnp.ones((1, 3, 1, 4))  # [batch, time, heads, head_dim]
      >>> [round(float(v), 3) for v in RoPE(base=100.0).apply(x, jnp.arange(3))[0, 1, 0]]
      [-0.301, 0.895, 1.382, 1.095]
    """

    rotary_dim: int | None = None
    base: float = 10000.0

    def check(self, head_dim: int, where: str) -> RoPE:
        """Raises if this embedding cannot rotate heads of ``head_dim`` features."""
        dim = self.rotary_dim
        if dim is not None and (
            isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2
        ):
            raise ValueError(
                f"{where}: rope.rotary_dim must be None or an even int >= 2; got {dim!r}."
            )
        if dim is not None and dim > head_dim:
            raise ValueError(
                f"{where}: rope.rotary_dim must be at most head_dim = {head_dim}; got {dim}."
            )
        if dim is None and head_dim % 2:
            raise ValueError(
                f"{where}: rope rotates pairs of features; head_dim = {head_dim} is odd. "
                "Give an even rope.rotary_dim."
            )
        base = self.base
        if isinstance(base, bool) or not isinstance(base, int | float) or not base > 1:
            raise ValueError(f"{where}: rope.base must be a number > 1; got {base!r}.")
        return self

    def apply(self, x: Array, positions: Array) -> Array:
        """Rotates ``x`` ``[batch, time, heads, head_dim]`` at ``positions`` ``[time]`` (or
        ``[batch, time]``); the angles are float32, the result has the dtype of ``x``."""
        head_dim = x.shape[-1]
        dim = head_dim if self.rotary_dim is None else self.rotary_dim
        half = dim // 2
        inv_freq = 1.0 / (self.base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        positions = jnp.asarray(positions, jnp.float32)
        frequencies = jnp.asarray(inv_freq, jnp.float32).reshape((1,) * positions.ndim + (half,))
        angles = positions[..., None] * frequencies
        if angles.ndim == 2:
            angles = angles[None]
        cos = jnp.cos(angles)[:, :, None, :]
        sin = jnp.sin(angles)[:, :, None, :]
        rotated = x[..., :dim].astype(jnp.float32)
        x1, x2 = rotated[..., :half], rotated[..., half:]
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
        return jnp.concatenate([out.astype(x.dtype), x[..., dim:]], axis=-1)


def check_rope(rope: Any, head_dim: int, where: str) -> RoPE | None:
    if rope is None:
        return None
    if not isinstance(rope, RoPE):
        raise TypeError(
            f"{where}: rope must be None or a gatenets.RoPE(rotary_dim=..., base=...); got "
            f"{type(rope).__name__}."
        )
    return rope.check(head_dim, where)
