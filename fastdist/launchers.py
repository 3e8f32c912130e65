"""Sweeps that run jobs side by side must not oversubscribe the cores.

With Hydra's joblib launcher ``n_jobs`` jobs run at once on this machine, each with
``workers x backend.threads`` busy threads; with submitit each job gets
``cpus_per_task`` CPUs. When the threads a sweep starts exceed the CPUs it has, every
job slows down and timings mean little, so a job says so at its start.
"""

from __future__ import annotations

import os

__all__ = ["check_sweep_fits"]


def check_sweep_fits(cfg, hydra_cfg=None, cpus: int | None = None) -> str | None:
    """A one-line warning when the jobs running at once need more CPUs than they have."""
    if hydra_cfg is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
    cpus = cpus or len(os.sched_getaffinity(0))
    launcher = hydra_cfg.get("launcher") or {}
    target = str(launcher.get("_target_", "")).lower()
    per_job = int(cfg.workers) * int(cfg.backend.threads)
    if "joblib" in target:
        n_jobs = int(launcher.get("n_jobs", -1))
        jobs = cpus if n_jobs < 0 else n_jobs
        if jobs * per_job > cpus:
            return (
                f"{jobs} parallel jobs x {cfg.workers} workers x {cfg.backend.threads} threads "
                f"= {jobs * per_job} busy threads on {cpus} CPUs: set "
                f"hydra.launcher.n_jobs={max(1, cpus // per_job)} or fewer workers"
            )
    elif "submitit" in target:
        granted = launcher.get("cpus_per_task")
        if granted is not None and per_job > int(granted):
            return (
                f"each job asks for cpus_per_task={granted} but trains {cfg.workers} workers x "
                f"{cfg.backend.threads} threads: set hydra.launcher.cpus_per_task={per_job}"
            )
    return None
