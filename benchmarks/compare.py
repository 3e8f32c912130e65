"""``python -m benchmarks.compare``: fastdist against its peers on workload W1, side by side.

Every contender runs in a fresh process (no library state or thread pool carries over),
rounds are interleaved (A B C ... A B C ...) after warm-up steps, and the median of the
rounds is reported. The GEMM peak that "% of peak" refers to is measured in the same
run. Peers live in the source tree (``benchmarks/peers``), so run it from a checkout:

    python -m benchmarks.compare --json bench.json --plot scaling.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]  # the source checkout (benchmarks/ lives here)
W1_SIZES = (784, 1024, 1024, 10)
_PIN_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    for var in _PIN_VARS:
        env.pop(var, None)
        if threads is not None:
            env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _json_from(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])


def _python(args: list[str], threads: int | None = None, timeout: float = 900) -> dict:
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=_env(threads),
        cwd=ROOT,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{' '.join(args[:3])} failed: {tail}")
    return _json_from(proc.stdout)


_GEMM = """
import json, time, numpy as np
from threadpoolctl import threadpool_info
n = 2048
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
c = np.empty((n, n), np.float32)
np.dot(a, b, out=c)
best = min(
    (lambda t: (np.dot(a, b, out=c), time.perf_counter() - t)[1])(time.perf_counter())
    for _ in range(7)
)
threads = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=0)
print(json.dumps({"gflops": 2 * n**3 / best / 1e9, "threads": threads}))
"""


def gemm_peak() -> dict:
    """NumPy float32 2048^3 matmul GFLOP/s with 1 thread and with every core."""
    return {
        "1_thread": _python(["-c", _GEMM], threads=1),
        "all_threads": _python(["-c", _GEMM], threads=os.cpu_count()),
    }


def _fastdist_w1(workers: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fastdist",
                "experiment=w1",
                f"workers={workers}",
                f"steps={steps}",
                "diagnostics=false",
                f"hydra.run.dir={tmp}",
            ],
            check=True,
            capture_output=True,
            text=True,
            env=_env(None),
            cwd=ROOT,
            timeout=900,
        )
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
    return {
        "samples_per_second": metrics["samples_per_second"],
        "startup_seconds": metrics["startup_seconds"],
    }


def _peer(name: str, workers: int, steps: int, warmup: int) -> dict:
    return _python(
        [
            "-m",
            f"benchmarks.peers.{name}",
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
            "--workers",
            str(workers),
        ]
    )


def contenders(steps: int, warmup: int, peers: bool) -> list[tuple[str, int, object]]:
    """(label, workers, thunk) of everything to time; peers only where installed."""
    runs = [
        ("fastdist grad_avg (numba)", 1, lambda: _fastdist_w1(1, steps)),
        ("fastdist grad_avg (numba)", 2, lambda: _fastdist_w1(2, steps)),
    ]
    if not peers:
        return runs
    sys.path.insert(0, str(ROOT))
    from benchmarks.peers import available_peers

    available = available_peers()
    labels = {
        "torch_ddp": ("PyTorch DDP gloo, 1 thread/process", (1, 2)),
        "torch_single": ("PyTorch 1 process, 1 thread", (1,)),
        "jax_single": ("JAX 1 process, all cores (batch 256 x workers)", (1, 2)),
        "naive_pool": ("naive pool: pickled weights/grads", (1, 2)),
    }
    for name, (label, worker_counts) in labels.items():
        if name in available:
            for w in worker_counts:
                runs.append((label, w, lambda n=name, w=w: _peer(n, w, steps, warmup)))
    return runs


def allreduce(rounds: int, peers: bool) -> list[dict]:
    rows = []
    for n_floats in (1_000_000, 10_000_000):
        samples: dict[str, list[float]] = {}
        for _ in range(rounds):
            ours = _python(["-m", "benchmarks.fastdist_allreduce", "--n-floats", str(n_floats)])
            samples.setdefault("fastdist shared memory", []).append(ours["median_seconds"])
            if peers:
                try:
                    theirs = _python(
                        [
                            "-m",
                            "benchmarks.peers.allreduce_peers",
                            "--n-floats",
                            str(n_floats),
                            "--world",
                            "2",
                            "--repeats",
                            "20",
                            "--impl",
                            "both",
                        ]
                    )
                except RuntimeError:
                    theirs = {}
                for key, label in (("gloo", "torch.distributed gloo"), ("mpi", "MPI Allreduce")):
                    if theirs.get(key):
                        samples.setdefault(label, []).append(theirs[key]["median_seconds"])
        ours_s = statistics.median(samples["fastdist shared memory"])
        for label, values in samples.items():
            median = statistics.median(values)
            rows.append(
                {
                    "n_floats": n_floats,
                    "impl": label,
                    "median_ms": median * 1e3,
                    "speedup_of_fastdist": median / ours_s,
                }
            )
    return rows


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) in pids:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return pids


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"spawn_main" in fh.read()
    except OSError:
        return False


def memory(gigabytes: float = 1.0) -> list[dict]:
    """Peak summed PSS of coordinator + workers while training on a dataset of the
    given size: the dataset should count once, whatever the number of workers."""
    rows = []
    n_rows = int(gigabytes * 2**30 / (784 * 4))
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fastdist",
                    "experiment=w1",
                    f"workers={workers}",
                    f"dataset.n_train={n_rows}",
                    "steps=30",
                    "diagnostics=false",
                    f"hydra.run.dir={tmp}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=_env(None),
                cwd=ROOT,
            )
            peak = training_peak = 0
            while proc.poll() is None:
                tree = _tree(proc.pid)
                total = sum(_pss_kb(p) for p in tree)
                peak = max(peak, total)
                if sum(1 for p in tree if _is_worker(p)) == workers:
                    training_peak = max(training_peak, total)
                time.sleep(0.2)
        rows.append(
            {
                "workers": workers,
                "dataset_gb": n_rows * 784 * 4 / 2**30,
                "peak_pss_gb": peak / 2**20,
                "training_pss_gb": training_peak / 2**20,
            }
        )
    return rows


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    by_label: dict[str, list[tuple[int, float]]] = {}
    for row in results["training"]:
        by_label.setdefault(row["name"], []).append((row["workers"], row["samples_per_second"]))
    for label, points in by_label.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xticks([1, 2])
    ax.set_xlabel("workers (processes; JAX: batch multiplier)")
    ax.set_ylabel("W1 samples/s")
    ax.set_title("W1 (784-1024-1024-10, batch 256/worker)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (peers)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--no-peers", action="store_true", help="time fastdist only")
    parser.add_argument("--memory", action="store_true", help="also measure PSS on 1 GB")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("--plot", help="write the scaling plot (PNG) here")
    parser.add_argument("--w3", action="store_true", help="also run W3 (CNN) against its peers")
    args = parser.parse_args(argv)

    from fastdist.models.mlp import MLP

    flops = MLP(W1_SIZES).flops_per_sample()
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    results["gemm_peak"] = gemm_peak()
    peak = results["gemm_peak"]["all_threads"]["gflops"]

    runs = contenders(args.steps, args.warmup, peers=not args.no_peers)
    samples: dict[int, list[dict]] = {i: [] for i in range(len(runs))}
    for _ in range(args.rounds):
        for i, (_, _, thunk) in enumerate(runs):
            samples[i].append(thunk())
    training = []
    for i, (name, workers, _) in enumerate(runs):
        rate = statistics.median(s["samples_per_second"] for s in samples[i])
        row = {
            "name": name,
            "workers": workers,
            "samples_per_second": rate,
            "gflops": rate * flops / 1e9,
            "percent_of_gemm_peak": 100 * rate * flops / 1e9 / peak,
        }
        if "startup_seconds" in samples[i][0]:
            row["startup_seconds"] = statistics.median(s["startup_seconds"] for s in samples[i])
        training.append(row)
    ours = next(r for r in training if r["name"].startswith("fastdist") and r["workers"] == 2)
    for row in training:
        row["fastdist_2w_speedup"] = ours["samples_per_second"] / row["samples_per_second"]
    results["training"] = training
    results["allreduce"] = allreduce(args.rounds, peers=not args.no_peers)
    if args.memory:
        results["memory"] = memory()

    g = results["gemm_peak"]
    print(
        f"GEMM peak (NumPy float32 2048^3): {g['1_thread']['gflops']:.0f} GFLOP/s 1 thread, "
        f"{peak:.0f} GFLOP/s {g['all_threads']['threads']} threads"
    )
    print("\n| W1 training | workers | samples/s | fastdist 2w is x faster | % of GEMM peak |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in training:
        print(
            f"| {r['name']} | {r['workers']} | {r['samples_per_second']:,.0f} "
            f"| {r['fastdist_2w_speedup']:.2f} | {r['percent_of_gemm_peak']:.0f}% |"
        )
    print(
        f"\nfastdist pool start-up to first finished step (warm cache, 2 workers): "
        f"{ours.get('startup_seconds', float('nan')):.2f} s"
    )
    print("\n| allreduce (average, 2 processes) | floats | median ms | fastdist is x faster |")
    print("| --- | ---: | ---: | ---: |")
    for r in results["allreduce"]:
        print(
            f"| {r['impl']} | {r['n_floats']:,} | {r['median_ms']:.2f} "
            f"| {r['speedup_of_fastdist']:.2f} |"
        )
    if args.memory:
        print(
            "\n| memory, 1 GB dataset | workers | summed PSS while training (GB) "
            "| peak incl. data preparation (GB) |"
        )
        print("| --- | ---: | ---: | ---: |")
        for r in results["memory"]:
            print(
                f"| coordinator + workers | {r['workers']} | {r['training_pss_gb']:.2f} "
                f"| {r['peak_pss_gb']:.2f} |"
            )
    if args.w3:
        from benchmarks import w3_ratios

        results["w3"] = w3_ratios.measure(args.rounds, log=lambda _: None)
        print("\n" + w3_ratios.table(results["w3"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        _plot(results, args.plot)


if __name__ == "__main__":
    main()
