"""Where a fastdist worker's step goes: the real worker loop, timed phase by phase.

    .venv/bin/python -m benchmarks.step_phases [--workload w3] [--workers 2] [--steps 40]

A real ``fastdist.train`` run (``experiment=<workload>``, the coordinator, the arena, the
data rows, the pool) whose workers run fastdist's own loop
(:func:`fastdist.run.worker.train_worker`) with clocks around what it calls: the
minibatch gather (``np.take`` into the batch buffers), the kernel's ``loss_and_grad``
(forward + backward), the combiner's ``local_step`` and ``sync`` (for ``grad_avg``: the
first barrier, the sliced mean of the gradients fused with the optimizer's update, the
second barrier), the heartbeat and the history report. A step is the time from one
heartbeat to the next (one of each of these in between); what no clock covers (the
loop's own Python: the order slice, the loss check, the progress store, ...) is the
rest. The first ``--warmup`` steps are left out, as the ratio benchmarks leave them out.

Nothing of the engine is changed: the clocks wrap the objects the loop is handed (its
context, model, exchange) and two names of its module (``np``, ``StepReporter``), in
the worker processes only. Each worker writes its per-step times to ``FASTDIST_PHASES_DIR``;
this process prints, per worker, the mean ms per step of each phase and its share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

__all__ = ["PHASES", "measure", "phase_worker", "table"]

_DIR = "FASTDIST_PHASES_DIR"
PHASES = {
    "gather": "gather the minibatch (np.take into xb, yb)",
    "kernel": "kernel: forward + backward (loss_and_grad)",
    "local_step": "combiner local_step",
    "barrier1": "exchange: barrier 1 wait (every gradient written)",
    "update": "exchange: sliced mean + optimizer update",
    "barrier2": "exchange: barrier 2 wait (every slice updated)",
    "heartbeat": "bookkeeping: heartbeat",
    "report": "bookkeeping: history report (StepReporter.after_step)",
    "rest": "rest of the loop (not timed on its own)",
}


class _Clock:
    """Per-step seconds of each phase; a step ends at each heartbeat."""

    def __init__(self) -> None:
        self.now: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.last: float | None = None
        self.in_sync = False
        self.waits = 0

    def add(self, phase: str, seconds: float) -> None:
        self.now[phase] = self.now.get(phase, 0.0) + seconds

    def timed(self, phase: str, fn):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - t)

        return call

    def end_step(self, t: float) -> None:
        if self.last is not None:
            step = dict(self.now, step=t - self.last)
            step["rest"] = step["step"] - sum(v for k, v in self.now.items())
            self.steps.append(step)
        self.now, self.last = {}, t


class _Proxy:
    """Everything of the wrapped object, except what a subclass defines."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _Barrier(_Proxy):
    def __init__(self, inner, clock: _Clock) -> None:
        super().__init__(inner)
        self._clock = clock

    def wait(self) -> None:
        clock = self._clock
        t = time.perf_counter()
        self._inner.wait()
        if clock.in_sync:
            clock.waits += 1
            clock.add("barrier1" if clock.waits == 1 else "barrier2", time.perf_counter() - t)


class _Context(_Proxy):
    def __init__(self, inner, clock: _Clock) -> None:
        super().__init__(inner)
        self._clock = clock
        self.barrier = _Barrier(inner.barrier, clock)

    def heartbeat(self, step: int) -> None:
        t = time.perf_counter()
        self._inner.heartbeat(step)
        now = time.perf_counter()
        self._clock.add("heartbeat", now - t)
        self._clock.end_step(now)


class _Kernel(_Proxy):
    def __init__(self, inner, clock: _Clock) -> None:
        super().__init__(inner)
        self.loss_and_grad = clock.timed("kernel", inner.loss_and_grad)


class _Model(_Proxy):
    def __init__(self, inner, clock: _Clock) -> None:
        super().__init__(inner)
        self._clock = clock

    def kernel(self, backend: str, batch: int):
        return _Kernel(self._inner.kernel(backend, batch), self._clock)


class _WorkerExchange(_Proxy):
    def __init__(self, inner, clock: _Clock) -> None:
        super().__init__(inner)
        self._clock = clock
        self.local_step = clock.timed("local_step", inner.local_step)

    def sync(self, step: int, lr: float) -> None:
        clock = self._clock
        clock.in_sync, clock.waits = True, 0
        t = time.perf_counter()
        try:
            self._inner.sync(step, lr)
        finally:
            clock.in_sync = False
        took = time.perf_counter() - t
        # The sync's own work: all of it but the barrier waits.
        clock.add("update", took - clock.now.get("barrier1", 0.0) - clock.now.get("barrier2", 0.0))


class _Exchange(_Proxy):
    def __init__(self, inner, clock: _Clock) -> None:
        super().__init__(inner)
        self._clock = clock

    def worker(self, view):
        return _WorkerExchange(self._inner.worker(view), self._clock)


class _NumPy(_Proxy):
    """The worker module's ``np``: ``take`` (the gather) timed, the rest as is."""

    def __init__(self, inner, clock: _Clock) -> None:
        super().__init__(inner)
        self.take = clock.timed("gather", inner.take)


class _Progress(_Proxy):
    """The coordinator's handler of the workers' messages, with its CPU time counted;
    at each of worker 0's step reports, the coordinator's CPU time so far (all its
    threads, and its main thread, the one that waits on the pool)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.reports: list[dict] = []
        self.handler = 0.0

    def __call__(self, kind: str, rank: int, payload) -> None:
        t = time.thread_time()
        self._inner(kind, rank, payload)
        self.handler += time.thread_time() - t
        if kind == "step" and rank == 0:
            now = {"step": payload["step"], "wall": time.perf_counter()}
            now.update(cpu=time.process_time(), main=time.thread_time(), handler=self.handler)
            self.reports.append(now)


def _coordinator(reports: list[dict], warmup: int) -> dict:
    """The coordinator's CPU between the first report after the warm-up and the last,
    per step and as a share of one core: in all, in its main thread, and handling the
    workers' messages."""
    kept = [r for r in reports if r["step"] >= warmup]
    if len(kept) < 2:
        return {}
    a, b = kept[0], kept[-1]
    steps = b["step"] - a["step"]
    return {
        "cpu_ms_per_step": 1e3 * (b["cpu"] - a["cpu"]) / steps,
        "main_thread_cpu_ms_per_step": 1e3 * (b["main"] - a["main"]) / steps,
        "handler_cpu_ms_per_step": 1e3 * (b["handler"] - a["handler"]) / steps,
        "share_of_one_core": (b["cpu"] - a["cpu"]) / (b["wall"] - a["wall"]),
    }


def phase_worker(ctx, spec) -> None:
    """The pool's target in place of ``train_worker``: the same, with clocks."""
    import dataclasses

    import numpy as np

    from fastdist.run import worker

    clock = _Clock()

    class Reporter(worker.StepReporter):
        def after_step(self, step, loss, batch):
            t = time.perf_counter()
            super().after_step(step, loss, batch)
            clock.add("report", time.perf_counter() - t)

    worker.np, worker.StepReporter = _NumPy(np, clock), Reporter
    spec = dataclasses.replace(
        spec, model=_Model(spec.model, clock), exchange=_Exchange(spec.exchange, clock)
    )
    worker.train_worker(_Context(ctx, clock), spec)
    out = Path(os.environ[_DIR]) / f"worker{ctx.rank}.json"
    out.write_text(json.dumps(clock.steps))


def summarize(steps: list[dict[str, float]], warmup: int) -> dict:
    """Mean ms per step of each phase (and the step's median), after ``warmup`` steps;
    the first step of the list closes at the second heartbeat, so step 1 is not in it."""
    kept = steps[max(warmup - 1, 0) :]
    if not kept:
        raise RuntimeError(f"no step after the {warmup} warm-up steps")
    mean_step = statistics.fmean(s["step"] for s in kept)
    phases = {}
    for phase in PHASES:
        each = [1e3 * s.get(phase, 0.0) for s in kept]
        ms = statistics.fmean(each)
        phases[phase] = {
            "ms": ms,
            "median_ms": statistics.median(each),
            "max_ms": max(each),
            "percent": 100 * ms / (1e3 * mean_step),
        }
    return {
        "steps": len(kept),
        "step_ms_mean": 1e3 * mean_step,
        "step_ms_median": 1e3 * statistics.median(s["step"] for s in kept),
        "phases": phases,
    }


def measure(workload: str, workers: int, steps: int, warmup: int, overrides=()) -> dict:
    """One run of ``warmup + steps`` steps; per worker, :func:`summarize`'s numbers."""
    import fastdist
    from benchmarks import step_phases  # by its module name: the spawned workers import it
    from fastdist.run import coordinator, supervision

    progress: list[_Progress] = []

    def watch(*args, **kwargs):
        progress.append(_Progress(real_watch(*args, **kwargs)))
        return progress[-1]

    with tempfile.TemporaryDirectory() as tmp:
        os.environ[_DIR] = tmp
        cfg = fastdist.compose(
            [
                f"experiment={workload}",
                f"workers={workers}",
                f"steps={warmup + steps}",
                f"history.every={warmup}",
                "diagnostics=false",
                "quiet=true",
                *overrides,
            ]
        )
        real_worker, supervision.train_worker = supervision.train_worker, step_phases.phase_worker
        real_watch, coordinator.watch = coordinator.watch, watch
        try:
            result = fastdist.train(cfg)
        finally:
            supervision.train_worker, coordinator.watch = real_worker, real_watch
        per_worker = [
            summarize(json.loads((Path(tmp) / f"worker{rank}.json").read_text()), warmup)
            for rank in range(workers)
        ]
    return {
        "workload": workload,
        "workers": workers,
        "warmup": warmup,
        # the run's own rate: every step, the warm-up ones too
        "run_samples_per_second_all_steps": result.metrics["samples_per_second"],
        "per_worker": per_worker,
        "coordinator": _coordinator(progress[0].reports, warmup) if progress else {},
    }


def table(results: dict) -> str:
    """Markdown: one column per worker, ms per step (mean / median) and the mean's
    share of the mean step."""
    heads = [f"worker {r}: mean / median ms (%)" for r in range(len(results["per_worker"]))]
    title = f"{results['workload'].upper()} step, {results['workers']} worker(s)"
    lines = [f"| {title} | {' | '.join(heads)} |", "| --- |" + " ---: |" * len(heads)]
    for phase, label in PHASES.items():
        cells = [w["phases"][phase] for w in results["per_worker"]]
        if all(c["ms"] == 0 for c in cells):
            continue
        lines.append(
            f"| {label} | "
            + " | ".join(
                f"{c['ms']:.3f} / {c['median_ms']:.3f} ({c['percent']:.1f}%)" for c in cells
            )
            + " |"
        )
    lines.append(
        "| step (heartbeat to heartbeat; mean, median) | "
        + " | ".join(
            f"{w['step_ms_mean']:.3f}, {w['step_ms_median']:.3f}" for w in results["per_worker"]
        )
        + " |"
    )
    c = results.get("coordinator")
    if c:
        lines.append(
            f"\nCoordinator meanwhile: {c['cpu_ms_per_step']:.3f} ms CPU per step "
            f"({100 * c['share_of_one_core']:.1f}% of one core); its main thread "
            f"{c['main_thread_cpu_ms_per_step']:.3f} ms, of which handling the workers' "
            f"messages {c['handler_cpu_ms_per_step']:.3f} ms"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="w3", help="experiment preset: w3, w1, w2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON only")
    parser.add_argument("overrides", nargs="*", help="more fastdist overrides")
    args = parser.parse_args()
    results = measure(args.workload, args.workers, args.steps, args.warmup, args.overrides)
    print(json.dumps(results) if args.json else table(results))


if __name__ == "__main__":
    main()
