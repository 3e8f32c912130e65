"""MNIST-1D generated offline; MNIST-like IDX/npz files read from disk (written here)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import fastdist
from fastdist.data import load_dataset
from fastdist.data_sources import read_idx
from fastdist.errors import ConfigError


def _idx(path, array: np.ndarray, magic: int, compress: bool) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _images(rng, n):
    return rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), rng.integers(0, 10, n)


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n, prefix in (("train", 64, "train"), ("test", 16, "t10k")):
        x, y = _images(rng, n)
        arrays[split] = (x, y)
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte", x, 0x803, compress=split == "train")
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte", y, 0x801, compress=False)
    return tmp_path, arrays


def _cfg(name, path):
    return fastdist.compose([f"dataset={name}", f"dataset.path={path}"]).dataset


def test_idx_files_raw_and_gz_round_trip(mnist_dir):
    directory, arrays = mnist_dir
    data = load_dataset(_cfg("mnist", directory))
    x_train, y_train = arrays["train"]
    assert data.x_train.shape == (64, 784) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (16, 784)
    np.testing.assert_array_equal(data.y_train, y_train)
    np.testing.assert_array_equal(data.y_test, arrays["test"][1])
    # standardised with the training statistics only
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    scaled = x_train.reshape(64, -1).astype(np.float32) / 255.0
    expected = (arrays["test"][0].reshape(16, -1) / 255.0 - scaled.mean(0)) / scaled.std(0)
    np.testing.assert_allclose(data.x_test, expected, rtol=1e-4, atol=1e-4)


def test_npz_in_keras_layout(tmp_path):
    rng = np.random.default_rng(1)
    (xtr, ytr), (xte, yte) = _images(rng, 20), _images(rng, 8)
    np.savez(tmp_path / "fashion_mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    for path in (tmp_path, tmp_path / "fashion_mnist.npz"):
        data = load_dataset(_cfg("fashion_mnist", path))
        assert data.name == "fashion_mnist" and data.x_train.shape == (20, 784)
        np.testing.assert_array_equal(data.y_test, yte)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_dataset(_cfg("mnist", tmp_path / "nowhere"))
    message = str(info.value)
    assert "\n" not in message
    assert "train-images-idx3-ubyte(.gz)" in message and str(tmp_path / "nowhere") in message


def test_a_corrupt_file_is_a_clear_error(mnist_dir):
    directory, _ = mnist_dir
    (directory / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(ConfigError, match="bad magic number"):
        load_dataset(_cfg("mnist", directory))
    with pytest.raises(ConfigError, match="bad magic number"):
        read_idx(directory / "t10k-labels-idx1-ubyte", 0x801)


def test_training_on_local_mnist_files(mnist_dir):
    directory, _ = mnist_dir
    result = fastdist.train(
        fastdist.compose(
            [
                "dataset=mnist",
                f"dataset.path={directory}",
                "workers=2",
                "batch_size=4",
                "epochs=1",
                "model.hidden=[8]",
            ]
        )
    )
    assert result.metrics["dataset"] == "mnist" and result.metrics["model"] == [784, 8, 10]


def test_mnist1d_is_generated_offline_and_reproducible():
    pytest.importorskip("mnist1d")
    a = load_dataset(fastdist.compose(["dataset=mnist1d"]).dataset)
    assert a.x_train.shape == (4000, 40) and a.x_test.shape == (1000, 40)
    assert set(np.unique(a.y_train)) == set(range(10))
    b = load_dataset(fastdist.compose(["dataset=mnist1d"]).dataset)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    c = load_dataset(fastdist.compose(["dataset=mnist1d", "dataset.seed=7"]).dataset)
    assert not np.array_equal(a.x_train, c.x_train)
