"""Pinning every math library of a worker to a fixed number of threads.

BLAS pools are sized when the library loads, and Numba's ``np.dot`` goes through
SciPy's own OpenBLAS, which a later ``threadpool_limits`` call does not reliably reach
(measured: a "1-thread" Numba matmul kept both cores busy). So the pin is an
environment set before the worker process imports anything, then checked with
threadpoolctl from inside the worker.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["thread_env", "environment", "blas_thread_counts", "apply_in_worker"]

_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def thread_env(n_threads: int) -> dict[str, str]:
    """Variables that cap BLAS, OpenMP, Numba and XLA at ``n_threads`` threads."""
    env = {var: str(n_threads) for var in _THREAD_VARS}
    if n_threads == 1:
        # XLA's CPU client otherwise starts one Eigen thread per core.
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        existing = os.environ.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{existing} {flags}".strip()
    return env


# An MPI launcher's variables: a worker that inherited them and imported mpi4py would
# join the job as a second copy of its coordinator's rank (seen: a segfault in Open
# MPI's shared-memory transport). Workers are not MPI processes.
_LAUNCHER_PREFIXES = ("OMPI_", "PMIX_", "PRTE_", "PMI_", "I_MPI_")


@contextlib.contextmanager
def environment(extra: dict[str, str]) -> Iterator[None]:
    """Temporarily set variables, and hide an MPI launcher's; children started inside
    inherit exactly that.

    ``spawn`` children get the parent's environment at start, so the coordinator sets
    the worker's pin just around ``Process.start`` without touching its own, already
    loaded, libraries.
    """
    launcher_vars = [key for key in os.environ if key.startswith(_LAUNCHER_PREFIXES)]
    saved = {key: os.environ.get(key) for key in [*extra, *launcher_vars]}
    for key in launcher_vars:
        del os.environ[key]
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def apply_in_worker(n_threads: int) -> None:
    """Second line of defence inside the worker, after imports: cap what is loaded."""
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(n_threads)


def blas_thread_counts() -> list[tuple[str, int]]:
    """(library path, threads) of every thread pool loaded in this process."""
    from threadpoolctl import threadpool_info

    return [(info["filepath"], info["num_threads"]) for info in threadpool_info()]
