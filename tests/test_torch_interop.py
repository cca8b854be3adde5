"""Numerical equivalence with PyTorch's nn.LSTM / nn.GRU, and weight conversion both ways."""

import itertools
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomize

import gatenets
from gatenets.interop import carry_from_torch, carry_to_torch, from_torch, to_torch

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
    layer = from_torch(state, batch_first=True)
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
        from_torch(two, batch_first=False)
    with pytest.raises(ValueError, match="no key 'c.weight_ih_l0'"):
        from_torch(two, prefix="c.", batch_first=False)


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
        (
            lambda: gatenets.LSTM(I, H, gate_fn=jax.nn.hard_sigmoid, rngs=nnx.Rngs(0)),
            "sigmoid gates and tanh activations only; layer 0 has gate_fn=hard_sigmoid",
        ),
        (
            lambda: gatenets.GRU(I, H, num_layers=2, activation_fn=jax.nn.relu, rngs=nnx.Rngs(0)),
            "activation_fn=relu",
        ),
        (
            lambda: gatenets.LSTM(I, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
            "float32 parameters and computes in bfloat16",
        ),
    ],
)
def test_to_torch_refuses_what_torch_cannot_express(layer, message):
    with pytest.raises(ValueError, match=message):
        to_torch(layer())


def test_conversion_bad_input():
    with pytest.raises(
        TypeError, match="torch.nn.LSTM, a torch.nn.GRU, a state_dict, or .* got RNN"
    ):
        from_torch(torch.nn.RNN(I, H))
    with pytest.raises(TypeError, match="gatenets.LSTM or gatenets.GRU"):
        to_torch(gatenets.RNN(gatenets.GRUCell(I, H, rngs=nnx.Rngs(0))))


@pytest.mark.parametrize("missing", ["bias_ih_l0", "bias_hh_l0", "bias_hh_l1_reverse"])
def test_state_dict_with_one_bias_missing_is_refused(missing):
    state = dict(torch.nn.LSTM(I, H, num_layers=2, bidirectional=True).state_dict())
    del state[missing]
    with pytest.raises(ValueError, match=f"rnn.{missing}"):
        from_torch({f"rnn.{k}": v for k, v in state.items()}, batch_first=False)
    if missing == "bias_ih_l0":
        # Read before: a bias-free LSTM, bias_hh silently ignored.
        with pytest.raises(ValueError, match="both biases .* or neither"):
            from_torch(state, batch_first=False)


def test_state_dict_needs_the_layout_and_gets_it_right():
    module = torch.nn.GRU(I, H, num_layers=2)  # PyTorch's default: time-major
    state = module.state_dict()
    with pytest.raises(ValueError, match="batch_first=True .* or batch_first=False"):
        from_torch(state)
    with pytest.raises(TypeError, match="batch_first must be True or False"):
        from_torch(state, batch_first="no")
    x = np.random.default_rng(3).standard_normal((B, T, I)).astype(np.float32)
    ref_out, ref_h, _ = torch_run(module, x, None)
    layer = from_torch(state, batch_first=False)
    assert layer.time_major
    y = layer(jnp.asarray(x.swapaxes(0, 1)))
    np.testing.assert_allclose(np.asarray(y).swapaxes(0, 1), ref_out, atol=1e-6)


def test_stray_and_unreadable_entries_are_named():
    state = {f"rnn.{k}": v for k, v in torch.nn.LSTM(I, H).state_dict().items()}
    with pytest.raises(ValueError, match=r"\['rnn.weight_ih_l2'\]"):
        from_torch({**state, "rnn.weight_ih_l2": torch.zeros(4 * H, H)}, batch_first=True)
    with pytest.raises(ValueError, match="does not have: \\['rnn.extra'\\]"):
        from_torch({**state, "rnn.extra": torch.zeros(3)}, batch_first=True)
    with pytest.raises(TypeError, match=r"state_dict\['rnn.step'\] must be a tensor .* got str"):
        from_torch({**state, "rnn.step": "three"}, batch_first=True)
    mixed = {**state, "rnn.bias_hh_l0": state["rnn.bias_hh_l0"].to(torch.int64)}
    with pytest.raises(TypeError, match=r"'rnn.bias_hh_l0'\] has dtype int64"):
        from_torch(mixed, batch_first=True)
    # Keys outside the prefix (the rest of a model) stay untouched.
    from_torch({**state, "decoder.weight": torch.zeros(2, 2)}, batch_first=True)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_bfloat16_weights_convert_exactly_both_ways(kind):
    module = getattr(torch.nn, kind)(I, H, batch_first=True).to(torch.bfloat16)
    layer = from_torch(module)
    cell = layer.cell
    assert cell.param_dtype == jnp.bfloat16 and cell.kernel[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(cell.kernel[...], np.float32), module.weight_ih_l0.detach().float().numpy().T
    )
    back = to_torch(layer).state_dict()
    for name, tensor in back.items():
        assert tensor.dtype == torch.bfloat16, name
    np.testing.assert_array_equal(
        back["weight_hh_l0"].float(), module.weight_hh_l0.detach().float()
    )
    if kind == "GRU":
        np.testing.assert_array_equal(
            back["bias_hh_l0"].float(), module.bias_hh_l0.detach().float()
        )
    x = np.random.default_rng(4).standard_normal((B, T, I)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x).to(torch.bfloat16))[0].float().numpy()
    # bfloat16 has 8 significant bits: the two libraries round in different places.
    np.testing.assert_allclose(
        np.asarray(layer(jnp.asarray(x, jnp.bfloat16)), np.float32), expected, atol=0.05
    )


@pytest.mark.parametrize(
    "kind, num_layers, bidirectional, proj_size",
    [("LSTM", 2, True, 0), ("LSTM", 2, False, 3), ("GRU", 2, True, 0), ("GRU", 1, False, 0)],
)
def test_carries_from_and_to_torch(kind, num_layers, bidirectional, proj_size):
    kwargs = {"num_layers": num_layers, "bidirectional": bidirectional}
    if kind == "LSTM":
        module = torch.nn.LSTM(I, H, proj_size=proj_size, **kwargs)
    else:
        module = torch.nn.GRU(I, H, **kwargs)
    rows = num_layers * (2 if bidirectional else 1)
    generator = torch.Generator().manual_seed(5)
    h0 = torch.randn(rows, B, proj_size or H, generator=generator)
    c0 = torch.randn(rows, B, H, generator=generator)
    x = torch.randn(T, B, I, generator=generator)
    with torch.no_grad():
        out, state = module(x, (h0, c0) if kind == "LSTM" else h0)
    layer = from_torch(module)
    start = carry_from_torch((h0, c0) if kind == "LSTM" else h0, layer)
    assert len(start) == num_layers
    carry, y = layer(jnp.asarray(x.numpy()), initial_carry=start, return_carry=True)
    np.testing.assert_allclose(y, out.numpy(), atol=1e-5)
    final = carry_to_torch(carry)
    if kind == "LSTM":
        np.testing.assert_allclose(final[0].numpy(), state[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(final[1].numpy(), state[1].numpy(), atol=1e-5)
    else:
        np.testing.assert_allclose(final.numpy(), state.numpy(), atol=1e-5)
    # The round trip is exact.
    again = carry_to_torch(carry_from_torch(final, layer))
    for a, b in zip(
        again if kind == "LSTM" else [again], final if kind == "LSTM" else [final], strict=True
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_torch_carries_in_the_wrong_layout_are_refused():
    lstm = gatenets.LSTM(I, H, num_layers=2, rngs=nnx.Rngs(0))
    h, c = torch.zeros(B, H), torch.zeros(B, H)
    with pytest.raises(ValueError, match=r"h_n must be PyTorch's stacked state \[layers \*"):
        carry_from_torch((h, c), lstm)  # one layer's (h, c), not the stacked pair
    with pytest.raises(TypeError, match="already a gatenets LSTMCarry"):
        carry_from_torch(gatenets.LSTMCarry(c=c, h=h), lstm)
    with pytest.raises(TypeError, match=r"PyTorch's \(h_n, c_n\) pair; got Tensor"):
        carry_from_torch(torch.zeros(2, B, H), lstm)
    with pytest.raises(TypeError, match="GRU must be PyTorch's h_n tensor"):
        carry_from_torch((torch.zeros(1, B, H),), gatenets.GRU(I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match=r"could be \(c, h\) or \(h, c\)"):
        carry_to_torch(((c, h), (c, h)))


class RNNModel(torch.nn.Module):
    """pytorch/examples word_language_model/model.py, RNNModel (LSTM/GRU branch)."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = torch.nn.Dropout(dropout)
        self.encoder = torch.nn.Embedding(ntoken, ninp)
        self.rnn = getattr(torch.nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = torch.nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.init_weights()
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers

    def init_weights(self):
        initrange = 0.1
        torch.nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        torch.nn.init.zeros_(self.decoder.bias)
        torch.nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        decoded = decoded.view(-1, self.ntoken)
        return torch.nn.functional.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (
                weight.new_zeros(self.nlayers, bsz, self.nhid),
                weight.new_zeros(self.nlayers, bsz, self.nhid),
            )
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_word_language_model_moves_in_three_lines(rnn_type):
    torch.manual_seed(6)
    model = RNNModel(rnn_type, ntoken=11, ninp=4, nhid=5, nlayers=2, dropout=0.2).eval()
    tokens = torch.randint(0, 11, (2, 7, 3))  # two consecutive [time, batch] chunks
    hidden = model.init_hidden(3)
    expected = []
    with torch.no_grad():
        for chunk in tokens:  # as main.py's evaluate(): the hidden state carries over
            log_probs, hidden = model(chunk, hidden)
            expected.append(log_probs.numpy())

    # The three lines: the model's parts, and PyTorch's hidden state.
    encoder, rnn, decoder = (from_torch(m) for m in (model.encoder, model.rnn, model.decoder))
    carry = carry_from_torch(model.init_hidden(3), rnn)
    for chunk, want in zip(tokens, expected, strict=True):
        carry, y = rnn(encoder(jnp.asarray(chunk.numpy())), initial_carry=carry, return_carry=True)
        log_probs = jax.nn.log_softmax(decoder(y).reshape(-1, 11), axis=-1)
        np.testing.assert_allclose(log_probs, want, atol=1e-6)
    final = carry_to_torch(carry)
    for ours, theirs in zip(
        final if rnn_type == "LSTM" else [final],
        hidden if rnn_type == "LSTM" else [hidden],
        strict=True,
    ):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)
    assert rnn.time_major and rnn.dropout.rate == pytest.approx(0.2)


def test_model_parts_convert_to_nnx():
    torch.manual_seed(7)
    norm = torch.nn.LayerNorm(5, eps=1e-3)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    sequential = torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Dropout(0.3), norm, torch.nn.Linear(5, 2, bias=False)
    ).eval()
    x = torch.randn(3, 4)
    ours = from_torch(sequential)
    assert isinstance(ours, nnx.Sequential) and ours.layers[1].rate == pytest.approx(0.3)
    assert ours.layers[1].deterministic  # the module was in evaluation mode
    with torch.no_grad():
        np.testing.assert_allclose(ours(jnp.asarray(x.numpy())), sequential(x).numpy(), atol=1e-6)
    embedding = torch.nn.Embedding(6, 3, padding_idx=0)
    with pytest.warns(UserWarning, match="padding_idx=0"):
        embed = from_torch(embedding)
    ids = torch.tensor([[0, 5, 2]])
    np.testing.assert_array_equal(embed(jnp.asarray(ids.numpy())), embedding(ids).detach())
    with pytest.raises(ValueError, match="max_norm"):
        from_torch(torch.nn.Embedding(6, 3, max_norm=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_torch(torch.nn.Embedding(6, 3))


def test_import_gatenets_gives_interop_without_importing_frameworks():
    script = (
        "import sys, gatenets; "
        "assert gatenets.interop.from_keras and gatenets.interop.carry_from_torch; "
        "print(sorted(m for m in ('torch', 'keras', 'equinox') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
