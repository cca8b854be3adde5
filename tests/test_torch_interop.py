"""Numerical equivalence with PyTorch's nn.LSTM / nn.GRU, and weight conversion both ways."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomize

import gatenets
from gatenets.interop import from_torch, to_torch

torch = pytest.importorskip("torch", reason="the PyTorch equivalence tests need torch (.[dev])")

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
    double = getattr(layer.cell, "use_recurrent_bias", False)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, I)), jnp.float32)
    before = dict(nnx.to_flat_state(nnx.state(layer, nnx.Param)))
    for back in (
        from_torch(to_torch(layer), double_bias=double),
        from_torch(
            to_torch(layer, state_dict=True, prefix="model.rnn."),
            double_bias=double,
            batch_first=not layer.time_major,
        ),
    ):
        after = dict(nnx.to_flat_state(nnx.state(back, nnx.Param)))
        assert after.keys() == before.keys()
        for path, value in after.items():
            np.testing.assert_array_equal(value[...], before[path][...], err_msg=str(path))
        np.testing.assert_allclose(back(x), layer(x), atol=1e-6)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_state_dict_in_gives_the_default_layer_tree_and_torch_outputs(kind):
    module = getattr(torch.nn, kind)(I, H, num_layers=2, bidirectional=True, batch_first=True)
    state = {f"encoder.rnn.{k}": v for k, v in module.state_dict().items()}
    state["encoder.embed.weight"] = torch.zeros(7, I)
    layer = from_torch(state)
    default = getattr(gatenets, kind)(I, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    shapes = lambda m: {p: v.shape for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}  # noqa: E731
    assert shapes(layer) == shapes(default)
    x = np.random.default_rng(2).standard_normal((B, T, I)).astype(np.float32)
    ref_out, ref_h, _ = torch_run(module, x, LENGTHS)
    carries, y = layer(jnp.asarray(x), seq_lengths=jnp.asarray(LENGTHS), return_carry=True)
    np.testing.assert_allclose(y, ref_out, atol=1e-6)
    np.testing.assert_allclose(stacked_final_state(carries, True, "h"), ref_h, atol=1e-6)
    if kind == "LSTM":
        expected = (
            (
                module.bias_ih_l1_reverse.detach().double()
                + module.bias_hh_l1_reverse.detach().double()
            )
            .float()
            .numpy()
        )
        np.testing.assert_array_equal(layer.layers[1].backward_rnn.cell.bias[...], expected)


def test_state_dict_errors_name_what_is_wrong():
    state = torch.nn.LSTM(I, H).state_dict()
    two = {**{f"a.{k}": v for k, v in state.items()}, **{f"b.{k}": v for k, v in state.items()}}
    with pytest.raises(ValueError, match="found 2 keys ending in 'weight_ih_l0'.*Pass prefix="):
        from_torch(two)
    with pytest.raises(ValueError, match="no key 'c.weight_ih_l0'"):
        from_torch(two, prefix="c.")
    broken = dict(state)
    del broken["bias_hh_l0"]
    with pytest.raises(ValueError, match="no 'bias_hh_l0'"):
        from_torch(broken)


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
    with pytest.raises(TypeError, match="torch.nn.LSTM, a torch.nn.GRU or a state_dict"):
        from_torch(torch.nn.RNN(I, H))
    with pytest.raises(TypeError, match="gatenets.LSTM or gatenets.GRU"):
        to_torch(gatenets.RNN(gatenets.GRUCell(I, H, rngs=nnx.Rngs(0))))
