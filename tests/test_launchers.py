"""Parallel and cluster sweeps through Hydra launchers: joblib (jobs side by side on
this machine, in loky worker processes) and submitit_local (what SLURM runs, locally),
and the warning a job logs when the sweep oversubscribes the CPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from fastdist.run import launchers
from fastdist.run.launchers import check_sweep_fits

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
WARNING = "busy threads on"


def _sweep(tmp_path, *launcher: str, one_cpu: bool = False) -> str:
    """Run a two-job sweep (seed=0,1) and check each job wrote its metrics; the output."""
    pin = None
    if one_cpu:  # the sweep sees one CPU, as under `taskset` or a cgroup cpuset
        cpu = min(os.sched_getaffinity(0))
        pin = lambda: os.sched_setaffinity(0, {cpu})  # noqa: E731
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
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=pin,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/metrics.json")]
    assert sorted(m["seed"] for m in runs) == [0, 1], output[-3000:]
    return output


def test_two_jobs_in_parallel_with_joblib(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # Each job runs in a loky worker process, whose global start method is "loky";
    # fastdist's spawned workers must start (and stop) there all the same.
    output = _sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert "Joblib.Parallel(n_jobs=2,backend=loky" in output
    if len(os.sched_getaffinity(0)) >= 2:
        assert WARNING not in output  # 2 jobs x 1 worker x 1 thread fit 2 CPUs


def test_an_oversubscribed_parallel_sweep_says_so_in_its_log(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    output = _sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", one_cpu=True)
    assert "up to 2 parallel jobs x 1 workers x 1 threads = 2 busy threads on 1 CPUs" in output
    logged = [(tmp_path / "sweep" / job / "fastdist.log").read_text() for job in ("0", "1")]
    assert all("[WARNING]" in log and WARNING in log for log in logged)


def test_two_jobs_with_submitit_local(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # submitit signals a job timeout_min x 60 - 30 s after it starts and would rerun it
    # from scratch (Hydra's launcher is "checkpointable") up to 3 times; with
    # max_num_timeout=0 a stuck job fails after 90 s, well before the test's timeout.
    _sweep(
        tmp_path,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=2",
        "+hydra.launcher.max_num_timeout=0",
    )
    assert (tmp_path / "sweep" / ".submitit").is_dir()


# --- check_sweep_fits, on launcher configs written out and composed ------------------


def _cfg(workers=2, threads=1):
    return OmegaConf.create({"workers": workers, "backend": {"threads": threads}})


def _launcher(target: str, num: int = 0, **keys):
    launcher = {"_target_": f"hydra_plugins.some_launcher.{target}", **keys}
    return OmegaConf.create({"launcher": launcher, "job": {"num": num}})


def test_two_parallel_jobs_of_two_workers_do_not_fit_two_cpus():
    joblib = _launcher("JoblibLauncher", n_jobs=2)
    message = check_sweep_fits(_cfg(workers=2), joblib, cpus=2)
    assert message == (
        "up to 2 parallel jobs x 2 workers x 1 threads = 4 busy threads on 2 CPUs: "
        "use hydra.launcher.n_jobs=1"
    )
    assert "\n" not in message
    assert check_sweep_fits(_cfg(workers=1), joblib, cpus=2) is None
    assert check_sweep_fits(_cfg(workers=2), joblib, cpus=4) is None
    assert "= 4 busy threads" in check_sweep_fits(_cfg(workers=1, threads=2), joblib, cpus=2)


def test_joblib_n_jobs_counts_cpus_like_joblib():
    assert check_sweep_fits(_cfg(workers=1), _launcher("JoblibLauncher", n_jobs=-1), 2) is None
    assert "up to 2 parallel" in check_sweep_fits(_cfg(), _launcher("JoblibLauncher", n_jobs=-1), 2)
    assert check_sweep_fits(_cfg(), _launcher("JoblibLauncher", n_jobs=-2), 2) is None  # 1 job


def test_one_job_at_a_time_must_fit_too():
    basic = _launcher("BasicLauncher")
    assert check_sweep_fits(_cfg(workers=2), basic, cpus=2) is None
    message = check_sweep_fits(_cfg(workers=4), basic, cpus=2)
    assert message == (
        "1 job x 4 workers x 1 threads = 4 busy threads on 2 CPUs: "
        "use workers x backend.threads <= 2"
    )
    joblib = check_sweep_fits(_cfg(workers=4), _launcher("JoblibLauncher", n_jobs=2), cpus=2)
    assert joblib.endswith("use workers x backend.threads <= 2, one job at a time")


def test_submitit_local_runs_every_job_at_once():
    # Job k was started after jobs 0..k-1, which still run: k + 1 jobs at once.
    first, second = (_launcher("LocalLauncher", num=k, tasks_per_node=1) for k in (0, 1))
    assert check_sweep_fits(_cfg(workers=1), second, cpus=2) is None
    assert check_sweep_fits(_cfg(workers=2), first, cpus=2) is None
    message = check_sweep_fits(_cfg(workers=2), second, cpus=2)
    assert message.startswith("submitit_local runs all jobs at once: 2 tasks x 2 workers")
    assert message.endswith("use hydra/launcher=joblib hydra.launcher.n_jobs=1")


def test_a_slurm_job_needs_a_cpu_per_worker_thread():
    slurm = _launcher("SlurmLauncher", cpus_per_task=4)
    assert check_sweep_fits(_cfg(workers=4), slurm, cpus=2) is None  # its node, not ours
    message = check_sweep_fits(_cfg(workers=4, threads=2), slurm, cpus=64)
    assert message == (
        "each job gets cpus_per_task=4 CPUs but trains 4 workers x 2 threads: "
        "set hydra.launcher.cpus_per_task=8"
    )
    unset = _launcher("SlurmLauncher", cpus_per_task=None)
    assert "cpus_per_task=2 CPUs" in check_sweep_fits(_cfg(workers=4), unset, cpus=2)


def test_outside_a_hydra_job_there_is_nothing_to_check(monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # as in fastdist.train(...)
    assert check_sweep_fits(_cfg(workers=64)) is None


def _compose(*overrides: str):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("fastdist.conf", version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_the_plugins_own_launcher_configs_are_read(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setattr(launchers, "_available_cpus", lambda: 2)  # a 2-core machine
    cfg = _compose("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "workers=2")
    assert check_sweep_fits(cfg, cfg.hydra).startswith("up to 2 parallel jobs x 2 workers")
    cfg = _compose("hydra/launcher=joblib", "workers=1")  # n_jobs=-1: all (2) CPUs
    assert check_sweep_fits(cfg, cfg.hydra) is None
    cfg = _compose("hydra/launcher=submitit_local", "hydra.job.num=1", "workers=2")
    assert check_sweep_fits(cfg, cfg.hydra).startswith("submitit_local runs all jobs at once")
    # The project's SLURM config composes onto the plugin's (cpus_per_task: 16).
    cfg = _compose("hydra/launcher=slurm", "workers=16")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition is None and cfg.hydra.launcher.timeout_min > 0
    assert check_sweep_fits(cfg, cfg.hydra) is None
    cfg = _compose("hydra/launcher=slurm", "workers=32")
    assert "cpus_per_task=32" in check_sweep_fits(cfg, cfg.hydra)
