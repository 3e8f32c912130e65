"""``python -m benchmarks.compare``: fastdist against its peers on W1 and W2, side by side.

Every contender runs in a fresh process (no library state or thread pool carries over),
rounds are interleaved (A B C ... A B C ...), each timed after the same warm-up steps
(``--warmup``, fastdist included: its history gives the time of the later steps), and
the median of the rounds is reported. The GEMM peak that "% of peak" refers to is
measured in the same run, and the JSON records the machine (CPU model and SIMD flags,
cores, BLAS and its thread pools, library versions, commit, date: see
``benchmarks.machine``). Progress goes to stderr as it runs. Peers live in the source
tree (``benchmarks/peers``), so run it from a checkout:

    python -m benchmarks.compare --memory --json docs/bench.json --plot docs/scaling.png
    python -m benchmarks.report docs/bench.json --readme README.md
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import peak
from benchmarks.child_env import ROOT, child_env, run_python
from benchmarks.warmup import rate_after

__all__ = ["main"]

# Workload -> (layer sizes, batch per worker): the experiment presets of the same name.
WORKLOADS = {"w1": ((784, 1024, 1024, 10), 256), "w2": ((64, 256, 256, 10), 64)}
W1_SIZES = WORKLOADS["w1"][0]


def say(message: str) -> None:
    """Progress, on stderr (stdout carries the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _json_from(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])


def _python(args: list[str], threads: int | None = None, timeout: float = 900) -> dict:
    """The JSON object ``python args`` prints; ``threads`` None: the child unpinned."""
    return _json_from(run_python(args, threads, timeout))


def gemm_peak() -> dict:
    """NumPy float32 2048^3 matmul GFLOP/s with 1 thread and with every usable core
    (and with 2 threads where that is neither): :func:`benchmarks.peak.gemm_peak`."""
    cores = peak.usable_cpus()
    out = {"1_thread": peak.gemm_peak(1), "all_threads": peak.gemm_peak(cores)}
    if cores > 2:
        out["2_threads"] = peak.gemm_peak(2)
    return out


def _cores(name: str, workers: int) -> int:
    """The cores a contender computes on: one per worker, or all (JAX in one process),
    or one thread (PyTorch in one process)."""
    if name.startswith("JAX 1 process"):
        return peak.usable_cpus()
    return 1 if name.startswith("PyTorch 1 process") else workers


def useful_flops(results: dict) -> None:
    """Each training row's fraction of the GEMM peak for the cores it uses, and the
    issue's target for its workload where it has one (:data:`benchmarks.peak.TARGETS`)."""
    g = results["gemm_peak"]
    peaks = {1: g["1_thread"]["gflops"], peak.usable_cpus(): g["all_threads"]["gflops"]}
    if "2_threads" in g:
        peaks[2] = g["2_threads"]["gflops"]
    for row in results["training"]:
        cores = _cores(row["name"], row["workers"])
        fraction = row["gflops"] / peaks[cores] if peaks.get(cores) else None
        row.update(cores=cores, peak_gflops=peaks.get(cores), fraction_of_peak=fraction)
        row.update(peak.verdict(row["workload"], fraction))


def _fastdist(
    workload: str, workers: int, steps: int, backend: str = "numba", warmup: int = 0
) -> dict:
    """One fastdist run of ``warmup + steps`` steps; samples/s over the last ``steps``.

    The peers time ``steps`` steps after ``warmup`` untimed ones; fastdist's own
    samples/s counts every step from the first, so the same warm-up is taken out here:
    the run records its history every ``warmup`` steps and the rate is that of the
    windows after the first. Start-up (spawn to the first finished step) is reported
    on its own."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "fastdist", f"experiment={workload}"]
        argv += [f"workers={workers}", f"steps={warmup + steps}", f"backend={backend}"]
        argv += ["diagnostics=false", f"hydra.run.dir={tmp}"]
        if warmup:
            argv.append(f"history.every={warmup}")
        subprocess.run(
            argv,
            check=True,
            capture_output=True,
            text=True,
            env=child_env(None),
            cwd=ROOT,
            timeout=900,
        )
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
        rate = metrics["samples_per_second"]
        if warmup:
            rate = _rate_after(Path(tmp) / "history.csv", warmup)
    return {"samples_per_second": rate, "startup_seconds": metrics["startup_seconds"]}


def _rate_after(history_csv: Path, warmup: int) -> float:
    with history_csv.open() as fh:
        return rate_after(csv.DictReader(fh), warmup)


def _peer(name: str, workload: str, workers: int, steps: int, warmup: int) -> dict:
    sizes, batch = WORKLOADS[workload]
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
            "--batch",
            str(batch),
            "--sizes",
            ",".join(map(str, sizes)),
        ]
    )


PEER_LABELS = {
    "torch_ddp": "PyTorch DDP gloo, 1 thread/process",
    "torch_single": "PyTorch 1 process, 1 thread",
    "jax_single": "JAX 1 process, all cores (batch x workers)",
    "naive_pool": "naive pool: pickled weights/grads",
}
# Which worker counts each contender runs per workload (W2 is the sync-bound one: 2).
_COUNTS = {
    "w1": {"numba": (1, 2), "jax": (2,), "torch_ddp": (1, 2), "torch_single": (1,)},
    "w2": {"numba": (2,), "jax": (), "torch_ddp": (2,), "torch_single": ()},
}
_COUNTS["w1"].update(jax_single=(1, 2), naive_pool=(1, 2))
_COUNTS["w2"].update(jax_single=(2,), naive_pool=(2,))


def contenders(
    workload: str, steps: int, warmup: int, peers: bool, jax: bool = True
) -> list[tuple[str, int, object]]:
    """(label, workers, thunk) of everything to time; peers only where installed."""
    counts = _COUNTS[workload]
    runs = [
        ("fastdist grad_avg (numba)", w, lambda w=w: _fastdist(workload, w, steps, warmup=warmup))
        for w in counts["numba"]
    ]
    if jax and importlib.util.find_spec("jax") is not None:
        runs += [
            (
                "fastdist grad_avg (jax)",
                w,
                lambda w=w: _fastdist(workload, w, steps, "jax", warmup=warmup),
            )
            for w in counts["jax"]
        ]
    if not peers:
        return runs
    sys.path.insert(0, str(ROOT))
    from benchmarks.peers import available_peers

    available = available_peers()
    for name, label in PEER_LABELS.items():
        if name in available:
            for w in counts[name]:
                runs.append((label, w, lambda n=name, w=w: _peer(n, workload, w, steps, warmup)))
    return runs


def training(workload: str, args) -> list[dict]:
    """Interleaved rounds of every contender on ``workload``; medians and ratios."""
    sizes, _ = WORKLOADS[workload]
    from fastdist.models.mlp import MLP

    flops = MLP(sizes).flops_per_sample()
    steps = args.steps if workload == "w1" else args.w2_steps
    runs = contenders(workload, steps, args.warmup, peers=not args.no_peers, jax=not args.no_jax)
    if args.only:
        wanted = [w.strip() for w in args.only.split("|")]
        runs = [r for r in runs if any(w in f"{r[0]} {r[1]}w" for w in wanted)]
    samples: dict[int, list[dict]] = {i: [] for i in range(len(runs))}
    for r in range(args.rounds):
        for i, (name, workers, thunk) in enumerate(runs):
            say(f"{workload.upper()} round {r + 1}/{args.rounds}: {name}, {workers} worker(s)")
            samples[i].append(thunk())
            say(f"    {samples[i][-1]['samples_per_second']:,.0f} samples/s")
    rows = []
    for i, (name, workers, _) in enumerate(runs):
        rate = statistics.median(s["samples_per_second"] for s in samples[i])
        row = {
            "workload": workload,
            "name": name,
            "workers": workers,
            "samples_per_second": rate,
            "rounds": [s["samples_per_second"] for s in samples[i]],
            "gflops": rate * flops / 1e9,
        }
        if "startup_seconds" in samples[i][0]:
            row["startup_seconds"] = statistics.median(s["startup_seconds"] for s in samples[i])
        rows.append(row)
    ours = next((r for r in rows if r["name"].startswith("fastdist") and r["workers"] == 2), None)
    for row in rows:
        if ours is not None:
            row["fastdist_2w_speedup"] = ours["samples_per_second"] / row["samples_per_second"]
    return rows


def allreduce(rounds: int, peers: bool) -> list[dict]:
    rows = []
    for n_floats in (1_000_000, 10_000_000):
        samples: dict[str, list[float]] = {}
        for r in range(rounds):
            say(f"allreduce of {n_floats:,} floats, round {r + 1}/{rounds}")
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
        say(f"memory: {gigabytes:.0f} GB dataset, {workers} worker(s), sampling PSS every 0.2 s")
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
                env=child_env(None),
                cwd=ROOT,
            )
            peak = training_peak = preparing_peak = 0
            while proc.poll() is None:
                tree = _tree(proc.pid)
                total = sum(_pss_kb(p) for p in tree)
                peak = max(peak, total)
                running = sum(1 for p in tree if _is_worker(p))
                if running == workers:
                    training_peak = max(training_peak, total)
                elif running == 0:  # no worker yet: the coordinator preparing the data
                    preparing_peak = max(preparing_peak, total)
                time.sleep(0.2)
        rows.append(
            {
                "workers": workers,
                "dataset_gb": n_rows * 784 * 4 / 2**30,
                "peak_pss_gb": peak / 2**20,
                "preparing_pss_gb": preparing_peak / 2**20,
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
    for row in (r for r in results["training"] if r.get("workload", "w1") == "w1"):
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
    parser.add_argument("--steps", type=int, default=40, help="timed W1 steps per run")
    parser.add_argument("--w2-steps", type=int, default=400, help="timed W2 steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (every contender)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--workloads", default="w1,w2", help="comma-separated: w1,w2")
    parser.add_argument("--no-peers", action="store_true", help="time fastdist only")
    parser.add_argument("--no-jax", action="store_true", help="skip fastdist backend=jax")
    parser.add_argument(
        "--only", help="|-separated substrings of '<label> <N>w' to time (others skipped)"
    )
    parser.add_argument("--no-allreduce", action="store_true", help="skip the allreduce table")
    parser.add_argument("--memory", action="store_true", help="also measure PSS on 1 GB")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("--plot", help="write the scaling plot (PNG) here")
    parser.add_argument("--w3", action="store_true", help="also run W3 (CNN) against its peers")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from benchmarks import machine, report

    say("describing the machine (CPU, BLAS thread pools, versions, commit)")
    results: dict = {
        "machine": machine.describe(),
        "command": sys.argv[:] if argv is None else argv,
    }
    say(machine.summary(results["machine"]))
    say("GEMM peak: NumPy float32 2048^3 matmul, 1 thread and all threads")
    results["gemm_peak"] = gemm_peak()
    results["training"] = []
    for workload in args.workloads.split(","):
        results["training"] += training(workload.strip(), args)
    useful_flops(results)
    if not args.no_allreduce:
        results["allreduce"] = allreduce(args.rounds, peers=not args.no_peers)
    if args.memory:
        results["memory"] = memory()
    if args.w3:
        from benchmarks import w3_ratios

        say("W3: the MNIST CNN, fastdist against its peers")
        results["w3"] = w3_ratios.measure(args.rounds, log=lambda line: say(f"    W3 {line}"))
    results["ratios"] = report.ratios(results)
    print(report.render(results))
    if args.w3:
        print("\n" + w3_ratios.table(results["w3"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        say(f"wrote {args.json}")
    if args.plot:
        _plot(results, args.plot)


if __name__ == "__main__":
    main()
