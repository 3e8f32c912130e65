"""Workload W3 (the cnn_mnist net, synthetic 28x28 images, batch 64 per worker, momentum
SGD), and W1 beside it: fastdist against its peers, side by side in one run, each
contender's useful FLOP/s as a fraction of the machine's GEMM peak measured in the same
run, and (``--phases``) where a fastdist worker's step goes.

    .venv/bin/python -m benchmarks.w3_ratios [--rounds 3] [--steps 20] [--w1-steps 40]
        [--workloads w3,w1] [--phases] [--json PATH]

Every contender runs in a fresh process and is timed after the same 3 warm-up steps;
rounds are interleaved (the GEMM peaks, then all contenders once, then again), and each
contender's median samples/s over the rounds is reported, so background load hits every
side alike. The machine (CPU model, BLAS libraries and their kernels) heads the output.
Targets (issue 11, and the issue "Convolutions at oneDNN speed", item 3):

* fastdist Numba, 1 worker >= 1.0x PyTorch, same net, 1 process x 1 thread;
* fastdist 2 workers >= 1.8x 1 worker;
* fastdist 2 workers >= 1.5x PyTorch DDP (gloo, 2 x 1 thread) and >= 0.95x JAX in one
  process on all cores (global batch 64 x 2);
* fastdist backend=jax, 1 worker, against JAX natively on one core (reported);
* fastdist backend=jax, 2 workers >= 1.5x JAX in one process on all cores;
* useful FLOP/s (samples/s x the model's ``flops_per_sample()``, the same for every
  contender) >= 90% of the GEMM peak on W1 and >= 70% on W3, the peak being NumPy's
  float32 2048^3 sgemm with as many threads as the contender has cores (1 for one
  process x 1 thread, 2 for 2 workers, all usable cores for JAX on all cores); see
  :mod:`benchmarks.peak`. Every contender gets the columns, peers too: where DDP itself
  runs near the peak, the fraction is the honest target.

``--phases`` adds :mod:`benchmarks.step_phases` for fastdist Numba with 1 and 2 workers
on each workload: ms and % of the step for the gather, the kernel, the barrier waits,
the sliced mean + update and the bookkeeping, in fastdist's own worker loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks import peak
from benchmarks.child_env import run_python

WARMUP = 3  # untimed steps of every contender

# fastdist runs WARMUP + steps steps with its history every WARMUP steps; its rate is
# that of the steps after the first window, like the peers' (benchmarks.warmup).
_FASTDIST = """
import json, sys, fastdist
from benchmarks.warmup import rate_after
cfg = fastdist.compose(sys.argv[1:])
rate = rate_after(fastdist.train(cfg).history, cfg.history.every)
print(json.dumps({"samples_per_second": rate}))
"""
ALL_CORES = 0  # a contender's cores: "every usable core" (resolved when measured)


def _json(out: str) -> dict:
    """The last JSON object a child printed (peers print it indented, after any log)."""
    end, start = out.rfind("}") + 1, len(out)
    while (start := out.rfind("{", 0, start)) >= 0 and end > 0:
        try:
            return json.loads(out[start:end])
        except ValueError:
            continue
    raise RuntimeError(f"no JSON object in the child's output: {out[-200:]!r}")


def _run(args: list[str], threads: int | None) -> float:
    return float(_json(run_python(args, threads))["samples_per_second"])


def contenders(steps: int) -> dict[str, tuple[list[str], int | None, int]]:
    """W3's contenders: name -> (child's arguments, thread pin, cores it uses)."""
    run = ["experiment=w3", f"steps={WARMUP + steps}", f"history.every={WARMUP}"]
    run += ["diagnostics=false"]
    peer = ["-m", "benchmarks.peers.cnn_peers"]
    timed = ["--steps", str(steps), "--warmup", str(WARMUP)]
    jax = ["backend=jax", "backend.pin_cpus=true"]
    return {
        "fastdist_numba_1w": (["-c", _FASTDIST, *run, "workers=1"], 1, 1),
        "fastdist_numba_2w": (["-c", _FASTDIST, *run, "workers=2"], 1, 2),
        "torch_1p_1t": (
            [*peer, "torch_single", *timed, "--workers", "1", "--threads", "1"],
            1,
            1,
        ),
        "torch_ddp_2x1": ([*peer, "torch_ddp", *timed, "--workers", "2"], 1, 2),
        "jax_1p_all_cores_b128": ([*peer, "jax_single", *timed, "--workers", "2"], None, ALL_CORES),
        "fastdist_jax_1w": (["-c", _FASTDIST, *run, "workers=1", *jax], 1, 1),
        "fastdist_jax_2w": (["-c", _FASTDIST, *run, "workers=2", *jax], 1, 2),
        "jax_native_1core": (
            [*peer, "jax_single", *timed, "--workers", "1", "--cpus", "1"],
            1,
            1,
        ),
        # diagnostic: fastdist's kernel + SGD in a plain loop (no workers, no arena)
        "numba_kernel_loop_1p": ([*peer, "numba_kernel", *timed, "--workers", "1"], 1, 1),
    }


def w1_contenders(steps: int) -> dict[str, tuple[list[str], int | None, int]]:
    """W1's (MLP 784-1024-1024-10, batch 256 per worker), for its fraction of the peak:
    the peers of ``benchmarks.compare`` on the same terms as W3's."""
    run = ["experiment=w1", f"steps={WARMUP + steps}", f"history.every={WARMUP}"]
    run += ["diagnostics=false"]
    timed = ["--steps", str(steps), "--warmup", str(WARMUP), "--batch", "256"]

    def peer(name: str, workers: int) -> list[str]:
        return ["-m", f"benchmarks.peers.{name}", *timed, "--workers", str(workers)]

    return {
        "fastdist_numba_1w": (["-c", _FASTDIST, *run, "workers=1"], 1, 1),
        "fastdist_numba_2w": (["-c", _FASTDIST, *run, "workers=2"], 1, 2),
        "torch_1p_1t": ([*peer("torch_single", 1), "--threads", "1"], 1, 1),
        "torch_ddp_2x1": (peer("torch_ddp", 2), 1, 2),
        "jax_1p_all_cores_b512": (peer("jax_single", 2), None, ALL_CORES),
        "fastdist_jax_2w": (
            ["-c", _FASTDIST, *run, "workers=2", "backend=jax", "backend.pin_cpus=true"],
            1,
            2,
        ),
    }


def ratios(rate: dict[str, float]) -> dict[str, dict]:
    """Each W3 target whose two contenders both ran."""
    wanted = {
        "numba_1w_vs_torch_1t": ("fastdist_numba_1w", "torch_1p_1t", ">= 1.0"),
        "2w_vs_1w": ("fastdist_numba_2w", "fastdist_numba_1w", ">= 1.8"),
        "2w_vs_ddp": ("fastdist_numba_2w", "torch_ddp_2x1", ">= 1.5"),
        "2w_vs_jax_all_cores": ("fastdist_numba_2w", "jax_1p_all_cores_b128", ">= 0.95"),
        "jax_backend_1w_vs_jax_native_1core": ("fastdist_jax_1w", "jax_native_1core", "report"),
        "jax_backend_2w_vs_jax_all_cores": ("fastdist_jax_2w", "jax_1p_all_cores_b128", ">= 1.5"),
    }
    return {
        key: {"ratio": rate[a] / rate[b], "of": f"{a} / {b}", "target": target}
        for key, (a, b, target) in wanted.items()
        if rate.get(a) and rate.get(b)
    }


def _todo(workloads, steps: int, w1_steps: int, only) -> dict[str, dict]:
    every = {"w3": lambda: contenders(steps), "w1": lambda: w1_contenders(w1_steps)}
    todo = {}
    for wl in workloads:
        runs = every[wl]()
        if only:
            runs = {k: v for k, v in runs.items() if k in only or f"{wl}:{k}" in only}
        cores = peak.usable_cpus()
        todo[wl] = {k: (cmd, t, c or cores) for k, (cmd, t, c) in runs.items()}
    return todo


def measure(
    rounds: int = 3,
    steps: int = 20,
    only=None,
    log=print,
    workloads=("w3",),
    w1_steps: int = 40,
) -> dict:
    """Interleaved rounds of the GEMM peaks and every contender; medians, the ratios
    when all ran, and each contender's useful FLOP/s against the peak for its cores.
    W3's numbers are at the top level (``samples_per_second``, ``rounds``, ``ratios``),
    the other workloads' under their name."""
    todo = _todo(workloads, steps, w1_steps, only)
    threads = sorted({c for runs in todo.values() for _, _, c in runs.values()})
    peak_rounds: list[dict[int, dict]] = []
    samples = {wl: {name: [] for name in runs} for wl, runs in todo.items()}
    for r in range(rounds):
        peak_rounds.append({})
        for t in threads:
            try:
                peak_rounds[-1][t] = peak.gemm_peak(t)
                done = f"{peak_rounds[-1][t]['gflops']:,.0f} GFLOP/s"
            except RuntimeError as exc:
                done = f"failed: {exc}"
            log(f"round {r + 1}/{rounds} GEMM peak, {t} thread(s): {done}")
        for wl, runs in todo.items():
            for name, (cmd, pin, _) in runs.items():
                try:
                    samples[wl][name].append(_run(cmd, pin))
                    done = f"{samples[wl][name][-1]:,.0f} samples/s"
                except RuntimeError as exc:  # e.g. a peer library missing: report, go on
                    done = f"failed: {exc}"
                log(f"round {r + 1}/{rounds} {wl.upper()} {name}: {done}")
    peaks = peak.median_peaks(peak_rounds)
    results: dict = {"gemm_peak": {"median": peaks, "rounds": peak_rounds}, "useful_flops": []}
    for wl, runs in todo.items():
        rate = {k: statistics.median(v) for k, v in samples[wl].items() if v}
        if wl == "w3":
            results.update(samples_per_second=rate, rounds=samples[wl], ratios=ratios(rate))
        else:
            results[wl] = {"samples_per_second": rate, "rounds": samples[wl]}
        flops = peak.flops_per_sample(wl)
        results["useful_flops"] += [
            peak.useful_row(wl, name, runs[name][2], r, flops, peaks) for name, r in rate.items()
        ]
    return results


def phases(workloads, steps: int, log=print) -> list[dict]:
    """:mod:`benchmarks.step_phases` for fastdist Numba, 1 and 2 workers per workload,
    each in a fresh child pinned to one thread like the contenders."""
    out = []
    for wl in workloads:
        for workers in (1, 2):
            args = ["-m", "benchmarks.step_phases", "--json", "--workload", wl]
            args += ["--workers", str(workers), "--steps", str(steps), "--warmup", str(WARMUP)]
            try:
                out.append(_json(run_python(args, 1)))
                step = out[-1]["per_worker"][0]["step_ms_mean"]
                log(f"phases {wl.upper()} {workers} worker(s): worker 0's step {step:.2f} ms")
            except RuntimeError as exc:
                log(f"phases {wl.upper()} {workers} worker(s): failed: {exc}")
    return out


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _peak_line(peaks: dict) -> str:
    def one(t, g):
        also = [
            f"{label}: {g[key]:,.0f}"
            for key, label in (
                ("scipy_sgemm_gflops", "SciPy's BLAS, which Numba calls"),
                ("torch_mm_gflops", "torch.mm"),
            )
            if g.get(key)
        ]
        return f"{t} thread(s) {g['gflops']:,.0f}" + (f" ({'; '.join(also)})" if also else "")

    blas = sorted({b for g in peaks.values() for b in g.get("blas", [])})
    by_threads = sorted(peaks.items(), key=lambda item: int(item[0]))  # JSON: str keys
    return (
        f"GEMM peak (NumPy float32 {peak.GEMM_N}^3 sgemm, best of 7, median of rounds), "
        f"GFLOP/s: {'; '.join(one(t, g) for t, g in by_threads)}"
        f"; BLAS (kernels): {', '.join(blas) or 'unknown'}"
    )


def table(results: dict) -> str:
    lines = []
    if results.get("machine"):
        from benchmarks.machine import summary

        lines += [f"Machine: {summary(results['machine'])}", ""]
    if results.get("gemm_peak", {}).get("median"):
        lines += [_peak_line(results["gemm_peak"]["median"]), ""]
    lines += ["| W3 contender | samples/s (median) |", "| --- | ---: |"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in results["samples_per_second"].items()]
    if results.get("w1", {}).get("samples_per_second"):
        lines += ["", "| W1 contender | samples/s (median) |", "| --- | ---: |"]
        lines += [f"| {k} | {v:,.0f} |" for k, v in results["w1"]["samples_per_second"].items()]
    if results.get("ratios"):
        lines += ["", "| W3 ratio | measured | target |", "| --- | ---: | --- |"]
        lines += [
            f"| {r['of']} | {r['ratio']:.2f} | {r['target']} |" for r in results["ratios"].values()
        ]
    if results.get("useful_flops"):
        lines += [
            "",
            "| useful FLOP/s | cores | samples/s | GFLOP/s | GEMM peak, same cores "
            "| % of peak | target | holds | % of the best GEMM here |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: |",
        ]
        for r in results["useful_flops"]:
            holds = "n/a" if r["holds"] is None else ("yes" if r["holds"] else "**no**")
            peak_gf = "n/a" if r["peak_gflops"] is None else f"{r['peak_gflops']:,.0f}"
            lines.append(
                f"| {r['workload'].upper()} {r['contender']} | {r['cores']} "
                f"| {r['samples_per_second']:,.0f} | {r['useful_gflops']:,.1f} | {peak_gf} "
                f"| {_pct(r['fraction_of_peak'])} | {r['target'] or '-'} | {holds} "
                f"| {_pct(r.get('fraction_of_best_gemm'))} |"
            )
    if results.get("phases"):
        from benchmarks.step_phases import table as phase_table

        for run in results["phases"]:
            lines += ["", phase_table(run)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed W3 steps per run")
    parser.add_argument("--w1-steps", type=int, default=40, help="timed W1 steps per run")
    parser.add_argument("--workloads", default="w3,w1", help="comma-separated: w3,w1")
    parser.add_argument("--only", nargs="*", help="run only these contenders (name or w1:name)")
    parser.add_argument("--phases", action="store_true", help="also time a worker's step phases")
    parser.add_argument("--phase-steps", type=int, default=40, help="timed steps per phase run")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    from benchmarks import machine

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    log = lambda m: print(m, flush=True)  # noqa: E731
    info = machine.describe()
    log(f"machine: {machine.summary(info)}")
    results = measure(args.rounds, args.steps, args.only, log, workloads, args.w1_steps)
    results = {"machine": info, "command": sys.argv[:], **results}
    if args.phases:
        results["phases"] = phases(workloads, args.phase_steps, log)
    print(json.dumps(results, indent=2))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
