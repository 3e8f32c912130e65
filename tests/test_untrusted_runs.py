"""Run directories and checkpoints are untrusted input: a damaged or edited one is a
one-line error with exit code 2, checked before anything starts, and nothing is written
outside the run directory (no temporary file survives)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import edited_npz, saved_run_dir, small_run

import fastdist
from fastdist.cli import combine as combine_cli
from fastdist.errors import ConfigError
from fastdist.run.states import STATES_FILE

TRAIN = small_run("workers=2", "steps=8", "combiner=weight_avg")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory as `fastdist save_states=true` leaves it (made in-process)."""
    return saved_run_dir(tmp_path_factory.mktemp("run"), TRAIN)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _combine(run_dir, capsys, *names):
    with pytest.raises(SystemExit) as exit_info:
        combine_cli.main([str(run_dir), *(names or ("weight_avg",))])
        raise SystemExit(0)
    err = capsys.readouterr().err
    return exit_info.value.code, err


def _rewrite_states(run: Path, **changes):
    np.savez(run / STATES_FILE, **edited_npz(run / STATES_FILE, **changes))


def _edit_overrides(run: Path, key: str, value: str):
    path = run / ".hydra" / "overrides.yaml"
    items = [o for o in yaml.safe_load(path.read_text()) if not o.startswith(f"{key}=")]
    path.write_text(yaml.safe_dump([*items, f"{key}={value}"]))


def test_an_intact_run_directory_combines_and_writes_only_its_metrics(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path / "run")
    before = {p.name for p in run.rglob("*")}
    code, err = _combine(run, capsys, "weight_avg", "ensemble")
    assert code == 0, err
    assert {p.name for p in run.rglob("*")} - before == {"combine_metrics.json"}


DAMAGE = {
    "truncated": lambda run: (run / STATES_FILE).write_bytes(
        (run / STATES_FILE).read_bytes()[:300]
    ),
    "empty": lambda run: (run / STATES_FILE).write_bytes(b""),
    "missing key": lambda run: _rewrite_states(run, samples_seen=None),
    "no split hash (old file)": lambda run: _rewrite_states(run, split_hash=None),
    "shape": lambda run: _rewrite_states(run, worker_params=np.zeros((2, 7), np.float32)),
    "rows": lambda run: _rewrite_states(run, worker_params=np.zeros((3, 171), np.float32)),
    "NaN": lambda run: _rewrite_states(
        run,
        worker_params=np.where(np.arange(2)[:, None] == 1, np.nan, np.zeros((2, 171), np.float32)),
    ),
    "samples 2-D": lambda run: _rewrite_states(run, samples_seen=np.zeros((2, 2))),
    "seed edited": lambda run: _edit_overrides(run, "seed", "1"),
    "workers edited": lambda run: _edit_overrides(run, "workers", "3"),
    "sizes edited": lambda run: _edit_overrides(run, "model.hidden", "[6,2]"),
    "n_train edited": lambda run: _edit_overrides(run, "dataset.n_train", "500"),
    "overrides not YAML": lambda run: (run / ".hydra" / "overrides.yaml").write_text("[a: b: c"),
    "overrides a mapping": lambda run: (run / ".hydra" / "overrides.yaml").write_text("a: 1\n"),
    "overrides do not compose": lambda run: (run / ".hydra" / "overrides.yaml").write_text(
        "- workers=[[\n"
    ),
    "metrics path is a directory": lambda run: (run / "combine_metrics.json").mkdir(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_or_edited_run_directory_is_one_line_exit_2(trained, tmp_path, capsys, damage):
    run = _copy(trained, tmp_path / "run")
    DAMAGE[damage](run)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, err = _combine(run, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


# ------------------------------------------------------------------ checkpoints

CKPT = small_run("workers=2", "steps=8")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.npz"
    fastdist.train(fastdist.compose([*CKPT, "checkpoint.every=4", f"checkpoint.path={path}"]))
    return path


def _flip_a_data_byte(path: Path):
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("params.npy")
    at = info.header_offset + 30 + len(info.filename) + info.compress_size - 8
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _rewrite_ckpt(path: Path, **changes):
    np.savez(path, **edited_npz(path, **changes))


CKPT_DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a readable checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable checkpoint"),
    "CRC": (_flip_a_data_byte, "not a readable checkpoint"),
    "missing key": (lambda p: _rewrite_ckpt(p, step=None), "not a readable checkpoint"),
    "negative step": (lambda p: _rewrite_ckpt(p, step=np.int64(-3)), "negative"),
    "NaN": (
        lambda p: _rewrite_ckpt(p, params=np.full((1, 171), np.nan, np.float32)),
        "not finite",
    ),
}


@pytest.mark.parametrize("damage", sorted(CKPT_DAMAGE))
def test_a_damaged_checkpoint_is_refused_before_start_up(checkpoint, tmp_path, monkeypatch, damage):
    import fastdist.run.coordinator as coordinator

    path = tmp_path / "ckpt.npz"
    path.write_bytes(checkpoint.read_bytes())
    edit, message = CKPT_DAMAGE[damage]
    edit(path)

    def no_start_up(*args, **kwargs):
        raise AssertionError("the run started before the checkpoint was checked")

    monkeypatch.setattr(coordinator, "prepare_data", no_start_up)
    with pytest.raises(ConfigError, match=message):
        fastdist.train(fastdist.compose([*CKPT, "steps=16", f"resume={path}"]))


@pytest.mark.parametrize("where", ["directory", "under a file"])
def test_checkpoint_path_is_checked_before_start_up(tmp_path, monkeypatch, where):
    import fastdist.run.coordinator as coordinator

    (tmp_path / "file").write_text("x")
    path = tmp_path if where == "directory" else tmp_path / "file" / "ckpt.npz"
    monkeypatch.setattr(coordinator, "prepare_data", lambda *a, **k: 1 / 0)
    with pytest.raises(ConfigError, match="checkpoint.path"):
        fastdist.train(fastdist.compose([*CKPT, "checkpoint.every=2", f"checkpoint.path={path}"]))
    assert not list(tmp_path.rglob("*.tmp*"))


def test_a_killed_writers_temporary_file_is_removed_at_the_next_start(tmp_path):
    import fcntl

    from fastdist.run.checkpoint import check_checkpoint_path

    path = tmp_path / "ckpt.npz"
    abandoned = tmp_path / ".ckpt.npz.12345.tmp.npz"
    abandoned.write_bytes(b"half a file")
    being_written = tmp_path / ".ckpt.npz.23456.tmp.npz"
    with open(being_written, "wb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a live writer (any PID namespace)
        check_checkpoint_path(path)
        assert not abandoned.exists() and being_written.exists()
