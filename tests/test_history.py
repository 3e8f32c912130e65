"""history.csv: its rows and columns, the scores of the combined model, the trackers."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from conftest import small_run

import fastdist
from fastdist.combiners.exchange import gradient_mean, lock_free, periodic_average
from fastdist.errors import ConfigError
from fastdist.run.history import COLUMNS, History, bytes_per_sync
from fastdist.run.loggers import LoggerConfig, make_sinks


def test_rows_columns_and_the_last_score_is_the_runs(tmp_path):
    result = fastdist.train(small_run("workers=2", "epochs=3", "history.every=5"))
    rows = result.history
    assert all(tuple(row) == COLUMNS for row in rows)
    steps = [row["step"] for row in rows]
    total = result.metrics["steps"]
    per_epoch = total // 3
    # the starting point, every 5 steps, every epoch (scored), and the last step
    assert steps == sorted(
        set(range(0, total, 5)) | set(range(per_epoch, total, per_epoch)) | {total}
    )
    scored = [row for row in rows if row["test_accuracy"] is not None]
    assert [row["step"] for row in scored] == [0, per_epoch, 2 * per_epoch, total]
    # scored from a snapshot of the same parameters the run ends with
    assert scored[-1]["test_accuracy"] == result.metrics["test_accuracy"]
    assert scored[-1]["test_loss"] == pytest.approx(result.metrics["test_loss"], rel=1e-6)
    assert rows[-1]["epoch"] == 3
    trained = rows[1:]
    assert all(row["train_loss"] > 0 and row["samples_per_second"] > 0 for row in trained)
    assert trained[-1]["train_loss"] < trained[0]["train_loss"]
    assert all(row["lr"] == 0.05 for row in rows)
    # grad_avg averages every worker's gradient at every step
    per_sync = 2 * result.model.layout.size * 4
    assert [row["bytes_synchronised"] for row in rows] == [s * per_sync for s in steps]
    assert all(row["val_loss"] is None for row in rows)  # no validation split asked for


def test_local_sgd_with_a_validation_split_scores_both(tmp_path):
    overrides = small_run("combiner=local_sgd", "combiner.period=4", "validation_fraction=0.2")
    result = fastdist.train([*overrides, "history.every=8", "eval.every=8"])
    scored = [row for row in result.history if row["val_accuracy"] is not None]
    assert len(scored) >= 3 and all(0 <= row["val_accuracy"] <= 1 for row in scored)
    assert scored[-1]["test_accuracy"] == result.metrics["test_accuracy"]
    # parameters (not gradients) averaged every 4th step
    syncs = [row["bytes_synchronised"] / (2 * result.model.layout.size * 4) for row in scored]
    assert syncs == [row["step"] // 4 for row in scored]


def test_history_merges_reports_of_every_worker():
    history = History(
        workers=2,
        batch=4,
        steps_per_epoch=10,
        lr=lambda step: 0.1,
        exchange=periodic_average(5),
        total_steps=100,
        sync_bytes=100,
    )
    seen = []
    history.listeners.append(seen.append)
    history.begin(0, start=0.0)
    report = {"loss_sum": 8.0, "seen": 20, "evaluate": False, "snapshot": False}
    history.on_step(0, {"step": 5, "time": 1.0, **report})
    assert seen == []  # worker 1 has not reported step 5 yet
    history.on_step(1, {"step": 5, "time": 2.0, **report, "loss_sum": 12.0})
    (row,) = seen
    assert row["step"] == 5 and row["epoch"] == 0.5 and row["wall_time"] == 2.0
    assert row["train_loss"] == pytest.approx(20.0 / 40)
    assert row["samples_per_second"] == pytest.approx(5 * 4 * 2 / 2.0)
    assert row["bytes_synchronised"] == 100  # one sync point (after step 5)
    history.close()


def test_bytes_per_sync_counts_what_is_averaged():
    params = periodic_average(2, average_state=True)
    assert bytes_per_sync(gradient_mean(), 4, 10, 1) == 4 * 10 * 4
    assert bytes_per_sync(params, 4, 10, 1) == 4 * 10 * 4 * 2
    # Hogwild: every worker's update reaches the shared vector at every step.
    assert bytes_per_sync(lock_free(), 4, 10, 1) == 4 * 10 * 4


def test_csv_and_tensorboard_get_the_same_series(tmp_path):
    pytest.importorskip("tensorboardX")
    sinks = make_sinks(LoggerConfig(name="tensorboard"), str(tmp_path), COLUMNS)
    row = dict.fromkeys(COLUMNS)
    row.update(step=3, train_loss=0.5, lr=0.1, test_accuracy=None)
    for sink in sinks:
        sink.write(row)
        sink.finish([row], [{"step": 3, "test_accuracy": 0.75}])
        sink.close()
    with (tmp_path / "history.csv").open() as fh:
        (saved,) = list(csv.DictReader(fh))
    assert saved["step"] == "3" and saved["train_loss"] == "0.5" and saved["test_loss"] == ""
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    raw = events.read_bytes()  # the tags are stored as plain strings in the records
    assert b"train/loss" in raw and b"run/lr" in raw and b"test/accuracy" in raw


def test_a_missing_tracker_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'fastdist\[tensorboard\]'"):
        make_sinks(LoggerConfig(name="tensorboard"), str(tmp_path), COLUMNS)


def test_history_rows_reach_history_csv_from_the_cli(tmp_path):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "fastdist", *small_run("workers=2"), f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS
    assert np.isfinite(float(rows[-1]["test_accuracy"]))
