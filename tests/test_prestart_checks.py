"""What can be checked before start-up is: each of these fails in one line with exit
code 2, before any worker is spawned (the pool refuses to start in these tests)."""

from __future__ import annotations

import pytest
from conftest import small_run
from test_bad_input_fuzz import run_cli

from fastdist.engine.pool import WorkerPool


@pytest.fixture(autouse=True)
def no_workers(monkeypatch):
    def refuse(self):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(WorkerPool, "start", refuse)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["combiner=aligned_avg", "combiner.reference=7"], "combiner.reference=7"),
        (["seed=99999999999999999999"], "seed must be in"),
        (["dataset.seed=4294967296"], "dataset.seed must be < 2\\*\\*32"),
        (["workers=1000"], "set max_workers=1000"),
        (["worker_timeout=-1"], "worker_timeout"),
        (["dataset.n_features=0"], "n_features"),
        (["dataset.n_test=0"], "n_test"),
        (["optimizer.lr=inf"], "optimizer.lr=inf must be a finite number"),
        (["optimizer.lr=nan"], "optimizer.lr=nan must be a finite number"),
        (["max_workers=-1"], "max_workers must be >= 1"),
        (["history.every=0"], "history.every must be >= 1"),
        (["optimizer.lr='0.1'"], "optimizer.lr='0.1' is a string"),
        (["seed='3'"], "seed='3' is a string"),
        (
            ["workers=99999999999999999999", "max_workers=99999999999999999999"],
            "workers=99999999999999999999 cannot run here: .* need at least",
        ),
    ],
)
def test_refused_before_start_up(tmp_path, overrides, message):
    import re

    code, err = run_cli([*small_run(*overrides), f"hydra.run.dir={tmp_path}/run"])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_an_unusable_run_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    code, err = run_cli([*small_run(), f"hydra.run.dir={tmp_path}/file/run"])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "cannot" in err, err


def test_max_workers_lets_a_large_pool_through_the_check(tmp_path):
    # Past validation (the pool is refused here, so the run stops at start-up).
    code, err = run_cli(
        [
            *small_run("workers=40", "max_workers=40", "dataset.n_train=2000"),
            f"hydra.run.dir={tmp_path}/r",
        ]
    )
    assert "max_workers" not in err and "a worker was started" in err
    assert len(err.strip().splitlines()) == 1  # no second line from Hydra either


def test_a_sweep_checks_every_job_before_the_first_trains(tmp_path):
    # Job 1 of 3 is refused: nothing trains (the pool would refuse to start anyway),
    # and the error is the job's own check, in one line.
    code, err = run_cli(
        ["-m", *small_run("optimizer.lr=0.05,-1,0.05"), f"hydra.sweep.dir={tmp_path}/sweep"]
    )
    assert code == 2, err
    assert err.strip().splitlines() == ["fastdist: error: optimizer.lr must be > 0, got -1.0"]
    assert not list(tmp_path.rglob("metrics.json"))
