"""Numerical equivalence with PyTorch's nn.LSTM / nn.GRU, and weight conversion both ways."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from test_cells import randomize

import gatenets
from gatenets.interop import from_torch, to_torch

B, T, I, H = 3, 6, 4, 5
LENGTHS = np.array([T, 4, 1])
TOLERANCE = 1e-5

torch.manual_seed(0)


def torch_run(module, x, lengths):
    """Runs a torch RNN, with packing when lengths are given; returns (outputs, h_n, c_n)."""
    xt = torch.from_numpy(x if module.batch_first else x.swapaxes(0, 1).copy())
    with torch.no_grad():
        if lengths is None:
            out, state = module(xt)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.from_numpy(lengths), batch_first=module.batch_first, enforce_sorted=False
            )
            out, state = module(packed)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(
                out, batch_first=module.batch_first, total_length=T
            )
    out = out.numpy()
    if not module.batch_first:
        out = out.swapaxes(0, 1)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    return out, h_n.numpy(), None if c_n is None else c_n.numpy()


def stacked_final_state(carries, bidirectional, field):
    """gatenets per-layer carries -> torch's [layers * directions, batch, units] layout."""
    rows = []
    for carry in carries:
        parts = (carry.forward, carry.backward) if bidirectional else (carry,)
        rows.extend(getattr(part, field) for part in parts)
    return np.stack(rows)


GRID = list(
    itertools.product(["LSTM", "GRU"], [1, 2], [False, True], [0, 3], [False, True], [True, False])
)


@pytest.mark.parametrize(
    "kind, num_layers, bidirectional, proj_size, padded, batch_first",
    [g for g in GRID if not (g[0] == "GRU" and g[3])],
)
def test_matches_torch(kind, num_layers, bidirectional, proj_size, padded, batch_first):
    kwargs = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": batch_first}
    if kind == "LSTM":
        module = torch.nn.LSTM(I, H, proj_size=proj_size, **kwargs)
    else:
        module = torch.nn.GRU(I, H, **kwargs)
    layer = from_torch(module)
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
    lengths = LENGTHS if padded else None
    ref_out, ref_h, ref_c = torch_run(module, x, lengths)

    xj = jnp.asarray(x if batch_first else x.swapaxes(0, 1))
    carries, y = layer(
        xj, seq_lengths=None if lengths is None else jnp.asarray(lengths), return_carry=True
    )
    y = np.asarray(y if batch_first else y.swapaxes(0, 1))
    np.testing.assert_allclose(y, ref_out, atol=TOLERANCE)
    np.testing.assert_allclose(
        stacked_final_state(carries, bidirectional, "h"), ref_h, atol=TOLERANCE
    )
    if ref_c is not None:
        np.testing.assert_allclose(
            stacked_final_state(carries, bidirectional, "c"), ref_c, atol=TOLERANCE
        )


@pytest.mark.parametrize(
    "layer",
    [
        lambda: gatenets.LSTM(
            I,
            H,
            num_layers=2,
            bidirectional=True,
            proj_size=2,
            use_recurrent_bias=True,
            rngs=nnx.Rngs(0),
        ),
        lambda: gatenets.LSTM(I, H, rngs=nnx.Rngs(0)),
        lambda: gatenets.GRU(I, H, num_layers=2, rngs=nnx.Rngs(0)),
        lambda: gatenets.GRU(I, H, use_bias=False, time_major=True, rngs=nnx.Rngs(0)),
    ],
)
def test_round_trip_keeps_every_weight(layer):
    layer = randomize(layer())
    back = from_torch(to_torch(layer))
    flat_before = dict(nnx.to_flat_state(nnx.state(layer, nnx.Param)))
    for path, value in nnx.to_flat_state(nnx.state(back, nnx.Param)):
        if path in flat_before:
            np.testing.assert_array_equal(value[...], flat_before[path][...], err_msg=str(path))
        else:  # a second bias torch always has; gatenets LSTM without it reads as zeros
            assert path[-1] == "recurrent_bias" and not np.any(value[...]), path
    x = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, I)), jnp.float32)
    np.testing.assert_allclose(back(x), layer(x), atol=1e-6)


@pytest.mark.parametrize(
    "layer, message",
    [
        (lambda: gatenets.LSTM(I, H, peephole=True, rngs=nnx.Rngs(0)), "peephole"),
        (lambda: gatenets.GRU(I, H, reset_after=False, rngs=nnx.Rngs(0)), "reset_after=False"),
        (
            lambda: gatenets.GRU(I, H, learn_initial_carry=True, rngs=nnx.Rngs(0)),
            "learned initial carry",
        ),
        (lambda: gatenets.GRU(I, H, recurrent_dropout=0.1, rngs=nnx.Rngs(0)), "recurrent_dropout"),
    ],
)
def test_to_torch_refuses_what_torch_cannot_express(layer, message):
    with pytest.raises(ValueError, match=message):
        to_torch(layer())


def test_conversion_bad_input():
    with pytest.raises(TypeError, match="torch.nn.LSTM or torch.nn.GRU"):
        from_torch(torch.nn.RNN(I, H))
    with pytest.raises(TypeError, match="gatenets.LSTM or gatenets.GRU"):
        to_torch(gatenets.RNN(gatenets.GRUCell(I, H, rngs=nnx.Rngs(0))))
