"""Robust aggregation and PowerSGD speed targets, measured side by side in one run.

    .venv/bin/python -m benchmarks.robust_ratios [--json PATH] [--repeats N] [--quick]

1. The coordinate-wise median and trimmed mean (trim=1 with 4 workers, trim=0 with 2)
   of 10M floats across 2 and 4 worker processes cost <= 3x today's mean. Each worker
   reduces its slice [lo, hi) = slice_bounds(P, N, rank) of an (N, P) float32 arena
   array into ``out`` and then waits on the workers' barrier, as a sync does: the mean
   is ``mean_rows_into(rows, out, lo, hi)``, a rule is ``AggregatorWorker.reduce``.
2. Krum (f=0: Krum needs n >= 2f + 3) over 4 workers' rows of W1's size (MLP
   784-1024-1024-10, P = 1,863,690) costs <= 2x the mean of the same rows.
3. PowerSGD rank 4 on W1: bytes per sync (``Compression.bytes_per_vector``) against
   float32's 4P, checked against the factor computed here from the layer shapes; and
   its training time against grad_avg's, from real jobs (W1, 2 workers) alternated,
   with and without error feedback (no target: reported).

Parts 1 and 2 run in one persistent pool per (P, workers): the coordinator writes the
index of the rule to run into the arena and releases the workers through a control
barrier it is a party of, so the rules alternate call by call (the order rotating each
round) and every ratio compares calls made next to each other. Reported: the medians of
the coordinator's wall time per call (start to the last worker's arrival), the ratio of
those medians, the median of the per-round ratios ("paired"), and the slowest worker's
own time per call (without the control barrier's wake-ups). Each rule's result is then
checked bitwise against the same rule computed in one process.

When there are more workers than usable cores the workers take turns on them: the times
then include that sharing (the note says so); the ratio still compares both rules
under the same sharing, but it is not the dedicated-core number.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from multiprocessing.connection import wait

from benchmarks.child_env import pin_this_process

pin_this_process()  # before NumPy loads its BLAS

import numpy as np  # noqa: E402

import fastdist  # noqa: E402
from benchmarks.harness import W1, report  # noqa: E402
from benchmarks.machine import describe, summary  # noqa: E402
from fastdist.combiners.aggregators import (  # noqa: E402
    Aggregate,
    AggregatorWorker,
    aggregate_rows,
    krum,
    median,
    trimmed_mean,
)
from fastdist.combiners.compression import powersgd, powersgd_matrices  # noqa: E402
from fastdist.engine.allreduce import mean_rows_into, slice_bounds  # noqa: E402
from fastdist.engine.barrier import SpinBarrier, barrier_shape  # noqa: E402
from fastdist.engine.pool import WorkerPool  # noqa: E402
from fastdist.engine.shm import SEGMENT_PREFIX, SharedArena, list_segments  # noqa: E402
from fastdist.engine.signals import deferred_signals  # noqa: E402
from fastdist.models.mlp import MLP  # noqa: E402

W1_PARAMS = MLP(W1["sizes"]).layout.size  # 1,863,690
BIG = 10_000_000
QUICK_SIZE = 262_144  # --quick: every pool's P
RANK = 4  # PowerSGD's rank
MEAN = "mean"  # the baseline's name: today's mean_rows_into path


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ------------------------------------------------------------------ the pool


def _array_name(index: int, name: str) -> str:
    return f"rule{index}.{name}"


def _rule_worker(ctx, spec, rules: tuple[Aggregate | None, ...]) -> None:
    """Run rule ``mode`` on this worker's slice each time the coordinator says so."""
    arena = SharedArena.attach(spec)
    # Sleep-wait on the control barrier (spin_seconds=0): an idle worker never takes a
    # core from the others; the wake-up latency is the same for every rule.
    control = SpinBarrier(arena["control"], ctx.rank, spin_seconds=0.0)
    rows, out, mode, stop, seconds = (arena[k] for k in ("rows", "out", "mode", "stop", "seconds"))
    lo, hi = slice_bounds(out.shape[0], rows.shape[0], ctx.rank)
    members = np.arange(rows.shape[0], dtype=np.int64)
    reducers = []
    for i, agg in enumerate(rules):
        if agg is None:
            reducers.append(None)
            continue
        arrays = {name: arena[_array_name(i, name)] for name in agg.arrays(*rows.shape)}
        reducers.append(AggregatorWorker(agg, arrays, lo, hi, ctx.barrier))
    while True:
        control.wait()
        if stop[0]:
            break
        start = time.perf_counter()
        reducer = reducers[int(mode[0])]
        if reducer is None:  # today's sync: the mean of the slice, then the barrier
            mean_rows_into(rows, out, lo, hi)
        else:
            reducer.reduce(rows, members, out)
        ctx.barrier.wait()
        seconds[ctx.rank] = time.perf_counter() - start
        control.wait()
    del rows, out, mode, stop, seconds, control, reducers
    arena.close()
    ctx.send("done")


class RulePool:
    """``workers`` processes over rows (workers, n_floats) of random float32 values,
    each able to run any of ``rules`` (name -> Aggregate, or None for today's mean);
    :meth:`run` runs one rule once on every worker and returns its times."""

    def __init__(self, n_floats: int, workers: int, rules: dict[str, Aggregate | None]) -> None:
        # Nothing is allocated before __enter__, so nothing can leak between the two.
        self.names = list(rules)
        self.rules = tuple(rules.values())
        self.workers, self.n_floats = workers, n_floats
        self._arrays = {
            "rows": ((workers, n_floats), np.float32),
            "out": ((n_floats,), np.float32),
            "control": (barrier_shape(workers + 1), np.int64),
            "mode": ((1,), np.int64),
            "stop": ((1,), np.int64),
            "seconds": ((workers,), np.float64),
        }
        for i, agg in enumerate(self.rules):
            if agg is not None:
                agg.check(workers)
                for name, shape_dtype in agg.arrays(workers, n_floats).items():
                    self._arrays[_array_name(i, name)] = shape_dtype
        self.arena = self.pool = self.control = self._watcher = None
        self._dead: str | None = None
        self._watching = threading.Event()

    def __enter__(self) -> RulePool:
        self.arena = SharedArena.create(self._arrays)
        pool = None
        try:
            rng = np.random.default_rng(0)
            rng.standard_normal(dtype=np.float32, out=self.arena["rows"])
            # The coordinator is one more party on this barrier; it sleeps while it
            # waits (spin_seconds=0), leaving the cores to the workers.
            self.control = SpinBarrier(self.arena["control"], self.workers, spin_seconds=0.0)
            pool = WorkerPool(self.workers, _rule_worker, (self.arena.spec, self.rules))
            pool.__enter__()
            self.pool = pool
            self._watching.set()
            self._watcher = threading.Thread(target=self._watch, name="rule-pool", daemon=True)
            self._watcher.start()
        except BaseException:
            with deferred_signals():
                try:
                    self._watching.clear()
                    if pool is not None:
                        pool.__exit__(None, None, None)  # stops and releases; idempotent
                finally:
                    self.arena.close()
            raise
        return self

    def _watch(self) -> None:
        """A worker that dies would leave the coordinator waiting on the control
        barrier forever: break it, so :meth:`run` raises."""
        procs = self.pool._procs  # same package's pool (as fastdist.engine.warm_pool does)
        while self._watching.is_set():
            if wait([p.sentinel for p in procs], timeout=0.2):
                if self._watching.is_set():
                    dead = [(r, p.exitcode) for r, p in enumerate(procs) if not p.is_alive()]
                    self._dead = ", ".join(f"worker {r} exited ({code})" for r, code in dead)
                    self.control.abort()
                return

    def _wait(self) -> None:
        try:
            self.control.wait()
        except threading.BrokenBarrierError:
            # The pool reads the worker's own error message, if it sent one.
            self._watching.clear()
            self.pool.join()
            raise RuntimeError(self._dead or "the control barrier was broken") from None

    def run(self, index: int) -> tuple[float, float]:
        """Rule ``index`` once: (coordinator's wall seconds, slowest worker's seconds)."""
        self.arena["mode"][0] = index
        start = time.perf_counter()
        self._wait()  # go
        self._wait()  # every worker has reduced its slice and passed the barrier
        return time.perf_counter() - start, float(self.arena["seconds"].max())

    def result(self) -> np.ndarray:
        return self.arena["out"]

    def rows(self) -> np.ndarray:
        return self.arena["rows"]

    def __exit__(self, exc_type, *rest) -> None:
        stopped = False
        try:
            self._watching.clear()
            if exc_type is None and self._dead is None:
                self.arena["stop"][0] = 1
                self.control.wait()
                self.pool.join()
                stopped = True
        finally:
            # A Ctrl-C or SIGTERM arriving now waits until both segments are gone.
            with deferred_signals():
                try:
                    if not stopped:
                        # Mid-round, the workers may be anywhere: break their waits
                        # instead of meeting them (WorkerPool stops whoever is left).
                        self.control.abort()
                    self._watcher.join(1.0)
                    self.pool.__exit__(exc_type, *rest)
                finally:
                    self.control = None
                    self.arena.close()


# ------------------------------------------------------------------ measuring


def _reference(agg: Aggregate | None, rows: np.ndarray) -> np.ndarray:
    out = np.empty(rows.shape[1], np.float32)
    if agg is None:
        mean_rows_into(rows, out, 0, rows.shape[1])
        return out
    return aggregate_rows(agg, rows)


def side_by_side(
    n_floats: int, workers: int, rules: dict[str, Aggregate], rounds: int, warmup: int = 2
) -> dict:
    """Today's mean and each of ``rules`` over the same rows, interleaved call by call
    (the order rotating each round); medians of ``rounds`` calls each."""
    all_rules = {MEAN: None, **rules}
    names = list(all_rules)
    wall = {n: [] for n in names}
    own = {n: [] for n in names}
    with RulePool(n_floats, workers, all_rules) as pool:
        for _ in range(warmup):  # compile / load the kernels, touch every page
            for i in range(len(names)):
                pool.run(i)
        for r in range(rounds):
            for k in range(len(names)):
                i = (r + k) % len(names)
                t_wall, t_own = pool.run(i)
                wall[names[i]].append(t_wall)
                own[names[i]].append(t_own)
        correct = {}
        for i, name in enumerate(names):
            pool.run(i)
            correct[name] = bool(
                np.array_equal(pool.result(), _reference(all_rules[name], pool.rows()))
            )
    for name, ok in correct.items():
        if not ok:
            print(f"WARNING: {name} over {workers} workers differs from the one-process result")
    cores = usable_cores()
    row: dict = {"n_floats": n_floats, "workers": workers, "usable_cores": cores, "rounds": rounds}
    if workers > cores:
        row["note"] = f"{workers} workers share {cores} cores (time-sliced)"
    for name in names:
        row[f"{name}_ms"] = statistics.median(wall[name]) * 1e3
        row[f"{name}_worker_ms"] = statistics.median(own[name]) * 1e3
    base, base_own = statistics.median(wall[MEAN]), statistics.median(own[MEAN])
    for name in rules:
        row[f"{name}_vs_mean"] = statistics.median(wall[name]) / base
        row[f"{name}_vs_mean_paired"] = statistics.median(
            a / b for a, b in zip(wall[name], wall[MEAN], strict=True)
        )
        row[f"{name}_vs_mean_worker"] = statistics.median(own[name]) / base_own
    row["bitwise_correct"] = correct
    row["all_ms"] = {n: [round(t * 1e3, 4) for t in wall[n]] for n in names}
    return row


def coordinate_ratios(n_floats: int, workers: int, rounds: int) -> dict:
    trim = 1 if workers >= 4 else 0
    row = side_by_side(
        n_floats, workers, {"median": median(), "trimmed_mean": trimmed_mean(trim=trim)}, rounds
    )
    row["trim"] = trim
    row["target"] = "median_vs_mean, trimmed_mean_vs_mean <= 3.0"
    return row


def krum_ratio(n_floats: int, rounds: int, workers: int = 4) -> dict:
    row = side_by_side(n_floats, workers, {"krum": krum(f=0)}, rounds)
    row["f"] = 0
    row["target"] = "krum_vs_mean <= 2.0"
    return row


def powersgd_bytes(rank: int = RANK) -> dict:
    """Bytes per sync of PowerSGD on W1 (what fastdist counts) against float32, and
    the same factor computed here from the layer shapes alone."""
    layout = MLP(W1["sizes"]).layout
    size = layout.size
    sent = powersgd(rank=rank).bytes_per_vector(size, powersgd_matrices(layout, rank))
    # Independently: each weight matrix (a, b) is sent as P (a, r) and Q (b, r) when
    # that is smaller, else as it is; every bias (b,) as float32.
    floats, params = 0, 0
    for a, b in zip(W1["sizes"][:-1], W1["sizes"][1:], strict=True):
        r = min(rank, a, b)
        floats += (a + b) * r if (a + b) * r < a * b else a * b
        floats += b
        params += a * b + b
    expected = 4 * floats
    return {
        "n_params": size,
        "n_params_from_shapes": params,
        "float32_bytes": 4 * size,
        "powersgd_bytes": sent,
        "expected_bytes": expected,
        "factor": 4 * size / sent,
        "expected_factor": 4 * params / expected,
        "matches": sent == expected and size == params,
        "target": "bytes_per_vector == the shapes' count",
    }


VARIANTS = {
    "grad_avg": [],
    "powersgd": ["compress=powersgd", f"compress.rank={RANK}", "compress.error_feedback=true"],
    "powersgd_no_ef": [
        "compress=powersgd",
        f"compress.rank={RANK}",
        "compress.error_feedback=false",
    ],
}


def _steady_step_seconds(history: list[dict]) -> float | None:
    """Seconds per step between the history's rows from step 10 on (history.every=10),
    so without the first steps (first calls of kernels not loaded before the clock
    starts); None when the run has fewer than two such rows."""
    rows = [r for r in history if r.get("step", 0) >= 10 and r.get("wall_time") is not None]
    if len(rows) < 2 or rows[-1]["step"] == rows[0]["step"]:
        return None
    return (rows[-1]["wall_time"] - rows[0]["wall_time"]) / (rows[-1]["step"] - rows[0]["step"])


def powersgd_training(repeats: int, steps: int, warmup: bool) -> dict:
    """W1, 2 workers, grad_avg against PowerSGD rank 4 (with and without error
    feedback): real jobs, alternated (order rotating), medians of train_seconds."""
    common = ["experiment=w1", "workers=2", f"steps={steps}", "quiet=true", "diagnostics=false"]
    names = list(VARIANTS)
    runs: dict = {n: [] for n in names}

    def job(name: str) -> dict:
        result = fastdist.train(fastdist.compose([*common, *VARIANTS[name]]))
        m = result.metrics
        want = "none" if name == "grad_avg" else "powersgd"
        if m["compress"] != want or (
            want == "powersgd" and m.get("compress_error_feedback") != (name == "powersgd")
        ):
            raise RuntimeError(
                f"{name}: the run reports compress={m['compress']}, "
                f"error_feedback={m.get('compress_error_feedback')}"
            )
        return {
            "train_seconds": m["train_seconds"],
            "sync_seconds": m.get("time_sync_seconds"),
            "comm_bytes_per_sync": m["comm_bytes_per_sync"],
            "steady_step_seconds": _steady_step_seconds(result.history),
        }

    if warmup:
        for name in names:
            job(name)
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            runs[name].append(job(name))
    out: dict = {"steps": steps, "workers": 2, "repeats": repeats}
    med = {}
    for name in names:
        secs = [x["train_seconds"] for x in runs[name]]
        med[name] = statistics.median(secs)
        out[f"{name}_train_seconds"] = med[name]
        out[f"{name}_step_ms"] = med[name] / steps * 1e3
        syncs = [x["sync_seconds"] for x in runs[name] if x["sync_seconds"] is not None]
        if syncs:
            out[f"{name}_sync_ms_per_step"] = statistics.median(syncs) / steps * 1e3
        out[f"{name}_comm_bytes_per_sync"] = runs[name][0]["comm_bytes_per_sync"]
        out[f"{name}_all_train_seconds"] = [round(s, 4) for s in secs]
        steady = [x["steady_step_seconds"] for x in runs[name]]
        if all(t is not None for t in steady):
            med[f"{name}_steady"] = statistics.median(steady)
            out[f"{name}_steady_step_ms"] = med[f"{name}_steady"] * 1e3
    for name in ("powersgd", "powersgd_no_ef"):
        out[f"{name}_vs_grad_avg_step_time"] = med[name] / med["grad_avg"]
        if f"{name}_steady" in med:
            out[f"{name}_vs_grad_avg_steady_step_time"] = (
                med[f"{name}_steady"] / med["grad_avg_steady"]
            )
    out["note"] = (
        "train_seconds starts after the workers' warm-up; the steady_* times leave out "
        "the first 10 steps, where kernels first called inside the run load"
    )
    out["target"] = "none (reported)"
    return out


# ------------------------------------------------------------------ reporting


def _table(results: dict) -> list[dict]:
    rows = []

    def add(label: str, ratio: float, limit: float | None, target: str = "", holds=None) -> None:
        if limit is not None:
            target, holds = f"<= {limit:g}", ratio <= limit
        rows.append({"result": label, "ratio": ratio, "target": target, "holds": holds})

    for key, row in results.items():
        if key.startswith("coordinate_"):
            tag = f"{row['n_floats']:,} floats, {row['workers']} workers"
            if "note" in row:
                tag += ", shared cores"
            add(f"median / mean ({tag})", row["median_vs_mean"], 3.0)
            add(
                f"trimmed_mean(trim={row['trim']}) / mean ({tag})",
                row["trimmed_mean_vs_mean"],
                3.0,
            )
        elif key.startswith("krum_"):
            tag = f"{row['n_floats']:,} floats, {row['workers']} workers"
            if "note" in row:
                tag += ", shared cores"
            add(f"krum(f=0) / mean ({tag})", row["krum_vs_mean"], 2.0)
    b = results.get("powersgd_bytes_W1")
    if b:
        expected = f"== {b['expected_factor']:.3f}"
        add("float32 / powersgd(rank=4) bytes, W1", b["factor"], None, expected, b["matches"])
    t = results.get("powersgd_train_W1")
    if t:
        for name, label in (("powersgd", "powersgd"), ("powersgd_no_ef", "powersgd(no EF)")):
            add(f"{label} step time / grad_avg, W1", t[f"{name}_vs_grad_avg_step_time"], None)
            steady = t.get(f"{name}_vs_grad_avg_steady_step_time")
            if steady is not None:
                add(f"{label} step time / grad_avg, W1, steps 10+", steady, None)
    return rows


def _print_table(rows: list[dict]) -> None:
    width = max(len(r["result"]) for r in rows)
    print(f"\n{'result':<{width}}  {'ratio':>8}  {'target':<12}  holds")
    for r in rows:
        holds = "-" if r["holds"] is None else ("yes" if r["holds"] else "NO")
        print(f"{r['result']:<{width}}  {r['ratio']:>8.3f}  {r['target']:<12}  {holds}")


def _own_segments() -> list[str]:
    mine = f"{SEGMENT_PREFIX}{os.getpid()}-"
    return [n for n in list_segments(with_locks=True) if n.startswith(mine)]


def _on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwind: every with block releases its pool and arena


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results (and the machine) to this file")
    parser.add_argument("--repeats", type=int, help="rounds per pool comparison (default 40)")
    parser.add_argument("--train-repeats", type=int, help="jobs per variant (default 5)")
    parser.add_argument("--train-steps", type=int, help="steps per job (default 40)")
    parser.add_argument("--no-train", action="store_true", help="skip the training jobs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: P={QUICK_SIZE:,} in every pool, few repeats, 20-step jobs",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    quick = args.quick
    rounds = args.repeats or (5 if quick else 40)
    train_repeats = args.train_repeats or (1 if quick else 5)
    train_steps = args.train_steps or (20 if quick else 40)
    big, w1 = (QUICK_SIZE, QUICK_SIZE) if quick else (BIG, W1_PARAMS)

    machine = describe()
    print(summary(machine))
    cores = usable_cores()
    load = machine.get("load_average_at_start")
    print(f"usable cores: {cores}; load average at start: {load}")
    if quick:
        print("QUICK smoke run: reduced sizes and repeats; these are not the targets' numbers")

    results: dict = {}
    try:
        for workers in (2, 4):
            if workers > cores:
                print(
                    f"note: {workers} workers on {cores} usable cores: the workers share cores "
                    "(time-sliced), so these times include waiting for a core; the ratio "
                    "compares the rules under the same sharing"
                )
            key = f"coordinate_{workers}_workers"
            results[key] = coordinate_ratios(big, workers, rounds)
            report({key: _brief(results[key])}, None)
        results["krum_4_workers_W1"] = krum_ratio(w1, rounds)
        report({"krum_4_workers_W1": _brief(results["krum_4_workers_W1"])}, None)
        results["powersgd_bytes_W1"] = powersgd_bytes()
        report({"powersgd_bytes_W1": results["powersgd_bytes_W1"]}, None)
        if not args.no_train:
            results["powersgd_train_W1"] = powersgd_training(
                train_repeats, train_steps, warmup=not quick
            )
            report({"powersgd_train_W1": _brief(results["powersgd_train_W1"])}, None)
    finally:
        leaked = _own_segments()
        if leaked:
            print(f"warning: shared-memory segments left in /dev/shm: {leaked}", file=sys.stderr)
    table = _table(results)
    _print_table(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "machine": machine,
                    "quick": quick,
                    "results": results,
                    "table": table,
                    "leaked_segments": leaked,
                },
                fh,
                indent=2,
                default=_plain,
            )
        print(f"wrote {args.json}")


def _brief(row: dict) -> dict:
    """A result without its long lists (they go to the JSON only)."""
    return {
        k: v for k, v in row.items() if not isinstance(v, list | dict) or k == "bitwise_correct"
    }


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


if __name__ == "__main__":
    main()
