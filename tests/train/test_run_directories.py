"""A run directory against a hostile but realistic user: a changed text file, two runs at
once, someone else's files, a full disk, a hand-edited config, a checkpoint of another model,
malformed manifests, a cut-short metrics line, and bad flag values."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import gatenets
from gatenets import _files
from gatenets.cli import main
from gatenets.tasks.charlm import TextChangedError
from gatenets.train import Checkpointer, CorruptCheckpointError, load_run
from gatenets.train.checkpoint import MANIFEST, CheckpointMismatchError, write_manifest
from gatenets.train.rundir import LOCK_FILE, RunDirectoryInUseError, RunLock
from gatenets.train.watch import read_metrics

ROOT = pathlib.Path(__file__).parent.parent.parent
TINY = ["adding", "-o", "length=6", "--hidden", "4", "--batch-size", "4", "--no-progress"]


def status_of(argv):
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def test_a_changed_text_file_is_refused_on_resume_and_reload(tmp_path, capsys, monkeypatch):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 8)
    monkeypatch.chdir(tmp_path)
    args = ["run", "charlm", "--text", "t.txt", "-o", "seq_len=4", "--hidden", "4"]
    args += ["--batch-size", "2", "--eval-every", "0", "--no-progress", "--out", "run"]
    assert main([*args, "--steps", "2"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["options"]
    assert saved["text_file"] == str(text)  # absolute: the run reloads from anywhere
    assert len(saved["text_sha256"]) == 64
    capsys.readouterr()

    monkeypatch.chdir(ROOT)
    assert load_run(tmp_path / "run").task.options["text_file"] == str(text)
    text.write_text("the quick brown fox jumps over the lazy cat. " * 8)  # same length
    again = [str(text) if a == "t.txt" else a for a in args[:-1]] + [str(tmp_path / "run")]
    assert status_of([*again, "--steps", "3", "--resume"]) == 2
    assert "differs from the text the run" in capsys.readouterr().err
    with pytest.raises(TextChangedError, match=r"text_file '.*t\.txt' has changed since"):
        load_run(tmp_path / "run")


def test_a_run_directory_is_locked_naming_the_holder(tmp_path, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from gatenets.train.rundir import RunLock; "
            f"lock = RunLock({str(tmp_path)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert status_of(["run", *TINY, "--steps", "1", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert (
            f"--out {str(tmp_path)!r} is in use by another gatenets run (pid {holder.pid})" in err
        )
        assert not (tmp_path / "config.json").exists()
        with pytest.raises(RunDirectoryInUseError, match=f"pid {holder.pid}"):
            RunLock(tmp_path)
    finally:
        holder.kill()  # a crash: the lock file stays, the lock goes with the process
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
    assert (tmp_path / LOCK_FILE).exists()
    assert status_of(["run", *TINY, "--steps", "1", "--out", str(tmp_path)]) == 0


def test_someone_elses_directory_is_never_written(tmp_path, capsys):
    files = {"config.json": '{"mine": 1}\n', "summary.json": "{}\n", "metrics.jsonl": "x\n"}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    assert status_of(["run", *TINY, "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "holds files but no gatenets run (config.json, metrics.jsonl" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == files  # no lock file either


def test_a_full_disk_is_one_line_exit_1_and_earlier_checkpoints_stay(tmp_path, capsys):
    save = ocp.CheckpointManager.save

    def full_at_4(self, step, *args, **kwargs):
        if step == 4:
            raise ValueError(
                "RESOURCE_EXHAUSTED: Error writing local file: Failed to write 184 bytes to "
                "file 20: No space left on device [os_error_code='28']"
            )
        return save(self, step, *args, **kwargs)

    args = ["run", *TINY, "--eval-every", "2", "--out", str(tmp_path)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ocp.CheckpointManager, "save", full_at_4)
        assert status_of([*args, "--steps", "6"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "valid loss" not in line]
    assert len(err) == 1, err  # progress lines aside, one line
    err = err[0]
    assert "checkpoint step 4 could not be written" in err
    assert "no space left on the device; the earlier checkpoints (steps [2]) are intact" in err
    with Checkpointer(tmp_path / "checkpoints") as checkpoints:
        checkpoints.verify(2)
    assert status_of([*args, "--steps", "6", "--resume"]) == 0


def test_atomic_write_never_sets_the_umask(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o022)
    _files.atomic_write(tmp_path / "a.txt", lambda tmp: pathlib.Path(tmp).write_text("a"), ".t")
    assert calls == []  # another thread's files would be created under a umask of 0
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~_files._process_umask()


def _saved(tmp_path, hidden=4):
    model = gatenets.GRU(2, hidden, rngs=nnx.Rngs(0))
    with Checkpointer(tmp_path) as checkpoints:
        checkpoints.save(1, model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
    return tmp_path / "1"


@pytest.mark.parametrize(
    ("manifest", "said"),
    [
        ('{"files": []}', "no object of files"),
        ("null", "no object of files"),
        ('{"files": {"model/x": 3}}', "the entry of 'model/x' is not {size, sha256}"),
        ("{", "not JSON"),
    ],
)
def test_a_malformed_manifest_is_a_corrupt_checkpoint(tmp_path, manifest, said):
    step_dir = _saved(tmp_path)
    (step_dir / MANIFEST).write_text(manifest)
    model = gatenets.GRU(2, 4, rngs=nnx.Rngs(0))
    with Checkpointer(tmp_path) as checkpoints:
        with pytest.raises(CorruptCheckpointError, match=f"unreadable .*{said[:20]}"):
            checkpoints.restore(model)


def test_unreadable_orbax_metadata_is_a_corrupt_checkpoint(tmp_path):
    step_dir = _saved(tmp_path)
    for metadata in (step_dir / "model").glob("_METADATA"):
        metadata.write_text("{not orbax")
    write_manifest(step_dir)  # checksums that match: orbax itself must be the one refusing
    with Checkpointer(tmp_path) as checkpoints:
        with pytest.raises(CorruptCheckpointError, match="step 1 .* is corrupt: the metadata"):
            checkpoints.restore(gatenets.GRU(2, 4, rngs=nnx.Rngs(0)))


def test_a_checkpoint_of_another_model_says_it_does_not_match(tmp_path):
    _saved(tmp_path, hidden=4)
    model = gatenets.GRU(2, 8, rngs=nnx.Rngs(0))
    before = np.asarray(model.layers[0].cell.kernel[...])
    with Checkpointer(tmp_path) as checkpoints:
        with pytest.raises(CheckpointMismatchError, match=r"does not match this model: .*shape"):
            checkpoints.restore(model)
    np.testing.assert_array_equal(model.layers[0].cell.kernel[...], before)  # nothing loaded


def test_plot_skips_a_cut_short_last_line_with_a_warning(tmp_path, capsys):
    lines = [json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 3, "spl')
    with pytest.warns(UserWarning, match="skipped line 3, cut short"):
        assert len(read_metrics(tmp_path)) == 2
    assert main(["plot", str(tmp_path)]) == 0
    assert "warning: " in capsys.readouterr().err and (tmp_path / "training.png").is_file()
    (tmp_path / "metrics.jsonl").write_text('{"step": 3, "spl\n' + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):  # not at the end: an error
        read_metrics(tmp_path)


@pytest.mark.parametrize("flag", [["--lr", "inf"], ["--lr", "nan"], ["--hidden", "0"]])
def test_flag_errors_come_before_any_file_and_name_the_flag(tmp_path, flag, capsys):
    out = tmp_path / "run"
    assert status_of(["run", *TINY, *flag, "--out", str(out)]) == 2
    assert f"argument {flag[0]}:" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"hidden": "four"}, "'hidden' is \"four\", expected int or null"),
        ({"options": [6]}, "'options' is [6], expected dict"),
        ({"data_parallel": "yes"}, "'data_parallel' is \"yes\", expected bool"),
        ({"model": "transformer"}, "unknown model 'transformer'"),
    ],
)
def test_a_hand_edited_config_names_the_field(tmp_path, edit, said, capsys):
    assert main(["run", *TINY, "--steps", "1", "--out", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError, match="config.json") as error:
        load_run(tmp_path)
    assert said in str(error.value)


def test_the_command_line_module_does_not_import_the_package_root():
    """`gatenets.cli` reads its version and its errors from leaf modules; the features import
    those, never the command line (dependencies point one way)."""
    import gatenets._usage
    import gatenets.cli

    source = (ROOT / "gatenets" / "cli.py").read_text()
    assert "import gatenets\n" not in source and "from gatenets import" not in source
    assert gatenets.cli.UsageError is gatenets._usage.UsageError
    for module in ("train/cli.py", "train/plot_cli.py"):
        assert "gatenets.cli" not in (ROOT / "gatenets" / module).read_text()


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot be locked here .No locks available."):
        lock = RunLock(tmp_path)
    lock.release()
