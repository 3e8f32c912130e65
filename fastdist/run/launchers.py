"""Sweeps that run jobs side by side must not oversubscribe the CPUs.

Every job keeps ``workers x backend.threads`` threads busy. How many jobs run at once
depends on Hydra's launcher (``hydra.launcher._target_``):

* basic (the default): one job at a time on this machine;
* joblib: ``n_jobs`` jobs at once on this machine, in loky worker processes
  (``-1`` = all CPUs, ``-2`` = all but one, joblib's rule);
* submitit_local: every job of the sweep at once, each with ``tasks_per_node`` tasks
  (``cpus_per_task`` is not enforced locally);
* submitit_slurm: each job on its own allocation of ``cpus_per_task`` CPUs per task.

When the busy threads exceed the CPUs, every job slows down and its timings mean little,
so :func:`check_sweep_fits` returns a one-line warning that the job logs at its start.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

__all__ = ["check_sweep_fits"]


def _available_cpus() -> int:
    """The CPUs this process may run on (taskset, cgroup cpusets, SLURM allocations),
    which can be fewer than ``os.cpu_count()``."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13
        return os.process_cpu_count() or 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _joblib_jobs(n_jobs: int, cpus: int) -> int:
    if n_jobs < 0:
        return max(cpus + 1 + n_jobs, 1)
    return max(n_jobs, 1)


def check_sweep_fits(cfg, hydra_cfg=None, cpus: int | None = None) -> str | None:
    """A one-line warning when the jobs running at once need more CPUs than they have.

    ``hydra_cfg`` defaults to ``HydraConfig.get()`` (None outside a Hydra job), ``cpus``
    to the CPUs this process may use.
    """
    if hydra_cfg is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
    cpus = cpus or _available_cpus()
    launcher = OmegaConf.select(hydra_cfg, "launcher", default=None) or {}
    kind = str(launcher.get("_target_", "")).rsplit(".", 1)[-1]
    workers, threads = int(cfg.workers), int(cfg.backend.threads)
    per_job = workers * threads
    tasks = int(launcher.get("tasks_per_node", 1) or 1)
    shape = f"{workers} workers x {threads} threads"

    if kind == "SlurmLauncher":
        # Runs on its own allocation; cpus_per_task unset, count the CPUs this job may
        # use (SLURM's default is one per task).
        granted = launcher.get("cpus_per_task")
        granted = int(granted) if granted is not None else cpus
        if per_job <= granted:
            return None
        return (
            f"each job gets cpus_per_task={granted} CPUs but trains {shape}: "
            f"set hydra.launcher.cpus_per_task={per_job}"
        )

    if kind == "JoblibLauncher":
        jobs = _joblib_jobs(int(launcher.get("n_jobs", -1)), cpus)
        what = f"up to {jobs} parallel jobs"
        fix = f"hydra.launcher.n_jobs={cpus // per_job}"
    elif kind == "LocalLauncher":
        # submitit's local executor starts every job of the sweep at once; this job
        # knows at least the ones started before it (job numbers 0..num).
        num = OmegaConf.select(hydra_cfg, "job.num", default=0, throw_on_missing=False)
        jobs = tasks * (int(num or 0) + 1)
        what = f"submitit_local runs all jobs at once: {jobs} tasks"
        fix = f"hydra/launcher=joblib hydra.launcher.n_jobs={cpus // per_job}"
    else:  # basic launcher (or one we do not know): one job at a time
        jobs = 1
        what = "1 job"
        fix = ""
    busy = jobs * per_job
    if busy <= cpus:
        return None
    if per_job > cpus or not fix:
        fix = f"workers x backend.threads <= {cpus}" + (", one job at a time" if jobs > 1 else "")
    return f"{what} x {shape} = {busy} busy threads on {cpus} CPUs: use {fix}"
