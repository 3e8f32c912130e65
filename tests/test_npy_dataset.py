"""dataset=npy: memory-mapped .npy files, shared by the workers, never copied; and the
in-place preparation of every dataset (shuffled by index, bitwise the same run)."""

from __future__ import annotations

import numpy as np
import pytest

import fastdist
from fastdist.data.datasets import make_synthetic
from fastdist.errors import ConfigError
from fastdist.run.preparation import prepare_data
from tests.conftest import small_run

N_TRAIN, N_TEST, N_FEATURES = 512, 128, 10


@pytest.fixture
def npy_files(tmp_path):
    """The small synthetic run's data (same seed), as four .npy files."""
    x, y = make_synthetic(N_TRAIN + N_TEST, N_FEATURES, 3, 0)
    paths = {}
    for key, array in (
        ("x_train", x[:N_TRAIN]),
        ("y_train", y[:N_TRAIN].astype(np.int64)),  # any integer type is accepted
        ("x_test", x[N_TRAIN:]),
        ("y_test", y[N_TRAIN:]),
    ):
        paths[key] = tmp_path / f"{key}.npy"
        np.save(paths[key], array)
    return paths


def _npy_run(paths, *extra):
    files = [f"dataset.{key}={path}" for key, path in paths.items()]
    run = small_run(*extra)
    run = [o for o in run if not o.startswith("dataset.n_")]
    return [*[o for o in run if not o.startswith("dataset=")], "dataset=npy", *files]


def test_training_on_mapped_files_equals_training_in_memory(npy_files):
    extra = ("combiner=weight_avg", "steps=20")
    on_disk = fastdist.train(fastdist.compose(_npy_run(npy_files, *extra)))
    in_memory = fastdist.train(fastdist.compose(small_run(*extra)))
    np.testing.assert_array_equal(on_disk.worker_params, in_memory.worker_params)
    assert on_disk.metrics["test_loss"] == in_memory.metrics["test_loss"]


def test_features_are_mapped_not_copied(npy_files):
    cfg = fastdist.compose(_npy_run(npy_files, "validation_fraction=0.25"))
    data = prepare_data(cfg, 2, 0.25, shared=True)
    try:
        spec = data.rows_spec()
        # Workers map the file itself; only labels and the shuffled order are shared copies.
        assert spec.x.path == str(npy_files["x_train"]) and spec.x.segment is None
        assert isinstance(data.dataset.x_train, np.memmap)
        assert not data.dataset.x_train.flags.writeable
        order = np.random.default_rng(0).permutation(N_TRAIN)
        np.testing.assert_array_equal(data.rows, order[128:])
        x_val, _ = data.validation
        np.testing.assert_array_equal(x_val, np.load(npy_files["x_train"])[order[:128]])
    finally:
        data.release()


def test_synthetic_rows_are_generated_in_shared_memory():
    cfg = fastdist.compose(small_run())
    data = prepare_data(cfg, 2, 0.0, shared=True)
    try:
        spec = data.rows_spec()
        assert spec.x.segment is not None and spec.x.offset % 64 == 0
        x, _ = make_synthetic(N_TRAIN + N_TEST, N_FEATURES, 3, 0)
        np.testing.assert_array_equal(data.dataset.x_train, x[:N_TRAIN])
        (shard_x, _), _ = data.shard_arrays()
        np.testing.assert_array_equal(shard_x, x[data.rows[: len(shard_x)]])
    finally:
        data.release()


def _broken(npy_files, key, array):
    np.save(npy_files[key], array)
    return fastdist.compose(_npy_run(npy_files))


@pytest.mark.parametrize(
    ("key", "array", "message"),
    [
        ("x_train", np.zeros((N_TRAIN, N_FEATURES)), "need float32"),
        ("x_train", np.zeros(N_TRAIN, np.float32), "need (rows, features"),
        ("y_train", np.zeros(N_TRAIN - 1, np.int32), f"need ({N_TRAIN},) labels"),
        ("y_train", np.zeros(N_TRAIN, np.float32), "need integer labels"),
        ("y_test", np.full(N_TEST, -1, np.int32), "labels must be in [0, 3)"),
        ("x_test", np.zeros((N_TEST, 4), np.float32), "x_test has samples of shape"),
    ],
)
def test_bad_files_are_one_line_errors(npy_files, key, array, message):
    with pytest.raises(ConfigError, match=None) as info:
        fastdist.train(_broken(npy_files, key, array))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_non_finite_features_name_the_row(npy_files):
    x = np.load(npy_files["x_train"])
    x[300, 2] = np.nan
    with pytest.raises(ConfigError, match="non-finite value in row 300"):
        fastdist.train(_broken(npy_files, "x_train", x))


def test_missing_and_unreadable_files(npy_files, tmp_path):
    npy_files["x_test"] = tmp_path / "nope.npy"
    with pytest.raises(ConfigError, match="no such file"):
        fastdist.train(fastdist.compose(_npy_run(npy_files)))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    npy_files["x_test"] = tmp_path / "junk.npy"
    with pytest.raises(ConfigError, match="not a readable .npy array"):
        fastdist.train(fastdist.compose(_npy_run(npy_files)))
    with pytest.raises(ConfigError, match="needs dataset.x_train"):
        fastdist.train(fastdist.compose([*_npy_run({}), "dataset=npy"]))


def test_workers_open_the_file_itself_and_read_ahead(npy_files):
    from fastdist.engine.rows import open_rows

    cfg = fastdist.compose(_npy_run(npy_files))
    data = prepare_data(cfg, 2, 0.0, shared=True)
    try:
        with open_rows(data.rows_spec()) as (x, y, rows, prefetch):
            assert isinstance(x, np.memmap) and not x.flags.writeable
            np.testing.assert_array_equal(x, np.load(npy_files["x_train"]))
            np.testing.assert_array_equal(rows, data.rows)
            prefetch(rows[:16])  # asynchronous read-ahead: only must not fail
    finally:
        data.release()
    memory = prepare_data(fastdist.compose(small_run()), 2, 0.0, shared=True)
    try:
        with open_rows(memory.rows_spec()) as (_, _, _, prefetch):
            assert prefetch is None  # shared memory: nothing to read ahead
    finally:
        memory.release()
