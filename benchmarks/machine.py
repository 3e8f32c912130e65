"""What machine and software a benchmark number belongs to.

``describe()`` returns the CPU model and its SIMD flags, the cores this process may
use, memory, the BLAS libraries NumPy and SciPy load, with their kernels and thread
pools (threadpoolctl, read in a fresh interpreter so nothing this process set leaks
in), the versions of Python and the numeric libraries, the git commit (and whether the
tree was dirty) and the UTC date. Every field is read, never assumed: a missing one is ``None``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["describe", "summary"]

ROOT = Path(__file__).resolve().parents[1]
# The flags that decide GEMM speed (the full list is long and says little more).
_SIMD = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
_SIMD += ("avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni", "neon", "asimd", "sve")
_PACKAGES = ("numpy", "scipy", "numba", "llvmlite", "jax", "jaxlib", "torch", "mpi4py")
_PACKAGES += ("threadpoolctl", "hydra-core")


def _cpuinfo() -> dict:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    return {
        "model": fields.get("model name") or platform.processor() or None,
        "simd_flags": [f for f in _SIMD if f in flags],
    }


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


# NumPy's BLAS, and SciPy's: Numba's np.dot (fastdist's kernels) calls SciPy's BLAS.
_POOLS = """
import contextlib, json, numpy
with contextlib.suppress(ImportError):
    import scipy.linalg
from threadpoolctl import threadpool_info
print(json.dumps([{k: i.get(k) for k in ("user_api", "internal_api", "version",
    "num_threads", "architecture", "filepath")} for i in threadpool_info()]))
"""


def _thread_pools() -> list[dict] | None:
    try:
        out = subprocess.run(
            [sys.executable, "-c", _POOLS], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        return json.loads(out)
    except (subprocess.SubprocessError, OSError, ValueError):
        return None


def _versions() -> dict:
    found = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=10, check=True
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None


def describe() -> dict:
    cpu = _cpuinfo()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_model": cpu["model"],
        "simd_flags": cpu["simd_flags"],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "blas_thread_pools": _thread_pools(),
        "versions": _versions(),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _key(pool: dict) -> tuple:
    return (pool["internal_api"], pool["version"], pool.get("architecture"))


def summary(machine: dict) -> str:
    """One line naming the machine, for tables and the README."""
    pools = machine.get("blas_thread_pools") or []
    blas = ", ".join(
        sorted(
            f"{p['internal_api']} {p['version']}"
            + (f" ({p['architecture']} kernels)" if p.get("architecture") else "")
            for p in {_key(p): p for p in pools if p["user_api"] == "blas"}.values()
        )
    )
    v = machine.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("numpy", "numba", "jax", "torch") if v.get(k))
    commit = (machine.get("commit") or "unknown")[:10] + ("+dirty" if machine.get("dirty") else "")
    return (
        f"{machine.get('cpu_model')} ({machine.get('usable_cpus')} of "
        f"{machine.get('logical_cpus')} CPUs usable; {' '.join(machine.get('simd_flags', []))}), "
        f"{machine.get('memory_gib')} GiB, {blas or 'BLAS unknown'}; Python "
        f"{v.get('python')}, {libs}; commit {commit}, {machine.get('date_utc')}"
    )


if __name__ == "__main__":
    info = describe()
    print(json.dumps(info, indent=2))
    print(summary(info))
