"""A path the user names that is not a regular file (a FIFO, a device, a directory) is
refused in one line before it is opened: opening a FIFO blocks until a writer comes,
so a loader that opened one would hang the run forever."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastdist
from fastdist.data.datasets import clear_dataset_cache, load_dataset
from fastdist.data.files import read_idx
from fastdist.data.npy_files import declared_shape
from fastdist.data.npz import NpzError, read_npz
from fastdist.errors import ConfigError
from fastdist.run.checkpoint import read_checkpoint


@pytest.fixture(autouse=True)
def guarded(deadline):
    """Every test here under the deadline (conftest); no cached dataset outlives it."""
    yield
    clear_dataset_cache()


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.npz"
    os.mkfifo(path)
    return path


def _cfg(*overrides):
    return fastdist.compose(list(overrides)).dataset


def _npy_cfg(tmp_path, **paths):
    """dataset=npy over four small valid files, with ``paths`` replacing some."""
    files = {}
    for key, array in (
        ("x_train", np.zeros((8, 3), np.float32)),
        ("y_train", np.zeros(8, np.int64)),
        ("x_test", np.zeros((4, 3), np.float32)),
        ("y_test", np.zeros(4, np.int64)),
    ):
        files[key] = tmp_path / f"{key}.npy"
        np.save(files[key], array)
    files.update(paths)
    return _cfg("dataset=npy", *(f"dataset.{key}={path}" for key, path in files.items()))


def _one_line(call, *args) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args)
    message = str(info.value)
    assert message and "\n" not in message
    return message


KINDS = {
    "a FIFO": lambda tmp_path: _mkfifo(tmp_path / "x.npy"),
    "a directory": lambda tmp_path: _mkdir(tmp_path / "x.npy"),
    "a character device": lambda tmp_path: "/dev/null",
}


def _mkfifo(path):
    os.mkfifo(path)
    return path


def _mkdir(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", ["x_train", "y_test"])
def test_npy_refuses_what_is_not_a_regular_file(tmp_path, kind, key):
    path = KINDS[kind](tmp_path)
    cfg = _npy_cfg(tmp_path, **{key: path})
    message = _one_line(load_dataset, cfg)
    assert message == f"dataset.{key}: {path} is not a regular file ({kind})"
    assert declared_shape(cfg, key) is None  # the memory plan leaves it to the loader


def test_the_cli_refuses_a_fifo_as_training_features_in_one_line(tmp_path, fifo):
    cfg_paths = _npy_cfg(tmp_path)  # writes the three other files
    overrides = [f"dataset.{key}={cfg_paths[key]}" for key in ("y_train", "x_test", "y_test")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastdist",
            "dataset=npy",
            f"dataset.x_train={fifo}",
            *overrides,
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"dataset.x_train: {fifo} is not a regular file (a FIFO)" in proc.stderr


def test_idx_files_that_are_fifos_are_refused(tmp_path):
    directory = tmp_path / "mnist"
    directory.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (directory / stem).write_bytes(b"")
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        os.mkfifo(directory / stem)
    message = _one_line(load_dataset, _cfg("dataset=mnist", f"dataset.path={directory}"))
    fifo = directory / "t10k-images-idx3-ubyte"
    assert message == f"dataset.path: {fifo} is not a regular file (a FIFO)"
    message = _one_line(read_idx, fifo, 0x803)
    assert message == f"{fifo} is not a regular file (a FIFO)"


def test_an_npz_dataset_that_is_a_fifo_is_refused(tmp_path, fifo):
    message = _one_line(load_dataset, _cfg("dataset=mnist", f"dataset.path={fifo}"))
    assert message == f"dataset.path: {fifo} is not a regular file (a FIFO)"
    os.mkfifo(tmp_path / "fashion_mnist.npz")  # found in the directory, not named
    message = _one_line(load_dataset, _cfg("dataset=fashion_mnist", f"dataset.path={tmp_path}"))
    npz = tmp_path / "fashion_mnist.npz"
    assert message == f"{npz}: cannot read as .npz (not a regular file: a FIFO)"


@pytest.mark.parametrize("where", ["named", "in the cache directory"])
def test_an_mnist1d_cache_that_is_a_fifo_is_refused_not_replaced(tmp_path, fifo, where):
    if where == "named":
        path, cache = fifo, fifo
    else:
        path, cache = tmp_path, tmp_path / "mnist1d_seed42.npz"
        os.mkfifo(cache)
    message = _one_line(load_dataset, _cfg("dataset=mnist1d", f"dataset.path={path}"))
    assert message == f"dataset.path: {cache} is not a regular file (a FIFO)"
    assert not cache.is_file()  # still the FIFO: a cache is never written over it


@pytest.mark.parametrize("kind", KINDS)
def test_read_npz_refuses_what_is_not_a_regular_file(tmp_path, kind):
    path = KINDS[kind](tmp_path)
    with pytest.raises(NpzError) as info:
        read_npz(path, ("x",))
    assert str(info.value) == f"{path}: cannot read as .npz (not a regular file: {kind})"


def test_a_checkpoint_that_is_a_fifo_is_refused(fifo):
    message = _one_line(read_checkpoint, fifo, "digest")
    assert message == f"resume={fifo}: not a readable checkpoint (not a regular file: a FIFO)"
