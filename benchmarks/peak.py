"""The machine's GEMM peak, measured in the benchmark's own run, and each contender's
useful FLOP/s as a fraction of it.

The peak is NumPy's float32 ``n x n x n`` matmul (OpenBLAS sgemm), best of a few, in a
fresh child whose math libraries are pinned to the thread count of the contender it is
compared with (1 thread, 2 threads, all usable cores). The child also times the same
product through SciPy's BLAS (``scipy.linalg.blas.sgemm``: the library Numba's
``np.dot`` calls inside fastdist's kernels, which may be another OpenBLAS build) and
through ``torch.mm`` where PyTorch is installed (its own MKL/oneDNN GEMM, which the
PyTorch peers use); both are reported, the peak is NumPy's.

Useful FLOP/s is samples/s x the model's ``flops_per_sample()`` (6 x the forward
multiply-adds), the same formula for fastdist and every peer, since they train the same
net; a contender on ``k`` cores is held to the peak measured with ``k`` threads.
Stdlib only at import (the benchmarks that import it pin threads before NumPy loads).
"""

from __future__ import annotations

import json
import os
import statistics

from benchmarks.child_env import run_python

__all__ = ["GEMM_N", "TARGETS", "flops_per_sample", "gemm_peak", "median_peaks", "useful_row"]
__all__ += ["usable_cpus", "verdict"]

GEMM_N = 2048
# Fraction of the GEMM peak each workload should reach (issue "Convolutions at oneDNN
# speed", item 3): on a CPU where DDP itself runs near peak, the honest target.
TARGETS = {"w1": 0.90, "w3": 0.70}

_GEMMS = ("gflops", "scipy_sgemm_gflops", "torch_mm_gflops")
_GEMM = """
import json, sys, time, numpy as np
from threadpoolctl import threadpool_info
n, repeats = int(sys.argv[1]), int(sys.argv[2])
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
c = np.empty((n, n), np.float32)

def best(fn):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9

out = {"n": n, "gflops": best(lambda: np.dot(a, b, out=c))}
try:  # SciPy's BLAS, as Numba's np.dot calls it; F-order views: no copies
    from scipy.linalg.blas import sgemm
    at, bt = a.T, b.T
    out["scipy_sgemm_gflops"] = best(lambda: sgemm(1.0, bt, at))
except ImportError:
    out["scipy_sgemm_gflops"] = None
try:  # PyTorch's own GEMM (MKL / oneDNN), which its peers use
    import torch
    ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
    out["torch_mm_gflops"] = best(lambda: torch.mm(ta, tb, out=tc))
    out["torch_threads"] = torch.get_num_threads()
except ImportError:
    out["torch_mm_gflops"] = None
pools = [i for i in threadpool_info() if i["user_api"] == "blas"]
out["threads"] = max((i["num_threads"] for i in pools), default=0)
out["blas"] = sorted({f"{i['internal_api']} {i['version']} ({i.get('architecture')})"
                      for i in pools})
print(json.dumps(out))
"""


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gemm_peak(threads: int, n: int = GEMM_N, repeats: int = 7) -> dict:
    """GFLOP/s of NumPy's float32 ``n``^3 matmul (best of ``repeats``) in a fresh child
    pinned to ``threads`` threads."""
    out = run_python(["-c", _GEMM, str(n), str(repeats)], threads)
    return json.loads(out[out.index("{") : out.rindex("}") + 1])


def median_peaks(rounds: list[dict[int, dict]]) -> dict[int, dict]:
    """Per thread count, the round whose NumPy GFLOP/s is the median (its whole record)."""
    out: dict[int, dict] = {}
    for threads in sorted({t for r in rounds for t in r}):
        runs = sorted((r[threads] for r in rounds if threads in r), key=lambda g: g["gflops"])
        if runs:
            median = statistics.median_low([g["gflops"] for g in runs])
            out[threads] = next(g for g in runs if g["gflops"] == median)
    return out


def flops_per_sample(workload: str) -> int:
    """The FLOP per training sample of ``experiment=<workload>``'s model, built from the
    experiment's own config (the net every contender trains)."""
    import fastdist
    from fastdist.run.records import build_model

    cfg = fastdist.compose([f"experiment={workload}"])
    shape = cfg.dataset.get("sample_shape") or [cfg.dataset.n_features]
    model = build_model(cfg.model, tuple(int(d) for d in shape), int(cfg.dataset.n_classes))
    return int(model.flops_per_sample())


def useful_row(
    workload: str, name: str, cores: int, rate: float, flops: int, peaks: dict[int, dict]
) -> dict:
    """A contender's useful GFLOP/s, the peak for its cores, the fraction and the target."""
    gflops = rate * flops / 1e9
    measured = peaks.get(cores) or {}
    peak = measured.get("gflops")
    fraction = gflops / peak if peak else None
    best = max((measured.get(k) or 0.0 for k in _GEMMS), default=0.0)
    return {
        "workload": workload,
        "contender": name,
        "cores": cores,
        "samples_per_second": rate,
        "flops_per_sample": flops,
        "useful_gflops": gflops,
        "peak_gflops": peak,
        "fraction_of_peak": fraction,
        # over the fastest of the three GEMMs (NumPy's, SciPy's, PyTorch's) on these cores
        "fraction_of_best_gemm": gflops / best if best else None,
        **verdict(workload, fraction),
    }


def verdict(workload: str, fraction: float | None) -> dict:
    """``target`` (">= 90%", None where the workload has none) and ``holds``."""
    target = TARGETS.get(workload)
    return {
        "target": None if target is None else f">= {target:.0%}",
        "holds": None if fraction is None or target is None else fraction >= target,
    }
