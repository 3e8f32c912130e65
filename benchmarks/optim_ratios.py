"""Optimizer speed targets (issue 12), measured side by side (A B A B) in one run.

    .venv/bin/python -m benchmarks.optim_ratios [--json PATH] [--train-rounds N]

1. The fused AdamW update on W1's 1,863,690 parameters costs <= 1.3x the SGD-momentum
   update. Both are memory-bound streams: each is also reported in GB/s (bytes the
   update must read and write) next to a measured copy rate (np.copyto of one
   parameter-sized vector: read + write) on the same machine, in the same rounds.
   Measured in both forms the training loop uses: ``update`` on a worker's own
   gradient, and ``update_from_mean`` over 2 gradient rows (grad_avg's fused
   reduce-scatter + step, here over the whole vector).
2. W1 with 2 workers (grad_avg): samples/s with AdamW >= 0.95x with SGD, runs
   alternated so both see the same machine load.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.child_env import pin_this_process

pin_this_process()  # before NumPy loads its BLAS

import numpy as np  # noqa: E402

import fastdist  # noqa: E402
from benchmarks.harness import W1, median_seconds, report  # noqa: E402
from fastdist.models.mlp import MLP  # noqa: E402
from fastdist.optim import adamw, lion, sgd  # noqa: E402

W1_PARAMS = MLP(W1["sizes"]).layout.size  # 1,863,690


def _interleaved(fns: dict, rounds: int, repeats: int) -> dict:
    """Median seconds of each callable over rounds that visit all of them in turn."""
    for fn in fns.values():
        fn()  # compile / warm the caches
    times: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_seconds(fn, repeats))
    return {name: statistics.median(t) for name, t in times.items()}


def update_ratio(rounds: int = 7, repeats: int = 20) -> dict:
    n = W1_PARAMS
    rng = np.random.default_rng(0)
    grad = rng.standard_normal(n).astype(np.float32) * 1e-3
    rows = np.stack([grad, -0.5 * grad])
    src, dst = rng.standard_normal(n).astype(np.float32), np.empty(n, np.float32)
    optimizers = {"sgd_momentum": sgd(lr=1e-3), "adamw": adamw(lr=1e-6), "lion": lion(lr=1e-7)}
    vectors = {k: 1 + len(o.state_names) for k, o in optimizers.items()}  # p + state
    buffers = {
        k: (
            rng.standard_normal(n).astype(np.float32),
            [np.zeros(n, np.float32) for _ in o.state_names],
        )
        for k, o in optimizers.items()
    }
    fns = {"copy": lambda: np.copyto(dst, src)}
    for k, opt in optimizers.items():
        p, s = buffers[k]
        fns[f"{k}_update"] = lambda o=opt, p=p, s=s: o.update(p, s, grad, 0, n, 10)
        fns[f"{k}_from_mean2"] = lambda o=opt, p=p, s=s: o.update_from_mean(p, s, rows, 0, n, 10)
    t = _interleaved(fns, rounds, repeats)
    gb = 4 * n / 1e9  # one float32 vector
    out = {"n_params": n, "copy_ms": t["copy"] * 1e3, "copy_GBps": 2 * gb / t["copy"]}
    for k, vecs in vectors.items():
        for form, grad_reads in (("update", 1), ("from_mean2", 2)):
            moved = gb * (2 * vecs + grad_reads)  # read+write p and state, read gradient(s)
            sec = t[f"{k}_{form}"]
            out[f"{k}_{form}_ms"] = sec * 1e3
            out[f"{k}_{form}_GBps"] = moved / sec
    for form in ("update", "from_mean2"):
        out[f"adamw_vs_sgd_{form}"] = t[f"adamw_{form}"] / t[f"sgd_momentum_{form}"]
    out["target"] = "adamw_vs_sgd <= 1.3"
    return out


def training_ratio(rounds: int = 3, steps: int = 40) -> dict:
    common = ["experiment=w1", "workers=2", f"steps={steps}", "diagnostics=false"]
    variants = {"sgd": [], "adamw": ["optimizer=adamw", "optimizer.lr=1e-4"]}
    rates: dict = {k: [] for k in variants}
    for _ in range(rounds):
        for name, extra in variants.items():
            cfg = fastdist.compose([*common, *extra])
            rates[name].append(fastdist.train(cfg).metrics["samples_per_second"])
    sgd_rate, adamw_rate = statistics.median(rates["sgd"]), statistics.median(rates["adamw"])
    return {
        "w1_2_workers_samples_per_s_sgd": sgd_rate,
        "w1_2_workers_samples_per_s_adamw": adamw_rate,
        "all_rounds": rates,
        "adamw_vs_sgd_samples_per_s": adamw_rate / sgd_rate,
        "target": ">= 0.95",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--train-rounds", type=int, default=3)
    args = parser.parse_args()
    results = {
        "update_W1": update_ratio(),
        "train_W1_2_workers": training_ratio(args.train_rounds),
    }
    report(results, args.json)


if __name__ == "__main__":
    main()
