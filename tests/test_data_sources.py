"""MNIST-1D generated offline; MNIST-like IDX/npz files read from disk (written here by
the tests, a few dozen 28x28 images each). Nothing is downloaded."""

from __future__ import annotations

import gzip
import random
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import fastdist
from fastdist.data import mnist1d as mnist1d_source
from fastdist.data.datasets import load_dataset
from fastdist.data.files import read_idx
from fastdist.errors import ConfigError

N_TRAIN, N_TEST = 64, 16  # 64 rows: two shards of 32, each holding batches of 4
STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path, payload: bytes, compress: bool):
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def _arrays(seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def _write_idx_dir(directory, arrays, compress=lambda key: False):
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in STEMS.items():
        magic = 0x803 if key.startswith("x") else 0x801
        _write(directory / stem, _idx_bytes(arrays[key], magic), compress(key))
    return directory


def _expected(arrays):
    """Scaled to [0, 1], then standardised with the training split's statistics."""
    train = arrays["x_train"].reshape(len(arrays["x_train"]), -1) / 255.0
    test = arrays["x_test"].reshape(len(arrays["x_test"]), -1) / 255.0
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def _cfg(name, path=None, *extra):
    overrides = [f"dataset={name}", *extra]
    if path is not None:
        overrides.append(f"dataset.path={path}")
    return fastdist.compose(overrides).dataset


@pytest.fixture
def mnist_arrays():
    return _arrays()


@pytest.fixture
def mnist_dir(tmp_path, mnist_arrays):
    # train images gzipped, the rest raw: both forms in one directory
    return _write_idx_dir(tmp_path / "mnist", mnist_arrays, lambda key: key == "x_train")


# ------------------------------------------------------------------ IDX files


@pytest.mark.parametrize("form", ["raw", "gz", "mixed"])
def test_idx_files_round_trip(tmp_path, mnist_arrays, form):
    compress = {"raw": lambda k: False, "gz": lambda k: True, "mixed": lambda k: "train" in k}
    directory = _write_idx_dir(tmp_path / form, mnist_arrays, compress[form])
    data = load_dataset(_cfg("mnist", directory))
    assert data.name == "mnist" and data.n_classes == 10 and data.n_features == 784
    assert data.x_train.shape == (N_TRAIN, 784) and data.x_test.shape == (N_TEST, 784)
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int32 and data.y_test.dtype == np.int32
    np.testing.assert_array_equal(data.y_train, mnist_arrays["y_train"])
    np.testing.assert_array_equal(data.y_test, mnist_arrays["y_test"])
    x_train, x_test = _expected(mnist_arrays)
    np.testing.assert_allclose(data.x_train, x_train, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data.x_test, x_test, rtol=1e-4, atol=1e-4)


def test_standardisation_uses_training_statistics_only(tmp_path, mnist_arrays):
    # a test split much brighter than the training split stays visibly brighter
    arrays = dict(mnist_arrays, x_test=np.full((N_TEST, 28, 28), 255, np.uint8))
    data = load_dataset(_cfg("mnist", _write_idx_dir(tmp_path, arrays)))
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-4)
    assert data.x_test.mean() > 1.0  # (1 - ~0.5) / ~0.29 per pixel
    np.testing.assert_allclose(data.x_test, _expected(arrays)[1], rtol=1e-4, atol=1e-4)


def test_read_idx_parses_header_and_payload(tmp_path, mnist_arrays):
    x = mnist_arrays["x_test"]
    for compress in (False, True):
        path = _write(tmp_path / f"images{compress}", _idx_bytes(x, 0x803), compress)
        got = read_idx(path, 0x803)
        assert got.dtype == np.uint8 and got.shape == (N_TEST, 28, 28)
        np.testing.assert_array_equal(got, x)


def test_relative_path_is_taken_from_the_current_directory(tmp_path, mnist_arrays, monkeypatch):
    _write_idx_dir(tmp_path / "data" / "mnist", mnist_arrays)
    monkeypatch.chdir(tmp_path)
    # the config's default path, data/mnist, is relative
    cfg = _cfg("mnist")
    assert cfg.path == "data/mnist"
    data = load_dataset(cfg)
    np.testing.assert_array_equal(data.y_train, mnist_arrays["y_train"])


# ------------------------------------------------------------------ npz files


def test_npz_in_keras_layout(tmp_path, mnist_arrays):
    np.savez(tmp_path / "fashion_mnist.npz", **mnist_arrays)
    x_train, x_test = _expected(mnist_arrays)
    for path in (tmp_path, tmp_path / "fashion_mnist.npz"):
        data = load_dataset(_cfg("fashion_mnist", path))
        assert data.name == "fashion_mnist" and data.x_train.shape == (N_TRAIN, 784)
        assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
        np.testing.assert_array_equal(data.y_test, mnist_arrays["y_test"])
        np.testing.assert_allclose(data.x_train, x_train, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(data.x_test, x_test, rtol=1e-4, atol=1e-4)


def test_npz_named_for_another_dataset_is_found_by_file_path(tmp_path, mnist_arrays):
    np.savez(tmp_path / "mine.npz", **mnist_arrays)
    data = load_dataset(_cfg("mnist", tmp_path / "mine.npz"))
    np.testing.assert_array_equal(data.y_train, mnist_arrays["y_train"])


# ------------------------------------------------------------------ errors


def _one_line_error(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        load_dataset(cfg)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_missing_files_say_where_to_put_them(tmp_path):
    where = tmp_path / "nowhere"
    message = _one_line_error(_cfg("mnist", where))
    assert message == (
        "dataset=mnist needs its files: put train-images-idx3-ubyte(.gz), "
        "train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), "
        f"t10k-labels-idx1-ubyte(.gz) or mnist.npz in {where} (set dataset.path=...)"
    )
    assert "fashion_mnist.npz" in _one_line_error(_cfg("fashion_mnist", where))


def test_an_incomplete_directory_is_missing_files(tmp_path, mnist_arrays):
    _write_idx_dir(tmp_path, mnist_arrays)
    (tmp_path / STEMS["y_test"]).unlink()
    assert "needs its files" in _one_line_error(_cfg("mnist", tmp_path))


def test_no_path_and_a_missing_npz_are_one_line_errors(tmp_path):
    assert "dataset.path" in _one_line_error(_cfg("mnist", None, "dataset.path=null"))
    assert "no such file" in _one_line_error(_cfg("mnist", tmp_path / "absent.npz"))


def _bad_magic(directory):
    (directory / STEMS["y_test"]).write_bytes(b"\x00\x00\x08\x03garbage")


def _truncated(directory):
    path = directory / STEMS["x_test"]
    path.write_bytes(path.read_bytes()[:-100])


def _bad_gzip(directory):
    path = directory / (STEMS["x_train"] + ".gz")
    path.write_bytes(path.read_bytes()[:40])


def _short_header(directory):
    (directory / STEMS["x_test"]).write_bytes(b"\x00\x00\x08\x03\x00\x00")


def _count_mismatch(directory):
    y = np.zeros(N_TEST - 1, np.uint8)
    (directory / STEMS["y_test"]).write_bytes(_idx_bytes(y, 0x801))


def _label_out_of_range(directory):
    y = np.full(N_TRAIN, 12, np.uint8)
    (directory / STEMS["y_train"]).write_bytes(_idx_bytes(y, 0x801))


def _image_size_mismatch(directory):
    x = np.zeros((N_TEST, 20, 20), np.uint8)
    (directory / STEMS["x_test"]).write_bytes(_idx_bytes(x, 0x803))


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (_bad_magic, "bad magic number"),
        (_truncated, "truncated or corrupt"),
        (_bad_gzip, "cannot read"),
        (_short_header, "truncated or corrupt"),
        (_count_mismatch, "16 test images but 15 labels"),
        (_label_out_of_range, "labels outside 0..9"),
        (_image_size_mismatch, "784 pixels but test images 400"),
    ],
)
def test_a_corrupt_idx_file_is_a_one_line_error(mnist_dir, corrupt, expected):
    corrupt(mnist_dir)
    assert expected in _one_line_error(_cfg("mnist", mnist_dir))


def test_read_idx_checks_the_magic_number(mnist_dir):
    with pytest.raises(ConfigError, match="bad magic number"):
        read_idx(mnist_dir / STEMS["y_test"], 0x803)


def test_a_corrupt_npz_is_a_one_line_error(tmp_path, mnist_arrays):
    np.savez(tmp_path / "mnist.npz", x_train=mnist_arrays["x_train"])
    assert "missing array(s) y_train, x_test, y_test" in _one_line_error(_cfg("mnist", tmp_path))
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file")
    assert "cannot read as .npz" in _one_line_error(_cfg("mnist", tmp_path))
    floats = dict(mnist_arrays, x_train=mnist_arrays["x_train"] / 255.0)
    np.savez(tmp_path / "mnist.npz", **floats)
    assert "must be integers" in _one_line_error(_cfg("mnist", tmp_path))


def test_cli_reports_missing_files_as_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fastdist", "dataset=mnist", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset=mnist needs its files" in lines[0]
    assert str(tmp_path / "data" / "mnist") in lines[0]


# ------------------------------------------------------------------ training


def test_training_on_local_mnist_files(mnist_dir):
    result = fastdist.train(
        fastdist.compose(
            [
                "dataset=mnist",
                f"dataset.path={mnist_dir}",
                "workers=2",
                "batch_size=4",
                "epochs=1",
                "model.hidden=[8]",
            ]
        )
    )
    assert result.metrics["dataset"] == "mnist" and result.metrics["model"] == [784, 8, 10]
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0


# ------------------------------------------------------------------ MNIST-1D


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("MNIST-1D tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def mnist1d_42():
    pytest.importorskip("mnist1d")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _no_network(monkeypatch)
        start = time.perf_counter()
        data = load_dataset(_cfg("mnist1d"))
        seconds = time.perf_counter() - start
    return data, seconds


def test_mnist1d_is_generated_offline_with_the_standard_split(mnist1d_42):
    data, seconds = mnist1d_42
    assert seconds < 30, f"generating MNIST-1D took {seconds:.1f} s"
    assert data.name == "mnist1d" and data.n_classes == 10
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert set(np.unique(data.y_train)) == set(range(10))
    assert set(np.unique(data.y_test)) <= set(range(10))
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-3)


def test_mnist1d_is_deterministic_and_keeps_global_rngs(mnist1d_42, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    random.seed(123)
    np_next, py_next = np.random.get_state()[1].copy(), random.getstate()
    again = load_dataset(_cfg("mnist1d", None, "dataset.seed=42"))
    np.testing.assert_array_equal(again.x_train, mnist1d_42[0].x_train)
    np.testing.assert_array_equal(again.y_test, mnist1d_42[0].y_test)
    np.testing.assert_array_equal(np.random.get_state()[1], np_next)
    assert random.getstate() == py_next
    other = load_dataset(_cfg("mnist1d", None, "dataset.seed=7"))
    assert not np.array_equal(other.x_train, mnist1d_42[0].x_train)
    assert list(tmp_path.iterdir()) == []  # no dataset.path: nothing cached anywhere


def test_mnist1d_caches_to_path_only_when_given(mnist1d_42, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    first = load_dataset(_cfg("mnist1d", tmp_path / "cache"))
    assert (tmp_path / "cache" / "mnist1d_seed42.npz").is_file()
    np.testing.assert_array_equal(first.x_train, mnist1d_42[0].x_train)

    def must_not_generate(seed):
        raise AssertionError("regenerated despite the cache")

    monkeypatch.setattr(mnist1d_source, "_generate_mnist1d", must_not_generate)
    cached = load_dataset(_cfg("mnist1d", tmp_path / "cache"))
    np.testing.assert_array_equal(cached.x_train, first.x_train)
    np.testing.assert_array_equal(cached.y_train, first.y_train)
    np.testing.assert_array_equal(cached.x_test, first.x_test)


def test_mnist1d_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    message = _one_line_error(_cfg("mnist1d"))
    assert message == "dataset=mnist1d needs the mnist1d package: pip install 'fastdist[mnist1d]'"
