"""A warm worker pool across the jobs of a sweep (pool.reuse): same results as cold
runs, a failed job leaves nothing warm behind, nothing leaks at the end of a sweep, on
an error or on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from fastdist.errors import WorkerError
from fastdist.run.config import compose
from fastdist.run.coordinator import train
from fastdist.run.pool_cache import reuse_requested, shutdown_warm_pool, warm_pool
from tests.conftest import small_run, wait_until


@pytest.fixture(autouse=True)
def no_pool_left():
    yield
    shutdown_warm_pool()


def _train(*overrides: str):
    return train(compose(small_run(*overrides)))


def test_reuse_is_off_outside_a_multirun_unless_asked():
    assert not reuse_requested(compose(small_run()))
    assert reuse_requested(compose(small_run("pool.reuse=true")))
    assert not reuse_requested(compose(small_run("pool.reuse=false")))


def test_warm_jobs_match_cold_jobs_bitwise():
    jobs = [
        ("seed=0", "epochs=2"),
        ("seed=1", "epochs=1", "combiner=local_sgd"),
    ]
    warm = []
    for job in jobs:
        warm.append(_train(*job, "pool.reuse=true"))
        pool = warm_pool()
        assert pool is not None and pool.usable
    assert pool.jobs_run == len(jobs)  # one pool ran every job
    shutdown_warm_pool()
    for job, hot in zip(jobs, warm):
        cold = _train(*job, "pool.reuse=false")
        assert np.array_equal(hot.worker_params, cold.worker_params)
        assert hot.metrics["test_accuracy"] == cold.metrics["test_accuracy"]
        assert hot.metrics["test_loss"] == cold.metrics["test_loss"]


def test_a_job_with_other_workers_gets_a_new_pool():
    _train("pool.reuse=true", "steps=3")
    first = warm_pool()
    _train("pool.reuse=true", "steps=3", "workers=1")
    assert warm_pool() is not first and warm_pool().n_workers == 1
    assert not first.alive()


def test_a_failed_job_tears_the_pool_down_and_the_next_starts_fresh(monkeypatch):
    # The same environment for every job, so the failing job runs on the warm pool;
    # the fault only fires at step 6, which the short jobs never reach.
    monkeypatch.setenv("FASTDIST_INJECT_FAULT", "worker=1,step=6,kind=raise")
    good = _train("pool.reuse=true", "steps=4")
    pool = warm_pool()
    with pytest.raises(WorkerError):
        _train("pool.reuse=true", "steps=20", "seed=1")
    assert warm_pool() is None and not pool.alive()
    again = _train("pool.reuse=true", "steps=4")
    assert warm_pool() is not pool
    assert np.array_equal(again.worker_params, good.worker_params)


def test_respawn_on_a_warm_pool_matches_a_run_without_failure(monkeypatch, tmp_path):
    clean = _train("pool.reuse=true", "steps=12", "combiner=local_sgd")
    pool = warm_pool()
    monkeypatch.setenv(
        "FASTDIST_INJECT_FAULT", f"worker=0,step=7,kind=sigkill,once={tmp_path / 'fired'}"
    )
    respawned = _train(
        "pool.reuse=true", "steps=12", "combiner=local_sgd", "on_worker_failure=respawn"
    )
    assert respawned.metrics["failures"] and np.array_equal(
        respawned.worker_params, clean.worker_params
    )
    assert not pool.alive()  # other environment: other workers; the old ones are gone


def _fastdist(*args: str, cwd, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "fastdist", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_a_multirun_reuses_its_workers_and_stops_them_at_the_end(tmp_path):
    proc = _fastdist(
        "-m", *small_run("steps=3", "seed=0,1,2"), f"hydra.sweep.dir={tmp_path}/m", cwd=tmp_path
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    # Started while Hydra composed the three jobs' configs, then kept for the next two.
    assert out.count("workers started while the sweep was being prepared") == 1, out
    assert out.count("workers kept warm from the previous job") == 2, out
    assert len(list((tmp_path / "m").rglob("metrics.json"))) == 3
    # the leak fixture checks that no worker and no segment outlived the sweep


def test_a_sweep_that_fails_validation_stops_the_pool_it_started(tmp_path):
    proc = _fastdist(
        "-m",
        *small_run("steps=3", "seed=0,1", "combiner=grad_avg,no_such_combiner"),
        f"hydra.sweep.dir={tmp_path}/m",
        cwd=tmp_path,
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "no_such_combiner" in out, out
    assert not list((tmp_path / "m").rglob("metrics.json"))  # no job ran
    # the leak fixture checks that the pool started ahead of the jobs is gone


def _sweep_config(*overrides: str):
    """The multirun's own config (what ``on_multirun_start`` gets), as Hydra composes it."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    GlobalHydra.instance().clear()
    with initialize_config_module("fastdist.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration("config", list(overrides), RunMode.MULTIRUN)


def test_a_sweep_starts_its_pool_early_only_when_every_job_shares_it():
    from fastdist.run.pool_cache import _pool_for_sweep

    wanted = _pool_for_sweep(_sweep_config("workers=3", "seed=0,1,2"))
    assert wanted is not None and wanted[:2] == (3, "numba")
    for swept in (
        "workers=1,2",
        "backend=numba,reference",
        "backend.threads=1,2",
        "experiment=w1,w2",
        "pool.reuse=false",
        "dist=mpi",
    ):
        assert _pool_for_sweep(_sweep_config(swept, "seed=0,1")) is None, swept
    parallel = _sweep_config("hydra/launcher=joblib", "seed=0,1")
    assert _pool_for_sweep(parallel) is None


def test_a_sweep_the_first_job_refuses_starts_no_workers(tmp_path):
    proc = _fastdist(
        "-m", *small_run("workers=0", "seed=0,1"), f"hydra.sweep.dir={tmp_path}/m", cwd=tmp_path
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "workers must be >= 1, got 0" in out and "Traceback" not in out


def test_ctrl_c_during_a_warm_job_stops_everything(tmp_path):
    proc = _fastdist(
        "-m",
        *small_run("steps=3,100000000"),
        f"hydra.sweep.dir={tmp_path}/m",
        cwd=tmp_path,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: any("kept warm" in line for line in lines), 60), lines
        time.sleep(0.5)  # inside the long job's step loop
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5)
    assert "interrupted; workers stopped" in "".join(lines)


def test_an_error_after_a_warm_job_still_stops_the_pool(tmp_path):
    # Between jobs nobody is in a pool's ``with`` block: the process's exit must
    # shut the kept pool down (atexit).
    script = textwrap.dedent(
        f"""
        import fastdist
        from fastdist.run.pool_cache import warm_pool
        overrides = {small_run("steps=3", "pool.reuse=true")!r}
        fastdist.train(fastdist.compose(overrides))
        assert warm_pool() is not None and warm_pool().alive()
        raise RuntimeError("something else went wrong")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and "something else went wrong" in proc.stderr, proc.stderr


def test_data_sets_are_loaded_once_per_process_and_settings():
    from omegaconf import OmegaConf

    from fastdist.data.datasets import clear_dataset_cache, load_dataset

    clear_dataset_cache()
    digits = OmegaConf.create({"name": "digits", "test_fraction": 0.25, "split_seed": 0})
    first = load_dataset(digits)
    assert load_dataset(OmegaConf.create(OmegaConf.to_container(digits))) is first
    other = load_dataset(OmegaConf.merge(digits, {"split_seed": 1}))
    assert other is not first and not np.array_equal(other.y_train, first.y_train)
    clear_dataset_cache()
    assert load_dataset(digits) is not first


def test_large_data_sets_are_not_kept(monkeypatch):
    from omegaconf import OmegaConf

    from fastdist.data import datasets

    datasets.clear_dataset_cache()
    digits = OmegaConf.create({"name": "digits", "test_fraction": 0.25, "split_seed": 0})
    monkeypatch.setattr(datasets, "KEEP_BYTES", 1000)  # digits: about 0.5 MB
    first = datasets.load_dataset(digits)
    assert datasets.load_dataset(digits) is not first
    datasets.clear_dataset_cache()


def test_digits_are_read_exactly_as_scikit_learn_reads_them():
    from sklearn.datasets import load_digits

    from fastdist.data.datasets import _digits_arrays

    data, target = _digits_arrays()
    reference = load_digits()
    assert np.array_equal(data, reference.data) and data.dtype == reference.data.dtype
    assert np.array_equal(target, reference.target)
