"""Parallel and cluster sweeps through Hydra launchers: joblib (jobs side by side on
this machine) and submitit_local (what SLURM runs, locally)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from fastdist.launchers import check_sweep_fits

TINY = [
    "dataset=synthetic",
    "dataset.n_train=256",
    "dataset.n_test=64",
    "dataset.n_features=8",
    "dataset.n_classes=3",
    "model.hidden=[8]",
    "batch_size=16",
    "epochs=2",
    "diagnostics=false",
    "workers=1",
    "seed=0,1",
]


def _sweep(tmp_path, *launcher):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastdist",
            "-m",
            *launcher,
            *TINY,
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/metrics.json")]
    assert sorted(m["seed"] for m in runs) == [0, 1]
    return proc


def test_two_jobs_in_parallel_with_joblib(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # Jobs run in loky worker processes, whose global start method ("loky") fastdist's
    # own spawned workers must not inherit.
    _sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")


@pytest.mark.slow
def test_two_jobs_with_submitit_local(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5")


def _cfg(workers=2, threads=1):
    return OmegaConf.create({"workers": workers, "backend": {"threads": threads}})


def test_oversubscribed_parallel_sweeps_are_warned_about():
    joblib = OmegaConf.create({"launcher": {"_target_": "x.JoblibLauncher", "n_jobs": 2}})
    message = check_sweep_fits(_cfg(workers=2), joblib, cpus=2)
    assert message.startswith("2 parallel jobs x 2 workers x 1 threads = 4 busy threads on 2")
    assert "hydra.launcher.n_jobs=1" in message
    assert check_sweep_fits(_cfg(workers=1), joblib, cpus=2) is None
    all_cores = OmegaConf.create({"launcher": {"_target_": "x.JoblibLauncher", "n_jobs": -1}})
    assert check_sweep_fits(_cfg(workers=1), all_cores, cpus=2) is None
    assert check_sweep_fits(_cfg(workers=2), all_cores, cpus=2) is not None
    slurm = OmegaConf.create(
        {"launcher": {"_target_": "x.submitit.SlurmLauncher", "cpus_per_task": 4}}
    )
    assert "cpus_per_task=8" in check_sweep_fits(_cfg(workers=4, threads=2), slurm, cpus=64)
    basic = OmegaConf.create({"launcher": {"_target_": "hydra.BasicLauncher"}})
    assert check_sweep_fits(_cfg(workers=8), basic, cpus=2) is None  # one job at a time


def test_the_warning_reaches_the_log(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastdist",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *TINY[:-2],
            "workers=2",
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    if len(__import__("os").sched_getaffinity(0)) < 4:
        assert "busy threads on" in proc.stdout + proc.stderr
