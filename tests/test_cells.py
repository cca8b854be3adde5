"""LSTM and GRU cells against independent NumPy references and finite differences.

What every cell owes the contract (nnx.RNN, jit, vmap, loops, padding, gate range, …) is
checked for every registered family in test_conformance.py."""

import jax.numpy as jnp
import numpy as np
import pytest
import reference
from flax import nnx
from helpers import H, I, inputs, randomize
from jax.test_util import check_grads

import gatenets
from gatenets.loop import family_loops
from gatenets.registry import FAMILIES

# Cells whose default loop has a hand-written backward pass (Loop.FUSED): checked against
# finite differences here; the others' autodiff gradients against Loop.SCAN's in the
# conformance suite.
HAND_WRITTEN_BACKWARD = [
    family.cell for family in FAMILIES.values() if gatenets.Loop.FUSED in family_loops(family.name)
]

LSTM_VARIANTS = {
    "plain": {},
    "peephole": {"peephole": True},
    "projection": {"proj_size": 3},
    "peephole+projection+double-bias": {
        "peephole": True,
        "proj_size": 2,
        "use_recurrent_bias": True,
    },
    "no-bias": {"use_bias": False},
}


@pytest.mark.parametrize("variant", LSTM_VARIANTS)
def test_lstm_cell_matches_numpy_reference(variant):
    cell = randomize(gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0), **LSTM_VARIANTS[variant]))
    x = inputs()
    carry, y, trace = gatenets.RNN(cell)(jnp.asarray(x), return_carry=True, return_gates=True)
    ref_y, ref_c, ref_h, ref_gates = reference.lstm(cell, x.astype(np.float64))
    np.testing.assert_allclose(y, ref_y, atol=1e-5)
    np.testing.assert_allclose(carry.c, ref_c, atol=1e-5)
    np.testing.assert_allclose(carry.h, ref_h, atol=1e-5)
    for name, value in ref_gates.items():
        np.testing.assert_allclose(getattr(trace.gates["forward"], name), value, atol=1e-5)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_cell_matches_numpy_reference(reset_after):
    cell = randomize(gatenets.GRUCell(I, H, reset_after=reset_after, rngs=nnx.Rngs(0)))
    x = inputs()
    carry, y, trace = gatenets.RNN(cell)(jnp.asarray(x), return_carry=True, return_gates=True)
    ref_y, ref_h, ref_gates = reference.gru(cell, x.astype(np.float64))
    np.testing.assert_allclose(y, ref_y, atol=1e-5)
    np.testing.assert_allclose(carry.h, ref_h, atol=1e-5)
    for name, value in ref_gates.items():
        np.testing.assert_allclose(getattr(trace.gates["forward"], name), value, atol=1e-5)


def test_forget_bias_init_and_gate_order():
    cell = gatenets.LSTMCell(I, H, forget_bias=1.5, rngs=nnx.Rngs(0))
    bias = np.asarray(cell.bias[...])
    np.testing.assert_array_equal(bias[H : 2 * H], 1.5)  # order i, f, g, o: f is the 2nd block
    np.testing.assert_array_equal(np.delete(bias, np.s_[H : 2 * H]), 0.0)


def test_chrono_init_values():
    t_max = 50.0
    cell = gatenets.LSTMCell(I, 64, chrono_init=t_max, rngs=nnx.Rngs(0))
    bias = np.asarray(cell.bias[...])
    b_i, b_f = bias[:64], bias[64:128]
    assert np.all(b_f >= 0.0) and np.all(b_f <= np.log(t_max - 1) + 1e-6)
    np.testing.assert_allclose(b_i, -b_f)
    # log U[1, T-1]: exp(b_f) spreads over the range, not a constant.
    assert np.exp(b_f).std() > 5.0
    np.testing.assert_array_equal(bias[128:], 0.0)


@pytest.mark.parametrize("cell_type", HAND_WRITTEN_BACKWARD)
def test_gradients_match_finite_differences(cell_type):
    cell = randomize(cell_type(I, H, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(gatenets.RNN(cell))

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x) ** 2)

    x = jnp.asarray(inputs(shape=(1, 3, I)))
    check_grads(loss, (params, x), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)


def test_bf16_compute_keeps_cell_state_float32():
    cell = gatenets.LSTMCell(I, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    carry, y = gatenets.RNN(cell)(jnp.asarray(inputs()), return_carry=True)
    assert carry.c.dtype == jnp.float32
    assert y.dtype == jnp.bfloat16 and carry.h.dtype == jnp.bfloat16
    full = gatenets.RNN(cell)(jnp.asarray(inputs()))
    ref, *_ = reference.lstm(cell, inputs().astype(np.float64))
    np.testing.assert_allclose(np.asarray(full, np.float32), ref, atol=3e-2)


def test_param_dtype_is_honoured():
    cell = gatenets.GRUCell(I, H, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert cell.kernel[...].dtype == jnp.bfloat16
    assert gatenets.RNN(cell)(jnp.asarray(inputs())).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"proj_size": 0}, "proj_size"),
        ({"chrono_init": 1.0}, "chrono_init"),
        ({"chrono_init": 10.0, "use_bias": False}, "use_bias"),
    ],
)
def test_bad_lstm_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gatenets.LSTMCell(I, H, rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.parametrize("hidden", [0, -3, 2.5])
def test_bad_sizes_raise(hidden):
    with pytest.raises(ValueError, match="hidden_features must be a positive int"):
        gatenets.GRUCell(I, hidden, rngs=nnx.Rngs(0))


def mgu_reference(cell, x, mix="paper"):
    """Float64 MGU loop written from Zhou et al.'s equations; ``mix="flax"`` interpolates as
    Flax's ``nn.MGUCell`` does, ``h = f h + (1 - f) n``. Returns (outputs, h, forget gates)."""
    p = reference.params(cell)
    batch, time, _ = x.shape
    hidden = cell.hidden_features
    kernel, recurrent = p["kernel"], p["recurrent_kernel"]
    bias = p.get("bias", np.zeros(2 * hidden))
    recurrent_bias = p.get("recurrent_bias", np.zeros(hidden))
    h = np.zeros((batch, hidden))
    outs, gates = [], []
    for t in range(time):
        xi = x[:, t] @ kernel + bias
        if cell.reset_after:
            hh = h @ recurrent
            f = reference.sigmoid(xi[:, :hidden] + hh[:, :hidden])
            n = np.tanh(xi[:, hidden:] + f * (hh[:, hidden:] + recurrent_bias))
        else:
            f = reference.sigmoid(xi[:, :hidden] + h @ recurrent[:, :hidden])
            n = np.tanh(xi[:, hidden:] + (f * h) @ recurrent[:, hidden:])
        h = f * h + (1 - f) * n if mix == "flax" else (1 - f) * h + f * n
        outs.append(h)
        gates.append(f)
    return np.stack(outs, 1), h, np.stack(gates, 1)


@pytest.mark.parametrize(
    "kwargs", [{}, {"reset_after": True}, {"use_bias": False}], ids=["paper", "after", "no-bias"]
)
def test_mgu_cell_matches_numpy_reference(kwargs):
    cell = randomize(gatenets.MGUCell(I, H, rngs=nnx.Rngs(0), **kwargs))
    assert hasattr(cell, "recurrent_bias") == kwargs.get("reset_after", False)
    x = inputs()
    carry, y, trace = gatenets.RNN(cell)(jnp.asarray(x), return_carry=True, return_gates=True)
    ref_y, ref_h, ref_forget = mgu_reference(cell, x.astype(np.float64))
    np.testing.assert_allclose(y, ref_y, atol=1e-5)
    np.testing.assert_allclose(carry.h, ref_h, atol=1e-5)
    np.testing.assert_allclose(trace.gates["forward"].forget, ref_forget, atol=1e-5)


def test_mgu_parameters_line_up_with_flax_linen_mgu_cell():
    # Flax's nn.MGUCell has this cell's reset_after=True layout but mixes h = f h + (1 - f) n
    # (its gate keeps, the paper's writes): with the same weights it equals the reference with
    # Flax's mix, and differs from this cell.
    from flax import linen as nn

    cell = randomize(gatenets.MGUCell(I, H, reset_after=True, rngs=nnx.Rngs(0)))
    kernel, recurrent = np.asarray(cell.kernel[...]), np.asarray(cell.recurrent_kernel[...])
    bias = np.asarray(cell.bias[...])
    params = {
        "if": {"kernel": kernel[:, :H], "bias": bias[:H]},
        "in": {"kernel": kernel[:, H:], "bias": bias[H:]},
        "hf": {"kernel": recurrent[:, :H]},
        "hn": {"kernel": recurrent[:, H:], "bias": np.asarray(cell.recurrent_bias[...])},
    }
    x = inputs()
    flax_y = nn.RNN(nn.MGUCell(H)).apply({"params": {"cell": params}}, jnp.asarray(x))
    np.testing.assert_allclose(
        flax_y, mgu_reference(cell, x.astype(np.float64), "flax")[0], atol=1e-5
    )
    assert not np.allclose(flax_y, gatenets.RNN(cell)(jnp.asarray(x)), atol=1e-3)
