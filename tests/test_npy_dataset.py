"""dataset=npy: memory-mapped .npy files, shared by the workers, never copied; and the
in-place preparation of every dataset (shuffled by index, bitwise the same run)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import fastdist
from fastdist.data.datasets import clear_dataset_cache, make_synthetic
from fastdist.engine.memory import human_bytes
from fastdist.engine.rows import open_rows
from fastdist.engine.shm import LOCK_SUFFIX, SEGMENT_PREFIX, SHM_DIR, list_segments
from fastdist.errors import ConfigError
from fastdist.run.arena import data_memory_plan
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
    yield paths
    clear_dataset_cache()  # the cache holds maps of these files


def _npy_run(paths, *extra):
    files = [f"dataset.{key}={path}" for key, path in paths.items()]
    run = [o for o in small_run(*extra) if not o.startswith(("dataset.n_", "dataset="))]
    return [*run, "dataset=npy", *files]


@pytest.mark.parametrize(
    "extra",
    [
        ("combiner=weight_avg", "steps=20"),
        ("combiner=fisher_avg", "steps=20", "partition=dirichlet", "partition.min_size=16"),
        ("combiner=soup_greedy", "steps=20", "validation_fraction=0.25"),
    ],
)
def test_training_on_mapped_files_equals_training_in_memory(npy_files, extra):
    on_disk = fastdist.train(fastdist.compose(_npy_run(npy_files, *extra)))
    in_memory = fastdist.train(fastdist.compose(small_run(*extra)))
    np.testing.assert_array_equal(on_disk.worker_params, in_memory.worker_params)
    for key in ("test_loss", "test_accuracy", "shard_sizes", "shard_label_histograms"):
        assert on_disk.metrics[key] == in_memory.metrics[key], key


def test_features_are_mapped_not_copied(npy_files):
    cfg = fastdist.compose(_npy_run(npy_files, "validation_fraction=0.25"))
    with prepare_data(cfg, 2, 0.25, shared=True) as data:
        spec = data.rows_spec()
        # Workers map the file itself; only labels and the row order are shared copies.
        assert spec.x.path == str(npy_files["x_train"]) and spec.x.segment is None
        assert spec.y.segment is not None and spec.rows.segment is not None
        assert spec.x.offset == np.load(npy_files["x_train"], mmap_mode="r").offset
        assert isinstance(data.dataset.x_train, np.memmap)
        assert not data.dataset.x_train.flags.writeable
        order = np.random.default_rng(0).permutation(N_TRAIN)
        np.testing.assert_array_equal(data.rows, order[128:])
        x_val, _ = data.validation
        np.testing.assert_array_equal(x_val, np.load(npy_files["x_train"])[order[:128]])
    assert len(data.rows) == 0  # released on leaving the block


def test_synthetic_rows_are_generated_in_shared_memory():
    cfg = fastdist.compose(small_run())
    before = set(list_segments())
    with prepare_data(cfg, 2, 0.0, shared=True) as data:
        spec = data.rows_spec()
        assert spec.x.segment is not None and spec.x.offset % 64 == 0
        # One segment each: the generated block, the labels, the row order.
        assert len(set(list_segments()) - before) == 3
        x, _ = make_synthetic(N_TRAIN + N_TEST, N_FEATURES, 3, 0)
        np.testing.assert_array_equal(data.dataset.x_train, x[:N_TRAIN])
        (shard_x, shard_y), _ = data.shard_arrays()
        assert len(shard_x) == N_TRAIN // 2 and shard_x.shape == (N_TRAIN // 2, N_FEATURES)
        np.testing.assert_array_equal(np.asarray(shard_x), x[data.rows[: N_TRAIN // 2]])
        np.testing.assert_array_equal(shard_x[[3, 1]], x[data.rows[[3, 1]]])
        np.testing.assert_array_equal(shard_y[:4], data.dataset.y_train[data.rows[:4]])
    assert set(list_segments()) == before


def test_in_place_generation_draws_the_same_rows():
    x_private, y_private = make_synthetic(70000, 5, 4, 3)
    out = np.full((70000, 5), np.nan, np.float32)
    x, y = make_synthetic(70000, 5, 4, 3, out=out)
    assert x is out
    np.testing.assert_array_equal(x, x_private)
    np.testing.assert_array_equal(y, y_private)


def _broken(npy_files, key, array):
    np.save(npy_files[key], array)
    return fastdist.compose(_npy_run(npy_files))


@pytest.mark.parametrize(
    ("key", "array", "message"),
    [
        ("x_train", np.zeros((N_TRAIN, N_FEATURES)), "need float32"),
        ("x_train", np.zeros(N_TRAIN, np.float32), "need (rows, features"),
        ("x_train", np.asfortranarray(np.zeros((N_TRAIN, 10), np.float32)), "Fortran-ordered"),
        ("y_train", np.zeros(N_TRAIN - 1, np.int32), f"need ({N_TRAIN},) labels"),
        ("y_train", np.zeros(N_TRAIN, np.float32), "need integer labels"),
        ("y_train", np.full(N_TRAIN, 2**40, np.int64), "need class numbers"),
        ("y_test", np.full(N_TEST, -1, np.int32), "labels must be in [0, 3)"),
        ("x_test", np.zeros((N_TEST, 4), np.float32), "x_test has samples of shape"),
    ],
)
def test_bad_files_are_one_line_errors(npy_files, key, array, message):
    with pytest.raises(ConfigError) as info:
        fastdist.train(_broken(npy_files, key, array))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_non_finite_features_name_the_row(npy_files):
    x = np.load(npy_files["x_train"])
    x[300, 2] = np.nan
    with pytest.raises(ConfigError, match=r"NaN or infinite values \(row 300\)"):
        fastdist.train(_broken(npy_files, "x_train", x))
    # Files validated before: the finiteness pass can be skipped (and then is).
    cfg = fastdist.compose([*_npy_run(npy_files), "dataset.check_finite=false"])
    with prepare_data(cfg, 2, 0.0) as data:
        assert np.isnan(data.dataset.x_train[300, 2])


def test_missing_and_unreadable_files(npy_files, tmp_path):
    npy_files["x_test"] = tmp_path / "nope.npy"
    with pytest.raises(ConfigError, match="no such file"):
        fastdist.train(fastdist.compose(_npy_run(npy_files)))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    npy_files["x_test"] = tmp_path / "junk.npy"
    with pytest.raises(ConfigError, match="not a readable .npy array"):
        fastdist.train(fastdist.compose(_npy_run(npy_files)))
    with pytest.raises(ConfigError, match="needs dataset.x_train"):
        fastdist.train(fastdist.compose(_npy_run({})))


def test_a_rewritten_file_is_read_again(npy_files):
    cfg = fastdist.compose(_npy_run(npy_files))
    with prepare_data(cfg, 2, 0.0) as data:
        first = data.dataset.y_train.copy()
    y = np.load(npy_files["y_train"])
    np.save(npy_files["y_train"], (y + 1) % 3)
    with prepare_data(cfg, 2, 0.0) as data:
        np.testing.assert_array_equal(data.dataset.y_train, (first + 1) % 3)


def test_images_keep_their_shape_for_the_cnn(tmp_path):
    """(n, 8, 8) files train the CNN exactly as the same rows generated in memory."""
    x, y = make_synthetic(N_TRAIN + N_TEST, 64, 3, 0)
    images = x.reshape(-1, 8, 8)
    paths = {key: tmp_path / f"{key}.npy" for key in ("x_train", "y_train", "x_test", "y_test")}
    np.save(paths["x_train"], images[:N_TRAIN])
    np.save(paths["y_train"], y[:N_TRAIN])
    np.save(paths["x_test"], images[N_TRAIN:])
    np.save(paths["y_test"], y[N_TRAIN:])
    cnn = ("model=cnn", "model.channels=[4]", "model.hidden=[8]", "steps=6")
    in_memory = small_run(*cnn, "dataset.n_features=64", "dataset.sample_shape=[8,8]")
    try:
        on_disk = fastdist.train(fastdist.compose(_npy_run(paths, *cnn)))
    finally:
        clear_dataset_cache()
    assert on_disk.model.describe()["input"][-2:] == [8, 8]
    reference = fastdist.train(fastdist.compose(in_memory))
    np.testing.assert_array_equal(on_disk.worker_params, reference.worker_params)


def test_workers_open_the_file_itself_and_read_ahead(npy_files):
    cfg = fastdist.compose(_npy_run(npy_files))
    data = prepare_data(cfg, 2, 0.0, shared=True)
    with data, open_rows(data.rows_spec()) as (x, y, rows, prefetch):
        assert isinstance(x, np.memmap) and not x.flags.writeable
        np.testing.assert_array_equal(x, np.load(npy_files["x_train"]))
        np.testing.assert_array_equal(y, np.load(npy_files["y_train"]))
        np.testing.assert_array_equal(rows, data.rows)
        prefetch(rows[:16])  # asynchronous read-ahead: only must not fail
    memory = prepare_data(fastdist.compose(small_run()), 2, 0.0, shared=True)
    with memory, open_rows(memory.rows_spec(slice(100, 200))) as (_, _, rows, prefetch):
        assert prefetch is None  # shared memory: nothing to read ahead
        np.testing.assert_array_equal(rows, memory.rows[100:200])


def test_warm_workers_open_each_jobs_rows(npy_files):
    """A warm pool's workers get the rows with each job: an npy job after an in-memory
    one (and back) on the same workers equals fresh workers, bit for bit."""
    from fastdist.run.pool_cache import shutdown_warm_pool, warm_pool

    jobs = [
        small_run("steps=12", "seed=1"),
        _npy_run(npy_files, "steps=12", "seed=1"),
        _npy_run(npy_files, "steps=12", "seed=2", "combiner=local_sgd"),
    ]
    try:
        warm = [fastdist.train(fastdist.compose([*job, "pool.reuse=true"])) for job in jobs]
        assert warm_pool() is not None and warm_pool().jobs_run == len(jobs)
    finally:
        shutdown_warm_pool()
    for job, hot in zip(jobs, warm):
        cold = fastdist.train(fastdist.compose([*job, "pool.reuse=false"]))
        np.testing.assert_array_equal(hot.worker_params, cold.worker_params)
    np.testing.assert_array_equal(warm[0].worker_params, warm[1].worker_params)


def _own_segment_bytes() -> int:
    """The bytes of this process's segments in /dev/shm (other runs may share it)."""
    own = f"{SEGMENT_PREFIX}{os.getpid()}-"
    return sum(
        os.stat(os.path.join(SHM_DIR, name)).st_size
        for name in os.listdir(SHM_DIR)
        if name.startswith(own) and not name.endswith(LOCK_SUFFIX)
    )


@pytest.mark.parametrize("fraction", [0.0, 0.25])
@pytest.mark.parametrize("source", ["npy", "synthetic"])
def test_the_memory_plan_is_what_the_data_put_in_shared_memory(npy_files, source, fraction):
    run = _npy_run(npy_files) if source == "npy" else small_run()
    cfg = fastdist.compose([*run, f"validation_fraction={fraction}"])
    shared, _ = data_memory_plan(cfg, fraction)
    before = _own_segment_bytes()
    with prepare_data(cfg, 2, fraction, shared=True) as data:
        assert data.store.shared_bytes == shared
        assert _own_segment_bytes() - before == shared
        n_val = N_TRAIN - len(data.rows)
    assert n_val == round(N_TRAIN * fraction)
    if source == "npy":  # the labels and the row order; the mapped features count nothing
        assert shared == 4 * N_TRAIN + 8 * (N_TRAIN - n_val)


def test_an_npy_run_that_cannot_fit_is_refused_before_loading(npy_files, monkeypatch):
    import fastdist.run.coordinator as coordinator
    from fastdist.engine import memory

    cfg = fastdist.compose(_npy_run(npy_files, "validation_fraction=0"))
    shared, _ = data_memory_plan(cfg, 0.0)
    monkeypatch.setattr(memory, "shm_free_bytes", lambda: (shared - 1, 64 * 2**20))
    monkeypatch.setattr(coordinator, "prepare_data", lambda *a, **k: 1 / 0)
    needs = re.escape(f"dataset=npy needs {human_bytes(shared)} of shared memory")
    with pytest.raises(ConfigError, match=needs):
        fastdist.train(cfg)


def test_the_plan_leaves_files_it_cannot_read_to_the_loader(npy_files, tmp_path):
    (tmp_path / "forged.npy").write_bytes(npy_files["x_train"].read_bytes()[:200])
    for x_train in (tmp_path / "forged.npy", tmp_path / "absent.npy"):
        cfg = fastdist.compose(_npy_run({**npy_files, "x_train": x_train}))
        assert data_memory_plan(cfg, 0.0) is None
        with pytest.raises(ConfigError, match="dataset.x_train"):
            fastdist.train(cfg)
