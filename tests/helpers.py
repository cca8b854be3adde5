"""What several test modules share: the small sizes, parameters and inputs drawn at random,
skips that say why, a tiny training run, and the environment of the tests' worker processes.

Test modules import from here (``from helpers import ...``), never from one another.
"""

import importlib.util
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

ROOT = pathlib.Path(__file__).parent.parent

# Batch, time, input features and hidden units of most cell and layer tests.
B, T, I, H = 2, 5, 3, 4


def randomize(module, seed=0, scale=0.5):
    """Sets every parameter to random values so no term of the equations hides behind a zero."""
    rng = np.random.default_rng(seed)
    for _, param in nnx.iter_graph(module):
        if isinstance(param, nnx.Param):
            param[...] = jnp.asarray(scale * rng.standard_normal(param.shape), param.dtype)
    return module


def inputs(seed=1, shape=(B, T, I)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def params_of(model):
    """The model's parameters as NumPy arrays, in the order of its state's leaves."""
    return [np.asarray(p) for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))]


def loop_unavailable_reason(loop) -> str | None:
    """Why a layer cannot run ``loop`` on this machine, in the library's own words, or None.

    Only loops that depend on the machine are asked about (the native CPU kernels need a CPU
    backend, a C++ compiler and a BLAS); the layer's constructor makes the decision, so the
    tests skip exactly where a user would be refused.
    """
    import gatenets

    if str(loop) != str(gatenets.Loop.NATIVE):
        return None
    try:
        gatenets.RNN(gatenets.LSTMCell(1, 1, rngs=nnx.Rngs(0)), loop=loop)
    except ValueError as error:
        return str(error)
    return None


def unavailable_loop_marks(loop):
    """A skip mark, saying why, for a loop this machine cannot run (the native kernels without a
    C++ compiler or BLAS, or on a GPU backend); nothing for the others."""
    reason = loop_unavailable_reason(loop)
    if reason is not None:
        return pytest.mark.skip(reason=f"loop {str(loop)!r} cannot run here: {reason}")
    return ()


def require_mnist1d():
    """Skips the calling test, saying why, where the optional ``mnist1d`` package is missing."""
    pytest.importorskip(
        "mnist1d", reason="the mnist1d task needs the optional mnist1d package (.[tasks])"
    )


def tiny_fit(task, out_dir, *, steps=6, resume=False, log_every=1, **kwargs):
    """A few steps of ``fit`` on a hidden-8 LSTM of ``task``: the unit of the resume tests."""
    import optax

    from gatenets.train import fit

    model = task.make_model("lstm", 8, rngs=nnx.Rngs(1))
    fit(
        model,
        optax.adam(1e-2),
        task,
        steps=steps,
        batch_size=8,
        eval_every=0,
        log_every=log_every,
        out_dir=out_dir,
        resume=resume,
        progress=False,
        **kwargs,
    )
    return model


def load_script(path, name):
    """Runs the Python file ``path`` as a module called ``name`` (not entered in
    ``sys.modules``, where an example named like a package would shadow it) and returns it."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name):
    """The example script ``examples/{name}.py`` as a module."""
    return load_script(ROOT / "examples" / f"{name}.py", name)


def cpu_process_env() -> dict[str, str]:
    """The environment of a test's worker process that runs on virtual CPU devices.

    JAX's CPU platform is named explicitly: on a machine with a GPU the default backend would
    be the GPU, which has one device whatever the CPU device count says. The worker sets its
    own device count, over any it inherits, and shares this session's compile cache.
    """
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
    }


def dot_equations(jaxpr, in_loop: bool = False) -> list:
    """``(equation, in_loop)`` for every ``dot_general`` in a jaxpr and in its sub-jaxprs (scan
    and while bodies, custom-VJP calls, ``cond`` branches); ``in_loop`` says whether it runs
    inside a ``scan`` or ``while`` body."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append((eqn, in_loop))
        looping = in_loop or eqn.primitive.name in ("scan", "while")
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += dot_equations(inner, looping)
    return found


def dot_precisions(jaxpr) -> list:
    """The ``precision`` of every ``dot_general`` in a jaxpr and in its sub-jaxprs."""
    return [eqn.params["precision"] for eqn, _ in dot_equations(jaxpr)]
