"""The suite's one precision rule (tests/conftest.py): every matmul a test compiles runs at full
float32, whatever the backend's default (TF32 on NVIDIA GPUs) or JAX_DEFAULT_MATMUL_PRECISION
say; PyTorch runs without TF32; a marked test gets the backend's default.

The compiled programs are read, not timed: on a CPU every precision computes float32, so only
the program text shows which one a GPU would run.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import gatenets

try:
    import torch
except ImportError:
    torch = None


def dot_precisions(program_text):
    """The precision of every ``dot_general`` in a StableHLO module ('' where none is set)."""
    dots = [line for line in program_text.splitlines() if "stablehlo.dot_general" in line]
    assert dots, "the program has no matmul"
    return [(re.search(r"precision = \[(\w+), (\w+)\]", line) or [""])[0] for line in dots]


def lstm_program():
    # The fused JAX kernel, as on a GPU (on a CPU "auto" may take the native C++ loop).
    layer = gatenets.LSTM(3, 4, num_layers=2, loop="fused", rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x) ** 2)

    return jax.jit(jax.grad(loss)).lower(params, jnp.ones((2, 5, 3))).as_text()


def test_every_matmul_of_a_layer_and_its_gradient_runs_at_full_float32():
    assert jax.config.jax_default_matmul_precision == "highest"
    precisions = dot_precisions(lstm_program())
    assert set(precisions) == {"precision = [HIGHEST, HIGHEST]"}, precisions


@pytest.mark.backend_matmul_precision
def test_a_marked_test_runs_at_the_backends_default():
    assert jax.config.jax_default_matmul_precision is None
    assert "HIGHEST" not in lstm_program()


@pytest.mark.skipif(torch is None, reason="torch is not installed (.[dev])")
def test_pytorch_runs_without_tf32():
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
