"""Partitions: seeded, reproducible, with the requested statistics; uneven shards train."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_run

import fastdist
from fastdist.data.partitions import dirichlet, quantity, shards
from fastdist.errors import ConfigError
from fastdist.run.preparation import prepare_data


def _proportions(parts, y, n_classes):
    """(classes, workers): the fraction of each class's rows on each worker."""
    counts = np.stack([np.bincount(y[p], minlength=n_classes) for p in parts], axis=1)
    return counts / counts.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_class_proportions_have_the_requested_spread(alpha):
    workers, n_classes = 5, 400
    y = np.repeat(np.arange(n_classes), 400).astype(np.int32)
    parts = dirichlet(alpha=alpha, min_size=1).split(y, workers, seed=3)
    props = _proportions(parts, y, n_classes)
    # Dirichlet(alpha * 1_N): mean 1/N, variance (1/N)(1 - 1/N) / (N alpha + 1).
    expected = (1 / workers) * (1 - 1 / workers) / (workers * alpha + 1)
    assert props.mean() == pytest.approx(1 / workers)
    assert props.var() == pytest.approx(expected, rel=0.15)


def test_equal_sized_dirichlet_gives_equal_shards_with_hsu_class_mixes():
    y = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 400)).astype(np.int32)
    n_classes, workers = 10, 8
    for alpha in (0.1, 1000.0):
        record = dirichlet(alpha=alpha, equal_sizes=True)
        parts = record.split(y, workers, seed=5)
        assert [len(p) for p in parts] == [len(y) // workers] * workers
        joined = np.concatenate(parts)
        assert len(np.unique(joined)) == len(joined)
        assert all(np.array_equal(p, q) for p, q in zip(parts, record.split(y, workers, 5)))
        mixes = np.stack([np.bincount(y[p], minlength=n_classes) / len(p) for p in parts])
        if alpha < 1:  # Dirichlet(0.01 each): a worker is one or two classes, pools allowing
            assert np.mean((mixes > 0.05).sum(axis=1)) <= 3
        else:  # concentration 100 per class: close to the class frequencies (0.1 each),
            # but for the last workers, who take what the class pools have left
            assert np.abs(mixes[:-2] - 0.1).max() < 0.05
    with pytest.raises(ConfigError, match="min_size"):
        dirichlet(alpha=1.0, equal_sizes=True, min_size=600).split(y, workers, 0)
    with pytest.raises(ConfigError, match="equal_sizes"):
        dirichlet(equal_sizes="yes")


def test_partitions_are_disjoint_reproducible_and_seeded():
    y = np.random.default_rng(0).integers(0, 10, 3000).astype(np.int32)
    for record in (dirichlet(alpha=0.3), shards(classes_per_worker=2), quantity(alpha=1.0)):
        a, b = record.split(y, 4, seed=11), record.split(y, 4, seed=11)
        assert all(np.array_equal(p, q) for p, q in zip(a, b))
        other = record.split(y, 4, seed=12)
        assert not all(np.array_equal(p, q) for p, q in zip(a, other))
        joined = np.concatenate(a)
        assert len(np.unique(joined)) == len(joined)
    labels = np.repeat(np.arange(8), 375).astype(np.int32)  # 8 shards of one class each
    pathological = shards(classes_per_worker=2).split(labels, 4, seed=0)
    assert [len(np.unique(labels[p])) for p in pathological] == [2, 2, 2, 2]


def test_prepare_data_rebuilds_the_same_uneven_shards():
    overrides = small_run("partition=dirichlet", "partition.alpha=0.3", "partition.min_size=16")
    cfg = fastdist.compose(overrides)
    a, b = prepare_data(cfg, 3, 0.0), prepare_data(cfg, 3, 0.0)
    assert a.shards == b.shards
    np.testing.assert_array_equal(a.y_train, b.y_train)
    sizes = [hi - lo for lo, hi in a.shards]
    assert len(set(sizes)) > 1 and a.shards[0][0] == 0 and a.shards[-1][1] == sum(sizes)


@pytest.mark.parametrize(
    ("partition", "combiner"),
    [("quantity", "grad_avg"), ("dirichlet", "local_sgd")],
)
def test_uneven_shards_train_and_are_recorded(partition, combiner):
    run = fastdist.train(
        fastdist.compose(
            small_run("workers=3", f"partition={partition}", f"combiner={combiner}", "steps=12")
        )
    )
    sizes, hist = run.metrics["shard_sizes"], run.metrics["shard_label_histograms"]
    assert run.metrics["partition"] == partition
    assert [sum(h) for h in hist] == sizes
    assert run.metrics["samples_seen"] == 3 * 12 * 16


def test_a_shard_smaller_than_a_batch_is_a_config_error():
    cfg = fastdist.compose(
        small_run("workers=4", "partition=quantity", "partition.alpha=0.05", "partition.min_size=2")
    )
    with pytest.raises(ConfigError, match="smallest shard"):
        fastdist.train(cfg)
