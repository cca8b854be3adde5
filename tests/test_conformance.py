"""The cell contract, checked for every registered cell family.

One list drives this file, as optax's ``alias_test.py`` drives its optimizer tests:
:data:`gatenets.registry.FAMILIES`. A new family gets every check here by its registry row
alone. What each check asks of a cell is the contract of :class:`gatenets.GatedCell`; the
family-specific mathematics (NumPy references, PyTorch, finite differences) stays in the
family's own test file.

Weights are drawn with NumPy so that no gate sits at 0.5 and no term hides behind a zero;
shapes are tiny and each test compiles a handful of programs.
"""

import functools

import gated_elman
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import B, H, I, T, inputs, randomize, unavailable_loop_marks

import gatenets
import gatenets.linen as gl
from gatenets import Loop
from gatenets.inspect.export import _KNOWN_GATES
from gatenets.loop import STACK_LOOPS, family_loops
from gatenets.registry import FAMILIES as LIBRARY

# Every registered family, and the test tree's own cell: one file and this one row give it
# every generic check below.
FAMILIES = {**LIBRARY, gated_elman.ROW.name: gated_elman.ROW}
NAMES = list(FAMILIES)
# Every loop but the reference, per family: each is tested equal to Loop.SCAN.
FAST_LOOPS = [
    pytest.param(name, loop, id=f"{name}-{loop}", marks=unavailable_loop_marks(loop))
    for name, family in FAMILIES.items()
    for loop in family_loops(name)
    if loop not in (Loop.SCAN, *STACK_LOOPS)
]
# Holes as well as padding; both rows have 3 valid steps, so running every sequence alone
# (its valid steps only) is one batch of unpadded sequences: one more compile, not two.
MASK = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 0, 1]], bool)
LENGTHS = np.array([T, 3])


def make(name, seed=0, scale=0.5):
    """The family's cell with its defaults, every parameter redrawn from N(0, scale²)."""
    return randomize(FAMILIES[name].cell(I, H, rngs=nnx.Rngs(seed)), seed=seed, scale=scale)


def random_carry(cell, batch=B, seed=7):
    """A carry of the cell's structure and dtypes with standard normal leaves."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda z: jnp.asarray(rng.standard_normal(z.shape), z.dtype),
        cell.initialize_carry((batch, I)),
    )


def assert_trees_close(got, want, atol=1e-5, rtol=1e-5):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, atol=atol, rtol=rtol)


def valid_steps(x, mask=MASK):
    """``[batch, valid steps, features]``: each row's valid steps, in order."""
    return np.stack([x[b, mask[b]] for b in range(x.shape[0])])


@pytest.mark.parametrize("name", NAMES)
def test_registry_row_is_consistent_and_exported(name):
    family = FAMILIES[name]
    assert family.name == name == name.lower()
    assert family.layer.cell_type is family.cell
    assert issubclass(family.cell, gatenets.GatedCell)
    if name not in LIBRARY:
        return  # a cell outside the library: nothing exported, no linen wrapper
    for public in (family.cell, family.layer, family.cell.gates_type, family.cell.carry_type):
        assert getattr(gatenets, public.__name__) is public, public
    assert "h" in family.cell.carry_type._fields
    assert Loop.SCAN in family_loops(name)
    retention = getattr(family.cell.gates_type, "retention", {})
    assert set(retention) <= set(family.cell.gates_type._fields)
    assert set(retention.values()) <= {"keep", "write"}
    # Derived from the row: the linen wrapper and the gate types load_trace rebuilds.
    assert getattr(gl, family.layer.__name__).layer_type is family.layer
    assert _KNOWN_GATES[family.cell.gates_type.__name__] is family.cell.gates_type


@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_equals_each_sequence_alone(name):
    cell = make(name)
    x = inputs()
    h0 = random_carry(cell)
    # Whatever sits at a padded step must not leak into a valid one.
    poisoned = np.where(MASK[:, :, None], x, 1e6).astype(np.float32)
    carry, y = gatenets.RNN(cell)(
        jnp.asarray(poisoned), initial_carry=h0, mask=jnp.asarray(MASK), return_carry=True
    )
    alone_carry, alone = gatenets.RNN(cell)(
        jnp.asarray(valid_steps(x)), initial_carry=h0, return_carry=True
    )
    np.testing.assert_allclose(valid_steps(np.asarray(y)), alone, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(y)[~MASK], 0.0)
    assert_trees_close(carry, alone_carry)


@pytest.mark.parametrize("name", NAMES)
def test_reverse_equals_running_the_flipped_sequence(name):
    cell = make(name)
    x = inputs()
    h0 = random_carry(cell)
    carry, y = gatenets.RNN(cell, reverse=True)(
        jnp.asarray(x), initial_carry=h0, mask=jnp.asarray(MASK), return_carry=True
    )
    flipped_carry, flipped = gatenets.RNN(cell)(
        jnp.asarray(valid_steps(x)[:, ::-1]), initial_carry=h0, return_carry=True
    )
    np.testing.assert_allclose(valid_steps(np.asarray(y)), np.asarray(flipped)[:, ::-1], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(y)[~MASK], 0.0)
    assert_trees_close(carry, flipped_carry)


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_with_padding_equals_forward_and_reverse_runs(name):
    forward_cell, backward_cell = make(name, seed=0), make(name, seed=1)
    x, lengths = jnp.asarray(inputs()), jnp.asarray(LENGTHS)
    bidirectional = gatenets.Bidirectional(
        gatenets.RNN(forward_cell), gatenets.RNN(backward_cell, reverse=True)
    )
    carry, y, trace = bidirectional(x, seq_lengths=lengths, return_carry=True, return_gates=True)
    runs = {
        "forward": gatenets.RNN(forward_cell)(
            x, seq_lengths=lengths, return_carry=True, return_gates=True
        ),
        "backward": gatenets.RNN(backward_cell, reverse=True)(
            x, seq_lengths=lengths, return_carry=True, return_gates=True
        ),
    }
    np.testing.assert_allclose(
        y, np.concatenate([runs["forward"][1], runs["backward"][1]], axis=-1), atol=1e-6
    )
    for direction, (run_carry, _, run_trace) in runs.items():
        assert_trees_close(getattr(carry, direction), run_carry, atol=1e-6)
        assert_trees_close(trace.gates[direction], run_trace.gates[direction], atol=1e-6)
    np.testing.assert_array_equal(trace.mask, np.arange(T)[None, :] < LENGTHS[:, None])


@functools.cache
def stack_run(name):
    """A 2-layer bidirectional stack of the family and its outputs and trace on padded input
    (shared by the stack tests: one compile)."""
    stack = randomize(
        FAMILIES[name].layer(I, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    )
    x = jnp.asarray(inputs())
    y, trace = stack(x, seq_lengths=jnp.asarray(LENGTHS), return_gates=True)
    return stack, x, y, trace


@pytest.mark.parametrize("name", NAMES)
def test_two_layer_stack_equals_chained_rnns_with_the_same_weights(name):
    stack, x, y, _ = stack_run(name)
    features, lengths = x, jnp.asarray(LENGTHS)
    for layer in stack.layers:
        forward = gatenets.RNN(layer.forward_rnn.cell)(features, seq_lengths=lengths)
        backward = gatenets.RNN(layer.backward_rnn.cell, reverse=True)(
            features, seq_lengths=lengths
        )
        features = jnp.concatenate([forward, backward], axis=-1)
    np.testing.assert_allclose(y, features, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_trace_names_fields_shapes_and_mask(name):
    stack, _, _, trace = stack_run(name)
    gates_type = FAMILIES[name].cell.gates_type
    assert list(trace.gates) == list(stack.paths)
    assert sorted(trace.gates) == [
        "layer0/backward",
        "layer0/forward",
        "layer1/backward",
        "layer1/forward",
    ]
    for path, group in trace.gates.items():
        assert type(group) is gates_type, path
        assert group._fields == gates_type._fields
        for field, gate in group._asdict().items():
            assert gate.shape == (B, T, H), f"{path}/{field}"
    np.testing.assert_array_equal(trace.mask, np.arange(T)[None, :] < LENGTHS[:, None])


@pytest.mark.parametrize("name", NAMES)
def test_gate_overrides_are_validated_and_applied(name):
    cell = make(name)
    rnn = gatenets.RNN(cell)
    x = jnp.asarray(inputs())
    with pytest.raises(ValueError, match="'no_such_gate'.*" + cell.gate_names[0]):
        rnn(x, gate_overrides={"no_such_gate": 0.5})
    stack = FAMILIES[name].layer(I, H, num_layers=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no_such_gate"):
        stack(x, gate_overrides={"layer1": {"no_such_gate": 0.5}})
    y = rnn(x)
    for gate in cell.gate_names:
        overridden, trace = rnn(x, gate_overrides={gate: 0.25}, return_gates=True)
        np.testing.assert_allclose(getattr(trace.gates["forward"], gate), 0.25, err_msg=gate)
        assert np.abs(np.asarray(overridden) - np.asarray(y)).max() > 1e-3, gate


@pytest.mark.parametrize("name", NAMES)
def test_cell_works_inside_flax_nnx_rnn(name):
    cell = make(name)
    x = jnp.asarray(inputs())
    np.testing.assert_allclose(nnx.RNN(cell)(x), gatenets.RNN(cell)(x), atol=1e-5)


@pytest.mark.parametrize("name, loop", FAST_LOOPS)
def test_every_loop_equals_scan_values_and_gradients(name, loop):
    cell = make(name)
    x = jnp.asarray(inputs())
    h0 = random_carry(cell)
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((B, T, H)), jnp.float32)

    def loss(cell, x, h0, loop):
        carry, y = gatenets.RNN(cell, loop=loop, reverse=True)(
            x, initial_carry=h0, mask=jnp.asarray(MASK), return_carry=True
        )
        return jnp.sum(weights * y) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(carry))

    value_and_grad = nnx.value_and_grad(loss, argnums=(0, 1, 2))
    fast_value, fast_grads = value_and_grad(cell, x, h0, loop)
    scan_value, scan_grads = value_and_grad(cell, x, h0, Loop.SCAN)
    np.testing.assert_allclose(fast_value, scan_value, rtol=1e-5)
    assert_trees_close(fast_grads, scan_grads, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager_equals_step_by_step(name):
    cell = make(name)
    x = jnp.asarray(inputs())
    carry, steps = cell.initialize_carry((B, I)), []
    for t in range(T):
        carry, h = cell(carry, x[:, t])
        steps.append(h)
    rnn = gatenets.RNN(cell)
    eager = rnn(x)
    np.testing.assert_allclose(eager, np.stack(steps, axis=1), atol=1e-5)
    np.testing.assert_allclose(nnx.jit(lambda rnn, x: rnn(x))(rnn, x), eager, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_sequences_equals_the_batched_call(name):
    rnn = gatenets.RNN(make(name))
    x = jnp.asarray(inputs())
    np.testing.assert_allclose(jax.vmap(lambda seq: rnn(seq[None])[0])(x), rnn(x), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_finite_and_nonzero_for_every_parameter(name):
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((B, T, H)), jnp.float32)

    def loss(cell, x):
        return jnp.sum(weights * gatenets.RNN(cell)(x, mask=jnp.asarray(MASK)))

    grads = nnx.grad(loss)(make(name), jnp.asarray(inputs()))
    for path, grad in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]:
        where = jax.tree_util.keystr(path)
        assert np.isfinite(np.asarray(grad)).all(), where
        assert np.abs(np.asarray(grad)).max() > 0, where


@pytest.mark.parametrize("name", NAMES)
def test_every_gate_in_unit_interval(name):
    cell = make(name, scale=3.0)
    _, trace = gatenets.RNN(cell)(jnp.asarray(10 * inputs()), return_gates=True)
    assert [path for path, _ in trace.items()] == [
        f"forward/{field}" for field in cell.gates_type._fields
    ]
    for path, gate in trace.items():
        assert gate.shape == (B, T, H), path
        assert float(gate.min()) >= 0.0 and float(gate.max()) <= 1.0, path
