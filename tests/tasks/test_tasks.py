"""Task data against independent constructions, baselines against direct computation, and the
generic tests every registered task and every model family gets for free."""

import collections
import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import params_of, require_mnist1d

from gatenets.registry import FAMILIES
from gatenets.tasks import TASKS, SequenceModel, get_task, list_models, list_tasks
from gatenets.tasks.base import cross_entropy
from gatenets.tasks.charlm import STDLIB_FILES, stdlib_corpus
from gatenets.tasks.copying import DELIMITER
from gatenets.tasks.temporal_order import END, START, X, Y, expected_calibration_error
from gatenets.train import evaluate, fit, make_train_step


class Small(NamedTuple):
    """Settings that keep a task's generic tests quick (the optax ``alias_test`` pattern: the
    tests iterate :data:`TASKS`, so a new task gets them with ``Small()`` unless a row here
    makes it smaller)."""

    options: dict[str, Any] = {}
    hidden: int = 8
    batch_size: int = 16
    learning_rate: float = 1e-2
    steps: int = 30
    # The largest allowed ratio of validation loss after ``steps`` to before.
    max_ratio: float = 0.99


SMALL = {
    "adding": Small({"length": 8}, max_ratio=0.9),
    "copying": Small({"delay": 3}, hidden=16, max_ratio=0.9),
    # MNIST-1D starts slowly at this size: 60 steps take the loss down by about 1.6%.
    "mnist1d": Small({"num_samples": 500}, 16, 32, 3e-2, 60),
    "charlm": Small({"seq_len": 16}, hidden=16, max_ratio=0.9),
    "temporal_order": Small({"min_length": 12, "max_length": 14}, 8, 32, 3e-2),
}


def small(name, *, data=True):
    """The task ``name`` at its small options, and its settings; with ``data``, the test is
    skipped, saying why, where the task's data cannot be made here (an optional package)."""
    if data and name == "mnist1d":
        require_mnist1d()
    settings = SMALL.get(name, Small())
    return get_task(name, **settings.options), settings


def first(task, split="train", batch_size=8, seed=0):
    return next(task.batches(split, batch_size, seed=seed))


def first_at(task, index, seed):
    return next(task.batches("train", 8, seed=seed, start=index))


def test_registry_names_and_contract_attributes():
    assert list_tasks() == sorted(TASKS) and len(TASKS) >= 5
    assert list_models() == [*FAMILIES, "attention"]
    for name in list_tasks():
        task, _ = small(name, data=False)
        assert task.name == name and task.description and task.metric
        assert isinstance(task.baseline, float) and isinstance(task.target, float)
        assert task.baseline_source and {"steps", "batch_size", "hidden"} <= set(task.defaults)


@pytest.mark.parametrize("name", list_tasks())
def test_training_data_is_a_function_of_seed_and_index(name):
    task, _ = small(name)
    a, b, c = first(task, seed=3), first(task, seed=3), first(task, seed=4)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, c.inputs)
    stream = task.batches("train", 8, seed=3)
    next(stream)
    second = next(stream)
    np.testing.assert_array_equal(second.inputs, first_at(task, 1, seed=3).inputs)
    np.testing.assert_array_equal(second.targets, first_at(task, 1, seed=3).targets)
    # Evaluation sets never share a batch with the training stream.
    assert not np.array_equal(first(task, "valid", seed=3).inputs, a.inputs)


@pytest.mark.parametrize("name", list_tasks())
def test_shapes_and_a_finite_loss_and_metrics_of_the_default_model(name):
    task, settings = small(name)
    batch = first(task, batch_size=4)
    assert np.shape(batch.inputs)[0] == np.shape(batch.targets)[0] == 4
    if batch.mask is not None:
        assert batch.mask.shape == np.shape(batch.inputs)[:2] and batch.mask.dtype == bool
    model = task.make_model(task.defaults.get("model", "lstm"), settings.hidden, rngs=nnx.Rngs(0))
    outputs = model(jnp.asarray(batch.inputs), mask=batch.mask)
    loss = float(task.loss(outputs, batch))
    metrics = {k: float(v) for k, v in task.metrics(outputs, batch).items()}
    assert task.metric in metrics and np.isfinite(loss) and loss > 0
    assert all(np.isfinite(v) for v in metrics.values()), metrics


@pytest.mark.parametrize("name", list_tasks())
def test_a_few_steps_lower_the_validation_loss(name):
    task, settings = small(name)
    model = task.make_model(task.defaults.get("model", "lstm"), settings.hidden, rngs=nnx.Rngs(0))
    before = evaluate(model, task, "valid", batch_size=1024)
    fit(
        model,
        optax.adam(settings.learning_rate),
        task,
        steps=settings.steps,
        batch_size=settings.batch_size,
        eval_every=0,
        progress=False,
    )
    after = evaluate(model, task, "valid", batch_size=1024)
    assert after["loss"] < settings.max_ratio * before["loss"], (before, after)
    assert set(after) >= {"loss", task.metric}


@pytest.mark.parametrize("model_name", list_models())
def test_every_model_builds_and_takes_a_train_step(model_name):
    task = get_task("adding", length=6)
    model = task.make_model(model_name, 4, rngs=nnx.Rngs(0))
    batch = first(task, batch_size=8)
    expected = float(task.loss(model(jnp.asarray(batch.inputs)), batch))
    before = params_of(model)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    loss = float(make_train_step(task)(model, optimizer, batch))
    # The step reports the loss of the parameters it started from, and moves every matrix.
    assert loss == pytest.approx(expected, rel=1e-5) and np.isfinite(loss)
    after = params_of(model)
    assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
    _, trace = model(jnp.asarray(batch.inputs), return_gates=True)
    assert trace.gates and trace.mask.shape == (8, 6)
    for path, gate in trace.items():
        assert gate.shape[:2] == (8, 6), path
        assert 0.0 <= float(gate.min()) and float(gate.max()) <= 1.0, path


def test_adding_data_markers_and_targets():
    batch = first(get_task("adding", length=20), batch_size=64)
    values, markers = batch.inputs[..., 0], batch.inputs[..., 1]
    assert batch.inputs.shape == (64, 20, 2) and batch.inputs.dtype == np.float32
    assert batch.mask is None and values.min() >= 0 and values.max() <= 1
    np.testing.assert_array_equal(markers[:, :10].sum(1), 1)
    np.testing.assert_array_equal(markers[:, 10:].sum(1), 1)
    for row in range(64):
        expected = sum(v for v, m in zip(values[row], markers[row], strict=True) if m == 1)
        assert batch.targets[row] == pytest.approx(expected, abs=1e-6)


def test_adding_baseline_is_the_mse_of_predicting_the_mean():
    task = get_task("adding", length=10)
    targets = np.concatenate([b.targets for b in task.batches("valid", 512, seed=0)])
    assert task.baseline == pytest.approx(1 / 6)
    assert np.mean((targets - 1.0) ** 2) == pytest.approx(task.baseline, abs=0.02)
    assert len(targets) == 1024


def test_copying_data_layout():
    delay = 7
    batch = first(get_task("copying", delay=delay), batch_size=16)
    assert batch.inputs.shape == batch.targets.shape == (16, delay + 20)
    symbols = batch.inputs[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    np.testing.assert_array_equal(batch.inputs[:, delay + 9], DELIMITER)
    rest = np.delete(batch.inputs, list(range(10)) + [delay + 9], axis=1)
    np.testing.assert_array_equal(rest, 0)
    np.testing.assert_array_equal(batch.targets[:, -10:], symbols)
    np.testing.assert_array_equal(batch.targets[:, :-10], 0)


@pytest.mark.parametrize("delay", [5, 50, 200])
def test_copying_baseline_is_the_memoryless_cross_entropy(delay):
    task = get_task("copying", delay=delay)
    batch = first(task, batch_size=4)
    # Certain blanks until the recall, then uniform over the 8 symbols.
    probabilities = np.zeros((4, delay + 20, 9))
    probabilities[:, :-10, 0] = 1.0
    probabilities[:, -10:, 1:] = 1 / 8
    logits = jnp.log(jnp.asarray(probabilities) + 1e-30)
    memoryless = float(cross_entropy(logits, jnp.asarray(batch.targets)))
    assert memoryless == pytest.approx(task.baseline, rel=1e-5)
    assert task.baseline == pytest.approx(10 * math.log(8) / (delay + 20))


def test_mnist1d_splits_match_make_dataset():
    require_mnist1d()
    from mnist1d.data import get_dataset_args, make_dataset

    # A small dataset keeps the test quick; the split logic is the same at the default 5000.
    task = get_task("mnist1d", num_samples=500)
    args = get_dataset_args()
    args.num_samples = 500
    reference = make_dataset(args)
    sizes = {}
    for split in ("train", "valid", "test"):
        x, y = task.split_arrays(split)
        assert x.shape[1:] == (40, 1) and x.dtype == np.float32 and y.min() >= 0 and y.max() <= 9
        sizes[split] = len(x)
    assert sizes == {"train": 360, "valid": 40, "test": 100}
    test = np.concatenate([b.inputs for b in task.batches("test", 30, seed=0)])
    np.testing.assert_allclose(test[..., 0], reference["x_test"], rtol=1e-6)
    labels = np.concatenate([b.targets for b in task.batches("test", 30, seed=0)])
    np.testing.assert_array_equal(labels, reference["y_test"])
    np.testing.assert_allclose(task.split_arrays("valid")[0][..., 0], reference["x"][-40:], 1e-6)


def test_mnist1d_training_batches_are_distinct_rows_of_the_train_split():
    require_mnist1d()
    task = get_task("mnist1d", num_samples=500)
    x, y = task.split_arrays("train")
    batch = first(task, batch_size=32)
    rows = [int(np.flatnonzero((x == row).all(axis=(1, 2)))[0]) for row in batch.inputs]
    assert len(set(rows)) == 32
    np.testing.assert_array_equal(y[rows], batch.targets)


@pytest.fixture(scope="module")
def charlm():
    return get_task("charlm", seq_len=32)


def test_charlm_corpus_vocabulary_and_splits(charlm):
    text = stdlib_corpus()
    assert len(STDLIB_FILES) == 14 and len(text) > 100_000
    assert charlm.vocab == tuple(sorted(set(text)))
    assert charlm.decode(charlm.encode(text[:500])) == text[:500]
    parts = [charlm._splits[s] for s in ("train", "valid", "test")]
    np.testing.assert_array_equal(np.concatenate(parts), charlm.encode(text))
    assert len(parts[0]) == int(0.9 * len(text))


def test_charlm_batches_shift_by_one_and_cover_the_split(charlm):
    batch = first(charlm, batch_size=4)
    assert batch.inputs.shape == batch.targets.shape == (4, 32)
    np.testing.assert_array_equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    targets = np.concatenate([b.targets.reshape(-1) for b in charlm.batches("valid", 64, seed=0)])
    valid = charlm._splits["valid"]
    np.testing.assert_array_equal(targets, valid[1 : 1 + len(targets)])
    assert len(valid) - 1 - len(targets) < 32


def test_charlm_baseline_is_the_unigram_entropy(charlm):
    train_text = charlm.decode(charlm._splits["train"])
    counts = collections.Counter(train_text)
    total = sum(counts.values())
    entropy = -sum(n / total * math.log2(n / total) for n in counts.values())
    assert charlm.baseline == pytest.approx(entropy, rel=1e-9)


def test_charlm_text_file_and_sampling(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abcab" * 40)
    task = get_task("charlm", text_file=str(path), seq_len=8)
    assert task.vocab == ("a", "b", "c") and task.baseline == pytest.approx(
        -(0.4 * math.log2(0.4) * 2 + 0.2 * math.log2(0.2)), abs=0.01
    )
    assert task.default_prompt == "a"  # "def " is not in this vocabulary
    model = task.make_model("gru", 8, rngs=nnx.Rngs(0))
    text = task.sample(model, "ab", 12, temperature=0.5, seed=1)
    assert text.startswith("ab") and len(text) == 14 and set(text) <= set("abc")
    assert task.sample(model, "ab", 12, temperature=0.5, seed=1) == text
    with pytest.raises(ValueError, match="temperature must be a positive number; got 0"):
        task.sample(model, "ab", 3, temperature=0)
    with pytest.raises(ValueError, match="character 'z' is not in the vocabulary"):
        task.sample(model, "z", 3)


def test_temporal_order_sequences(tmp_path):
    task = get_task("temporal_order", min_length=20, max_length=26)
    batch = first(task, batch_size=64)
    lengths = batch.mask.sum(1)
    assert batch.inputs.shape == (64, 26) and lengths.min() >= 20 and lengths.max() <= 26
    for tokens, length, target, valid in zip(
        batch.inputs, lengths, batch.targets, batch.mask, strict=True
    ):
        np.testing.assert_array_equal(valid, np.arange(26) < length)
        assert tokens[0] == START and tokens[length - 1] == END
        x_at, y_at = np.flatnonzero(tokens == X), np.flatnonzero(tokens == Y)
        assert len(x_at) == len(y_at) == 1
        early, late = sorted([x_at[0], y_at[0]])
        assert 2 <= early <= 4 and 10 <= late <= 12
        assert target == float(x_at[0] < y_at[0])
        assert (tokens[1 : length - 1] < 4).sum() == length - 4
    assert 0.2 < batch.targets.mean() < 0.8


def test_brier_and_calibration_against_numpy():
    task = get_task("temporal_order", min_length=12, max_length=12)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 1)).astype(np.float32)
    targets = rng.integers(0, 2, 200).astype(np.float32)
    batch = first(task, batch_size=200)._replace(targets=targets)
    metrics = task.metrics(jnp.asarray(logits), batch)
    p = 1 / (1 + np.exp(-logits[:, 0]))
    assert float(metrics["brier"]) == pytest.approx(np.mean((p - targets) ** 2), rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean((p > 0.5) == (targets == 1)))
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(
        (bins == b).sum() / 200 * abs(targets[bins == b].mean() - p[bins == b].mean())
        for b in range(10)
        if (bins == b).any()
    )
    assert float(expected_calibration_error(jnp.asarray(p), jnp.asarray(targets))) == (
        pytest.approx(ece, abs=1e-5)
    )
    bce = -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    assert float(metrics["bce"]) == pytest.approx(bce, rel=1e-5)


def test_last_readout_with_a_mask_equals_the_unpadded_run():
    model = SequenceModel(3, 5, 2, model="lstm", rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 3)), jnp.float32)
    mask = jnp.arange(7)[None, :] < jnp.array([[4], [7]])
    padded = model(x, mask=mask)
    np.testing.assert_allclose(padded[0], model(x[:1, :4])[0], atol=1e-6)
    np.testing.assert_allclose(padded[1], model(x[1:])[0], atol=1e-6)


@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        ("sorting", {}, ValueError, "unknown task 'sorting'; the tasks are"),
        ("adding", {"lenght": 5}, ValueError, r"unknown option\(s\) \['lenght'\]"),
        ("adding", {"length": 1}, ValueError, "length must be an int >= 2; got 1"),
        ("adding", {"length": 2.5}, ValueError, "length must be an int >= 2; got 2.5"),
        ("copying", {"delay": 0}, ValueError, "delay must be a positive int; got 0"),
        ("temporal_order", {"min_length": 30, "max_length": 20}, ValueError, "max_length"),
        ("charlm", {"text_file": "/nonexistent/x.txt"}, FileNotFoundError, "text_file: no such"),
        ("mnist1d", {"data_seed": -1}, ValueError, "data_seed must be an int >= 0; got -1"),
    ],
)
def test_bad_task_arguments_are_named(name, options, error, message):
    with pytest.raises(error, match=message):
        get_task(name, **options)


def test_empty_and_too_short_corpora(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        get_task("charlm", text_file=str(empty))
    short = tmp_path / "short.txt"
    short.write_text("x" * 100)
    with pytest.raises(ValueError, match="text is too short: the valid split"):
        get_task("charlm", text_file=str(short), seq_len=8)


def test_bad_batch_arguments():
    task = get_task("adding", length=4)
    with pytest.raises(ValueError, match="split must be one of"):
        first(task, "validation")
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
        first(task, batch_size=0)
    with pytest.raises(
        ValueError, match="model must be one of \\['lstm', 'gru', .*'attention'\\]; got 'rnn'"
    ):
        task.make_model("rnn", 4, rngs=nnx.Rngs(0))
