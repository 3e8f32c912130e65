"""Workload W3 (the cnn_mnist net, synthetic 28x28 images, batch 64 per worker, momentum
SGD): fastdist against its peers, side by side in one run.

    .venv/bin/python -m benchmarks.w3_ratios [--rounds 3] [--steps 20] [--json PATH]

Every contender runs in a fresh process and is timed after the same 3 warm-up steps;
rounds are interleaved (all contenders once, then again), and each contender's median
samples/s over the rounds is reported, so background load hits every side alike.
Targets (issue 11):

* fastdist Numba, 1 worker >= 1.0x PyTorch, same net, 1 process x 1 thread;
* fastdist 2 workers >= 1.8x 1 worker;
* fastdist 2 workers >= 1.5x PyTorch DDP (gloo, 2 x 1 thread) and >= 0.95x JAX in one
  process on all cores (global batch 64 x 2);
* fastdist backend=jax, 1 worker, against JAX natively on one core (reported);
* fastdist backend=jax, 2 workers >= 0.9x JAX in one process on all cores (issue 15).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

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


def _run(args: list[str], threads: int | None) -> float:
    out = run_python(args, threads)
    return float(json.loads(out[out.rindex("{") : out.rindex("}") + 1])["samples_per_second"])


def contenders(steps: int) -> dict[str, tuple[list[str], int | None]]:
    run = ["experiment=w3", f"steps={WARMUP + steps}", f"history.every={WARMUP}"]
    run += ["diagnostics=false"]
    peer = ["-m", "benchmarks.peers.cnn_peers"]
    timed = ["--steps", str(steps), "--warmup", str(WARMUP)]
    return {
        "fastdist_numba_1w": (["-c", _FASTDIST, *run, "workers=1"], 1),
        "fastdist_numba_2w": (["-c", _FASTDIST, *run, "workers=2"], 1),
        "torch_1p_1t": ([*peer, "torch_single", *timed, "--workers", "1", "--threads", "1"], 1),
        "torch_ddp_2x1": ([*peer, "torch_ddp", *timed, "--workers", "2"], 1),
        "jax_1p_all_cores_b128": ([*peer, "jax_single", *timed, "--workers", "2"], None),
        "fastdist_jax_1w": (
            ["-c", _FASTDIST, *run, "workers=1", "backend=jax", "backend.pin_cpus=true"],
            1,
        ),
        "fastdist_jax_2w": (
            ["-c", _FASTDIST, *run, "workers=2", "backend=jax", "backend.pin_cpus=true"],
            1,
        ),
        "jax_native_1core": ([*peer, "jax_single", *timed, "--workers", "1", "--cpus", "1"], 1),
        # diagnostic: fastdist's kernel + SGD in a plain loop (no workers, no arena)
        "numba_kernel_loop_1p": ([*peer, "numba_kernel", *timed, "--workers", "1"], 1),
    }


def ratios(rate: dict[str, float]) -> dict[str, dict]:
    """Each W3 target whose two contenders both ran."""
    wanted = {
        "numba_1w_vs_torch_1t": ("fastdist_numba_1w", "torch_1p_1t", ">= 1.0"),
        "2w_vs_1w": ("fastdist_numba_2w", "fastdist_numba_1w", ">= 1.8"),
        "2w_vs_ddp": ("fastdist_numba_2w", "torch_ddp_2x1", ">= 1.5"),
        "2w_vs_jax_all_cores": ("fastdist_numba_2w", "jax_1p_all_cores_b128", ">= 0.95"),
        "jax_backend_1w_vs_jax_native_1core": ("fastdist_jax_1w", "jax_native_1core", "report"),
        "jax_backend_2w_vs_jax_all_cores": ("fastdist_jax_2w", "jax_1p_all_cores_b128", ">= 0.9"),
    }
    return {
        key: {"ratio": rate[a] / rate[b], "of": f"{a} / {b}", "target": target}
        for key, (a, b, target) in wanted.items()
        if rate.get(a) and rate.get(b)
    }


def measure(rounds: int = 3, steps: int = 20, only=None, log=print) -> dict:
    """Interleaved rounds of every contender; medians, and the ratios when all ran."""
    todo = contenders(steps)
    if only:
        todo = {k: v for k, v in todo.items() if k in only}
    samples: dict[str, list[float]] = {name: [] for name in todo}
    for r in range(rounds):
        for name, (cmd, threads) in todo.items():
            try:
                samples[name].append(_run(cmd, threads))
                done = f"{samples[name][-1]:,.0f} samples/s"
            except RuntimeError as exc:  # e.g. a peer library missing: report, go on
                done = f"failed: {exc}"
            log(f"round {r + 1}/{rounds} {name}: {done}")
    rate = {k: statistics.median(v) for k, v in samples.items() if v}
    return {"samples_per_second": rate, "rounds": samples, "ratios": ratios(rate)}


def table(results: dict) -> str:
    lines = ["| W3 contender | samples/s (median) |", "| --- | ---: |"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in results["samples_per_second"].items()]
    if results.get("ratios"):
        lines += ["", "| W3 ratio | measured | target |", "| --- | ---: | --- |"]
        lines += [
            f"| {r['of']} | {r['ratio']:.2f} | {r['target']} |" for r in results["ratios"].values()
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="run only these contenders")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = measure(args.rounds, args.steps, args.only, log=lambda m: print(m, flush=True))
    print(json.dumps(results, indent=2))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
