"""Mixed precision of the LSTM and GRU: with ``dtype=jnp.bfloat16`` and float32 parameters
every matmul of the fused kernels (forward and backward) takes bf16 operands, the matmuls of
the time loop accumulate into float32, and the recurrent state (the LSTM's ``c``, the GRU's
and the MGU's ``h``) stays float32 between steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import B, H, I, dot_equations, inputs, randomize

import gatenets

CELLS = {"lstm": gatenets.LSTMCell, "gru": gatenets.GRUCell}


def _train_jaxpr(kind, loop, precompute_inputs):
    cell = randomize(CELLS[kind](I, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    rnn = gatenets.RNN(cell, loop=loop, precompute_inputs=precompute_inputs)
    graphdef, params = nnx.split(rnn)
    x = jnp.asarray(inputs())

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x).astype(jnp.float32) ** 2)

    return jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x).jaxpr


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("precompute_inputs", [True, False], ids=["before", "inside"])
def test_fused_bf16_matmuls_take_bf16_and_accumulate_float32_in_the_loop(kind, precompute_inputs):
    dots = dot_equations(_train_jaxpr(kind, "fused", precompute_inputs))
    in_loop = [eqn for eqn, looped in dots if looped]
    # Forward: the recurrent (and, inside, the input) matmul; backward: the recurrent one.
    assert len(in_loop) >= (3 if not precompute_inputs else 2), len(in_loop)
    for eqn, _ in dots:
        operands = [str(v.aval.dtype) for v in eqn.invars]
        assert operands == ["bfloat16", "bfloat16"], (operands, eqn)
    for eqn in in_loop:
        assert eqn.outvars[0].aval.dtype == jnp.float32, eqn


SCAN_CELLS = {**CELLS, "mgu": gatenets.MGUCell}


@pytest.mark.parametrize("kind", SCAN_CELLS)
def test_scan_bf16_step_accumulates_float32(kind):
    cell = randomize(SCAN_CELLS[kind](I, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    # Inputs projected before the loop (in bf16, as cell.project does), so that the loop's
    # one matmul is the recurrent one.
    rnn = gatenets.RNN(cell, loop="scan", precompute_inputs=True)
    dots = dot_equations(jax.make_jaxpr(rnn)(jnp.asarray(inputs())).jaxpr)
    in_loop = [eqn for eqn, looped in dots if looped]
    assert in_loop
    for eqn in in_loop:
        assert [str(v.aval.dtype) for v in eqn.invars] == ["bfloat16", "bfloat16"], eqn
        assert eqn.outvars[0].aval.dtype == jnp.float32, eqn


@pytest.mark.parametrize(
    "cell_type, loop",
    [(gatenets.GRUCell, "scan"), (gatenets.GRUCell, "fused"), (gatenets.MGUCell, "scan")],
)
def test_bf16_gated_state_stays_float32_and_outputs_bf16(cell_type, loop):
    cell = randomize(cell_type(I, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    assert cell.initialize_carry((B, I)).h.dtype == jnp.float32
    carry, y = gatenets.RNN(cell, loop=loop)(jnp.asarray(inputs()), return_carry=True)
    assert carry.h.dtype == jnp.float32 and y.dtype == jnp.bfloat16
    # The last output is the final state rounded once.
    np.testing.assert_array_equal(y[:, -1], carry.h.astype(jnp.bfloat16))
    assert float(jnp.abs(carry.h - carry.h.astype(jnp.bfloat16)).max()) > 0


def test_bf16_gru_state_keeps_small_updates_that_a_bf16_state_loses():
    """An update gate of 0.99 moves h by 1% of (n - h) a step: near h = 1, less than half a
    bf16 step (2^-8), so a bf16 state stops moving. With a float32 state the bf16 layer
    follows the float32 one over 400 steps."""
    time, hidden = 400, 4
    cell = gatenets.GRUCell(2, hidden, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    full = gatenets.GRUCell(2, hidden, rngs=nnx.Rngs(0))
    # n_t = tanh(3) ~ 0.995 whatever h is; h creeps towards it from 0.
    for c in (cell, full):
        c.kernel[...] = jnp.zeros_like(c.kernel[...])
        c.recurrent_kernel[...] = jnp.zeros_like(c.recurrent_kernel[...])
        c.bias[...] = jnp.zeros_like(c.bias[...]).at[2 * hidden :].set(3.0)
    x = jnp.zeros((1, time, 2))
    overrides = {"update": 0.99}
    expected = gatenets.RNN(full, loop="scan")(x, gate_overrides=overrides)[0, -1]
    for loop in ("scan", "fused"):
        got = gatenets.RNN(cell, loop=loop)(x, gate_overrides=overrides, return_carry=True)[0]
        np.testing.assert_allclose(got.h[0], expected, rtol=1e-3)

    # The same recurrence with its state rounded to bf16 after every step stalls well short.
    def bf16_state(h, _):
        h, _, _ = cell.step(gatenets.GRUCarry(h=h), cell.project(x[:, 0]), gate_overrides=overrides)
        return h.h.astype(jnp.bfloat16).astype(jnp.float32), None

    stalled, _ = jax.lax.scan(bf16_state, jnp.zeros((1, hidden)), None, length=time)
    assert float(jnp.max(jnp.abs(stalled[0] - expected))) > 1e-2
