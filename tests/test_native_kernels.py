"""The native (C++ / XLA FFI) LSTM and GRU kernels against the JAX kernels and against autodiff
through a plain ``lax.scan``.

Values and gradients (inputs, weights, biases, initial carry) must agree with masks (including a
row that is never valid), reverse, gates with their cotangents, constant overrides, recurrent
dropout, the projection inside and outside the loop, batch 1 and empty sequences; float64 must
also pass a finite-difference check. Each configuration folds several features together and
runs under ``jit(value_and_grad)``, to keep the number of compiles small.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gatenets.kernels import gru_sequence, lstm_sequence, native
from gatenets.kernels.native import _build, _registration

pytestmark = pytest.mark.skipif(
    not native.available(),
    reason=f"native kernels not built here: {native.unavailable_reason}",
)


@pytest.fixture(autouse=True)
def on_the_cpu():
    """The native kernels are CPU kernels: these tests put every array and program on the CPU,
    also where JAX's default backend is a GPU."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


T, B, I, H = 5, 3, 4, 6

# valid[t, b]: one row with a gap, one never valid (its carry is held throughout), one
# right-padded.
VALID = np.array([[1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]], bool).T

CONFIGS = {
    "projected": {},
    "inside+mask+reverse+gates+dropout": {
        "inside": True,
        "valid": True,
        "reverse": True,
        "gates": True,
        "dropout": True,
    },
    "overrides+gates+mask+batch1": {
        "valid": True,
        "gates": True,
        # LSTM: forget and output gates constant; GRU: the reset gate.
        "overrides": {"lstm": (None, 0.75, 0.5), "gru": (0.25, None)},
        "batch": 1,
    },
    "inside+overrides+reverse+bias": {
        "inside": True,
        "reverse": True,
        "overrides": {"lstm": (0.25, 0.75, None), "gru": (None, 0.5)},
        "recurrent_bias": True,
    },
}


def _valid(steps, batch):
    """VALID's pattern repeated over as many sequences as ``batch``."""
    return jnp.asarray(np.tile(VALID, (1, -(-batch // VALID.shape[1])))[:steps, :batch])


def _random(shape, seed, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * 0.5, dtype)


# ---------------------------------------------------------------------------------------------
# References: the cell equations in a plain lax.scan, differentiated by JAX.


def _scan_lstm(xs, u, c0, h0, valid, *, input_kernel, bias, recurrent_mask, reverse, overrides):
    def body(carry, step):
        c, h = carry
        x, keep = step
        h_in = h if recurrent_mask is None else h * recurrent_mask
        z = h_in @ u + (x if input_kernel is None else x @ input_kernel + bias[None])
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
        i, f, o = (
            gate if value is None else jnp.full_like(gate, value)
            for gate, value in zip((i, f, o), overrides, strict=True)
        )
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        if keep is not None:
            c_new = jnp.where(keep[:, None], c_new, c)
            h_new = jnp.where(keep[:, None], h_new, h)
        return (c_new, h_new), (h_new, jnp.concatenate([i, f, g, o], axis=-1))

    (c, h), (hs, acts) = jax.lax.scan(body, (c0, h0), (xs, valid), reverse=reverse)
    return c, h, hs, acts


def _scan_gru(xs, u, h0, valid, *, recurrent_bias, input_kernel, bias, recurrent_mask, reverse,
              overrides):  # fmt: skip
    def body(h, step):
        x, keep = step
        a = x if input_kernel is None else x @ input_kernel + bias[None]
        h_in = h if recurrent_mask is None else h * recurrent_mask
        hh = h_in @ u
        a_r, a_z, a_n = jnp.split(a, 3, axis=-1)
        hh_r, hh_z, m = jnp.split(hh, 3, axis=-1)
        if recurrent_bias is not None:
            m = m + recurrent_bias[None]
        r, z = jax.nn.sigmoid(a_r + hh_r), jax.nn.sigmoid(a_z + hh_z)
        r, z = (
            gate if value is None else jnp.full_like(gate, value)
            for gate, value in zip((r, z), overrides, strict=True)
        )
        n = jnp.tanh(a_n + r * m)
        h_new = (1.0 - z) * n + z * h
        if keep is not None:
            h_new = jnp.where(keep[:, None], h_new, h)
        return h_new, (h_new, jnp.concatenate([r, z], axis=-1))

    h, (hs, gates) = jax.lax.scan(body, h0, (xs, valid), reverse=reverse)
    return h, hs, gates


# ---------------------------------------------------------------------------------------------
# Cases


def _lstm_case(config, dtype=jnp.float32, steps=T, hidden=H):
    batch = config.get("batch", B)
    features = I if config.get("inside") else 4 * hidden
    params = {
        "xs": _random((steps, batch, features), 0, dtype),
        "u": _random((hidden, 4 * hidden), 1, dtype),
        "c0": _random((batch, hidden), 2, dtype),
        "h0": _random((batch, hidden), 3, dtype),
    }
    if config.get("inside"):
        params["input_kernel"] = _random((I, 4 * hidden), 4, dtype)
        params["bias"] = _random((4 * hidden,), 5, dtype)
    static = {
        "valid": _valid(steps, batch) if config.get("valid") else None,
        "recurrent_mask": (
            jnp.asarray(np.random.default_rng(6).integers(0, 2, (batch, hidden)) * 2.0, dtype)
            if config.get("dropout")
            else None
        ),
        "reverse": config.get("reverse", False),
        "overrides": config.get("overrides", {}).get("lstm", (None, None, None)),
    }
    return params, static


def _gru_case(config, dtype=jnp.float32, steps=T, hidden=H):
    batch = config.get("batch", B)
    features = I if config.get("inside") else 3 * hidden
    params = {
        "xs": _random((steps, batch, features), 0, dtype),
        "u": _random((hidden, 3 * hidden), 1, dtype),
        "h0": _random((batch, hidden), 3, dtype),
    }
    if config.get("inside"):
        params["input_kernel"] = _random((I, 3 * hidden), 4, dtype)
        params["bias"] = _random((3 * hidden,), 5, dtype)
    if config.get("recurrent_bias"):
        params["recurrent_bias"] = _random((hidden,), 7, dtype)
    static = {
        "valid": _valid(steps, batch) if config.get("valid") else None,
        "recurrent_mask": (
            jnp.asarray(np.random.default_rng(6).integers(0, 2, (batch, hidden)) * 2.0, dtype)
            if config.get("dropout")
            else None
        ),
        "reverse": config.get("reverse", False),
        "overrides": config.get("overrides", {}).get("gru", (None, None)),
    }
    return params, static


def _weighted_sum(outputs, seed=11):
    """A loss with random weights on every output, so that each gets its own cotangent."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for leaf in outputs:
        if leaf is not None:
            total = total + jnp.sum(leaf * jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype))
    return total


def _lstm_loss(kind, gates, static):
    def loss(params):
        kwargs = {k: params[k] for k in ("input_kernel", "bias") if k in params}
        args = (params["xs"], params["u"], params["c0"], params["h0"], static["valid"])
        options = {
            "recurrent_mask": static["recurrent_mask"],
            "reverse": static["reverse"],
            "overrides": static["overrides"],
        }
        if kind == "scan":
            kwargs = {"input_kernel": None, "bias": None, **kwargs}
            c, h, hs, acts = _scan_lstm(*args, **options, **kwargs)
            acts = acts if gates else None
        else:
            function = native.lstm_sequence_native if kind == "native" else lstm_sequence
            c, h, hs, acts = function(*args, return_gates=gates, **options, **kwargs)
        return _weighted_sum([c, h, hs, acts])

    return loss


def _gru_loss(kind, gates, static):
    def loss(params):
        kwargs = {k: params[k] for k in ("input_kernel", "bias") if k in params}
        args = (params["xs"], params["u"], params["h0"], static["valid"])
        options = {
            "recurrent_bias": params.get("recurrent_bias"),
            "recurrent_mask": static["recurrent_mask"],
            "reverse": static["reverse"],
            "overrides": static["overrides"],
        }
        if kind == "scan":
            kwargs = {"input_kernel": None, "bias": None, **kwargs}
            h, hs, gate_values = _scan_gru(*args, **options, **kwargs)
            gate_values = gate_values if gates else None
        else:
            function = native.gru_sequence_native if kind == "native" else gru_sequence
            h, hs, gate_values = function(*args, return_gates=gates, **options, **kwargs)
        return _weighted_sum([h, hs, gate_values])

    return loss


def _compare(results, rtol=2e-5, atol=2e-6):
    (value, grads), (ref_value, ref_grads) = results
    np.testing.assert_allclose(value, ref_value, rtol=rtol)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_native_matches_jax_kernel_and_scan(cell, config_name):
    config = CONFIGS[config_name]
    case, make_loss = (_lstm_case, _lstm_loss) if cell == "lstm" else (_gru_case, _gru_loss)
    params, static = case(config)
    gates = config.get("gates", False)
    got = {
        kind: jax.jit(jax.value_and_grad(make_loss(kind, gates, static)))(params)
        for kind in ("native", "fused", "scan")
    }
    _compare([got["native"], got["fused"]])
    _compare([got["native"], got["scan"]], rtol=1e-4, atol=1e-5)
    # A gradient that vanished would pass both comparisons without testing anything.
    for name, grad in got["native"][1].items():
        assert float(jnp.abs(grad).max()) > 0, name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_long_sequence_crosses_input_projection_chunks(cell):
    # The loop projects the inputs ~512 rows at a time: 200 steps of batch 3 take two chunks
    # (forward for the LSTM, reverse for the GRU, so both chunk walks are checked).
    config = {"inside": True, "reverse": cell == "gru", "valid": False}
    case, make_loss = (_lstm_case, _lstm_loss) if cell == "lstm" else (_gru_case, _gru_loss)
    params, static = case(config, steps=200)
    results = [
        jax.jit(jax.value_and_grad(make_loss(kind, False, static)))(params)
        for kind in ("native", "fused")
    ]
    _compare(results, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_threads_split_the_hidden_units_without_changing_results(cell):
    # Hidden 128 at batch 8 is over the ~1 MFLOP per step from which the loops split the units:
    # three threads take 48, 48 and 32 of them (whole 16-unit blocks).
    config = {"inside": True, "valid": True, "gates": True, "dropout": True, "reverse": True}
    case, make_loss = (_lstm_case, _lstm_loss) if cell == "lstm" else (_gru_case, _gru_loss)
    params, static = case(dict(config, batch=8), steps=4, hidden=128)
    native_grad = jax.jit(jax.value_and_grad(make_loss("native", True, static)))
    threads = native.threads()
    try:
        native.set_threads(1)
        single = native_grad(params)
        native.set_threads(3)
        split = native_grad(params)
    finally:
        native.set_threads(threads)
    _compare([split, single], rtol=1e-6, atol=1e-7)
    fused = jax.jit(jax.value_and_grad(make_loss("fused", True, static)))(params)
    # Gradients reach ~10 here, and the two kernels sum 384-term products in different orders.
    _compare([split, fused], rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_empty_sequence_returns_the_initial_carry_and_its_gradient(cell):
    config = {"inside": True, "valid": True, "gates": True}
    case, make_loss = (_lstm_case, _lstm_loss) if cell == "lstm" else (_gru_case, _gru_loss)
    params, static = case(config, steps=0)
    # Against the plain scan: the JAX kernels' backward pass does not handle zero steps.
    results = [
        jax.value_and_grad(make_loss(kind, True, static))(params) for kind in ("native", "scan")
    ]
    _compare(results)
    assert results[0][1]["xs"].shape == (0, B, I)
    np.testing.assert_array_equal(results[0][1]["u"], 0.0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_float64_matches_jax_kernel_and_finite_differences(cell):
    config = {"inside": True, "valid": True, "gates": True, "dropout": True, "reverse": True}
    with jax.enable_x64(True):
        case, make_loss = (_lstm_case, _lstm_loss) if cell == "lstm" else (_gru_case, _gru_loss)
        params, static = case(config, dtype=jnp.float64)
        # The native, the JAX fused kernel and the plain scan, all summing in float64.
        results = [
            jax.jit(jax.value_and_grad(make_loss(kind, True, static)))(params)
            for kind in ("native", "scan", "jax")
        ]
        assert results[0][1]["u"].dtype == jnp.float64
        _compare(results[:2], rtol=1e-11, atol=1e-12)
        _compare(results[1:], rtol=1e-11, atol=1e-12)
        check_grads(make_loss("native", True, static), (params,), order=1, modes=["rev"])


def test_inference_saves_nothing_for_a_backward_pass():
    params, static = _lstm_case({"inside": True})

    def outputs(function):
        def run(params):
            return function(
                params["xs"], params["u"], params["c0"], params["h0"],
                input_kernel=params["input_kernel"], bias=params["bias"],
            )[2].sum()  # fmt: skip

        return run

    def ffi_result_shapes(jaxpr):
        """Result shapes of every FFI call, including those inside custom-VJP sub-jaxprs."""
        found = []
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "ffi_call":
                found.append([tuple(aval.shape) for aval in eqn.params["result_avals"]])
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple | list) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if isinstance(inner, jax.extend.core.Jaxpr):
                        found += ffi_result_shapes(inner)
        return found

    forward = jax.make_jaxpr(outputs(native.lstm_sequence_native))(params).jaxpr
    # Inference: c, h, hs, and empty gates and cell states.
    assert ffi_result_shapes(forward) == [[(B, H), (B, H), (T, B, H), (0,), (0,)]]
    # Training: the gates and the cell states are saved for the backward call.
    training = jax.make_jaxpr(jax.grad(outputs(native.lstm_sequence_native)))(params).jaxpr
    assert ffi_result_shapes(training)[0] == [(B, H), (B, H), (T, B, H), (T, B, 4 * H), (T, B, H)]


def test_vmap_over_independent_sequences():
    params, static = _gru_case({"valid": True})
    xs = jnp.stack([params["xs"], 2.0 * params["xs"]])

    def run(xs):
        return native.gru_sequence_native(xs, params["u"], params["h0"], static["valid"])[1]

    batched = jax.vmap(run)(xs)
    np.testing.assert_allclose(batched[1], run(xs[1]), rtol=1e-6)
    np.testing.assert_allclose(batched[0], run(xs[0]), rtol=1e-6)


def test_errors_name_the_argument():
    params, _ = _lstm_case({})
    xs, u, c0, h0 = params["xs"], params["u"], params["c0"], params["h0"]
    with pytest.raises(ValueError, match=r"remat=True is not supported"):
        native.lstm_sequence_native(xs, u, c0, h0, remat=True)
    with pytest.raises(ValueError, match=r"precision must be None, .*; got 'bogus'"):
        native.lstm_sequence_native(xs, u, c0, h0, precision="bogus")
    # Accepted and, on CPU where every BLAS matmul is full precision, without effect.
    np.testing.assert_array_equal(
        native.lstm_sequence_native(xs, u, c0, h0, precision="highest")[2],
        native.lstm_sequence_native(xs, u, c0, h0)[2],
    )
    with pytest.raises(ValueError, match=r"c0 must have shape \(3, 6\); got \(2, 6\)"):
        native.lstm_sequence_native(xs, u, c0[:2], h0)
    with pytest.raises(ValueError, match=r"xs must have shape \(5, 3, 24\); got \(5, 3, 18\)"):
        native.lstm_sequence_native(xs[..., :18], u, c0, h0)
    with pytest.raises(TypeError, match=r"h0 must have dtype float32; got bfloat16"):
        native.lstm_sequence_native(xs, u, c0, h0.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match=r"input_kernel needs bias"):
        native.gru_sequence_native(xs[..., :4], u[:, :18], h0, input_kernel=u[:4, :18])
    with pytest.raises(ValueError, match=r"valid must have shape \(5, 3\); got \(3, 5\)"):
        native.gru_sequence_native(xs[..., :18], u[:, :18], h0, jnp.ones((3, 5), bool))
    threads = native.threads()
    native.set_threads(1)
    assert native.threads() == 1
    native.set_threads(threads)
    with pytest.raises(ValueError, match=r"thread count must be at least 1; got 0"):
        native.set_threads(0)


def test_unavailable_reports_why(monkeypatch):
    monkeypatch.setattr(_registration, "_state", {})
    monkeypatch.setenv("GATENETS_NATIVE", "0")
    assert not native.available()
    assert "GATENETS_NATIVE" in native.unavailable_reason
    params, _ = _lstm_case({})
    with pytest.raises(RuntimeError, match=r"unavailable: disabled by .*GATENETS_NATIVE"):
        native.lstm_sequence_native(params["xs"], params["u"], params["c0"], params["h0"])


# ---------------------------------------------------------------------------------------------
# The cache of built libraries: verified before loading, rebuilt when damaged


def _built_library() -> Path:
    """The library this process loaded (built and verified by ``native.available()``)."""
    return Path(_registration._state["library"]._name)


def _damage(path: Path, kind: str) -> None:
    size = path.stat().st_size
    if kind == "truncated":
        os.truncate(path, size // 2)
    elif kind == "empty":
        os.truncate(path, 0)
    elif kind == "tiny":
        path.write_bytes(b"\x7fELF")
    elif kind == "zeros":
        path.write_bytes(bytes(size))


@pytest.fixture
def fake_compiler(monkeypatch):
    """Replaces the compiler run by one that writes the real library's bytes to the ``-o``
    path, counting its calls: the cache logic runs without a real compile."""
    good = _built_library().read_bytes()
    calls = []

    def compile_(command):
        calls.append(command)
        Path(command[command.index("-o") + 1]).write_bytes(good)

    monkeypatch.setattr(_build, "_compile", compile_)
    return good, calls


@pytest.mark.parametrize("kind", ["truncated", "empty", "tiny", "zeros"])
def test_damaged_cached_library_is_rebuilt_not_loaded(kind, tmp_path, monkeypatch, fake_compiler):
    good, calls = fake_compiler
    monkeypatch.setenv("GATENETS_NATIVE_CACHE", str(tmp_path))
    first = _build.build()
    assert len(calls) == 1 and first.path.parent == tmp_path and not first.temporary
    assert _build.verified(first.path)
    # A matching library is loaded as it is: no compile, no write.
    with monkeypatch.context() as patch:
        patch.setattr(_build, "_unwritable", lambda directory: pytest.fail("wrote"))
        assert _build.build() == first and len(calls) == 1
    _damage(first.path, kind)
    assert not _build.verified(first.path)
    again = _build.build()
    assert again.path == first.path and len(calls) == 2
    assert again.path.read_bytes() == good and _build.verified(again.path)
    # Nothing partial is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        first.path.name,
        first.path.name + ".sha256",
    ]


def test_library_without_a_matching_record_is_rebuilt(tmp_path, monkeypatch, fake_compiler):
    good, calls = fake_compiler
    monkeypatch.setenv("GATENETS_NATIVE_CACHE", str(tmp_path))
    path = _build.build().path
    record = path.with_name(path.name + ".sha256")
    for content in ("", "null", f'{{"sha256": "0", "size": {len(good)}}}'):
        record.write_text(content)
        assert not _build.verified(path)
    record.unlink()
    assert not _build.verified(path)
    _build.build()
    assert len(calls) == 2 and _build.verified(path)


def test_unwritable_cache_warns_once_and_builds_in_a_temporary_directory(
    tmp_path, monkeypatch, fake_compiler
):
    good, calls = fake_compiler
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GATENETS_NATIVE_CACHE", str(blocker / "cache"))
    with pytest.warns(
        RuntimeWarning, match=r"native kernel cache .*a-file/cache cannot be written"
    ):
        built = _build.build()
    try:
        assert built.temporary and built.path.read_bytes() == good and _build.verified(built.path)
        assert len(calls) == 1 and not str(built.path).startswith(str(blocker))
    finally:
        shutil.rmtree(built.path.parent)


def test_truncated_cached_library_does_not_crash_a_fresh_process(tmp_path, monkeypatch):
    # A truncated library under the cache's own name, with its build's record, once made every
    # native call of a process die with a bus error (exit 135). The "compiler" of the fresh
    # process copies the real library (the real compile runs once per suite, not here).
    library = _built_library()
    compiler = tmp_path / "fake-c++"
    compiler.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo fake; exit 0; fi\n'
        f'while [ $# -gt 0 ]; do [ "$1" = -o ] && exec cp "{library}" "$2"; shift; done\n'
        "exit 1\n"
    )
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    blas = _build.find_blas()
    key = _build._cache_key(str(compiler), _build._compile_flags(), blas)
    planted = tmp_path / f"gatenets_native_{blas['name']}_{key}.so"
    shutil.copy(library.with_name(library.name + ".sha256"), f"{planted}.sha256")
    planted.write_bytes(library.read_bytes()[: library.stat().st_size // 2])
    script = (
        "import jax.numpy as jnp\n"
        "from gatenets.kernels import native\n"
        "assert native.available(), native.unavailable_reason\n"
        "xs, u, zero = jnp.ones((3, 2, 8)), jnp.zeros((2, 8)), jnp.zeros((2, 2))\n"
        "print(float(native.lstm_sequence_native(xs, u, zero, zero)[1][0, 0]))\n"
    )
    env = dict(os.environ, GATENETS_NATIVE_CACHE=str(tmp_path), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # h after 3 steps of an LSTM with zero weights and inputs of one: computed by hand.
    c = h = 0.0
    for _ in range(3):
        gate = 1.0 / (1.0 + np.exp(-1.0))
        c = gate * c + gate * np.tanh(1.0)
        h = gate * np.tanh(c)
    np.testing.assert_allclose(float(result.stdout.split()[-1]), h, rtol=1e-6)
    assert _build.verified(planted) and planted.read_bytes() == library.read_bytes()
