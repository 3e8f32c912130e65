"""Tables and target ratios from a ``benchmarks.compare --json`` file.

    python -m benchmarks.report docs/bench.json                  # markdown to stdout
    python -m benchmarks.report docs/bench.json --readme README.md

``--readme`` rewrites the region of README.md between the markers
``<!-- bench:begin -->`` and ``<!-- bench:end -->`` (and nothing else), so the README's
performance numbers always come from one JSON file that names its machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

__all__ = ["ratios", "render", "rewrite_region"]

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
_OURS, _JAX_OURS = "fastdist grad_avg (numba)", "fastdist grad_avg (jax)"


def _rate(results: dict, workload: str, name_start: str, workers: int) -> float | None:
    for row in results.get("training", []):
        if (
            row.get("workload", "w1") == workload
            and row["name"].startswith(name_start)
            and row["workers"] == workers
        ):
            return row["samples_per_second"]
    return None


def _div(a, b):
    return None if a is None or not b else a / b


def ratios(results: dict) -> list[dict]:
    """Each target of the README as (what, measured ratio or value, target, met)."""
    out = []

    def add(what, value, target, higher_is_better=True):
        met = None if value is None else (value >= target if higher_is_better else value <= target)
        sign = ">=" if higher_is_better else "<="
        out.append({"what": what, "value": value, "target": f"{sign} {target}", "met": met})

    for wl in ("w1", "w2"):
        ours = _rate(results, wl, _OURS, 2)
        if ours is None:
            continue
        up = wl.upper()
        add(
            f"{up}: fastdist 2w / PyTorch DDP 2w",
            _div(ours, _rate(results, wl, "PyTorch DDP", 2)),
            1.0,
        )
        add(
            f"{up}: fastdist 2w / naive pickling pool 2w",
            _div(ours, _rate(results, wl, "naive", 2)),
            2.0,
        )
        add(
            f"{up}: fastdist 2w / JAX 1 process all cores",
            _div(ours, _rate(results, wl, "JAX 1", 2)),
            0.9,
        )
        if wl == "w1":
            add("W1: fastdist 2w / fastdist 1w", _div(ours, _rate(results, wl, _OURS, 1)), 1.7)
            jax_ours = _rate(results, wl, _JAX_OURS, 2)
            add(
                "W1: fastdist backend=jax 2w / JAX 1 process all cores",
                _div(jax_ours, _rate(results, wl, "JAX 1", 2)),
                0.9,
            )
    w1 = next(
        (r for r in results.get("training", []) if r["name"] == _OURS and r["workers"] == 2), None
    )
    if w1 and "startup_seconds" in w1:
        add("start-up to first finished step, W1 2w (s)", w1["startup_seconds"], 1.0, False)
    for row in results.get("allreduce", []):
        if row["impl"] != "fastdist shared memory":
            add(
                f"allreduce {row['n_floats']:,} floats: {row['impl']} / fastdist time",
                row["speedup_of_fastdist"],
                1.0,
            )
    w3 = results.get("w3") or {}
    w3_ratios = w3.get("ratios") or _w3_ratios(w3.get("samples_per_second") or {})
    for row in w3_ratios.values():
        if row["target"].startswith(">="):
            add(f"W3: {row['of']}", row["ratio"], float(row["target"].split()[1]))
    # Useful FLOP/s over the GEMM peak for the same cores: fastdist's rows (the peers'
    # are in their tables), W1's from the training rows, W3's from its own run.
    peaked = [
        (r["workload"], f"{r['name']} {r['workers']}w", r)
        for r in results.get("training", [])
        if r["name"].startswith("fastdist")
    ]
    peaked += [
        (r["workload"], r["contender"], r)
        for r in w3.get("useful_flops", [])
        if r["contender"].startswith("fastdist")
    ]
    for workload, name, r in peaked:
        if r.get("target") and r.get("fraction_of_peak") is not None:
            what = f"{workload.upper()}: {name}, fraction of the GEMM peak (cores: {r['cores']})"
            add(what, r["fraction_of_peak"], float(r["target"].split()[1].rstrip("%")) / 100)
    for row in results.get("memory", []):
        gb = row["dataset_gb"]
        prep = row.get("preparing_pss_gb")
        if prep:
            add(f"memory {row['workers']}w: coordinator preparing / dataset", prep / gb, 1.3, False)
        add(
            f"memory {row['workers']}w: summed PSS training / dataset",
            row["training_pss_gb"] / gb,
            1.5,
            False,
        )
    return out


def _w3_ratios(rate: dict) -> dict:
    from benchmarks.w3_ratios import ratios as w3_ratios

    return w3_ratios(rate) if rate else {}


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _yes_no(holds) -> str:
    return "n/a" if holds is None else ("yes" if holds else "**no**")


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}"


def render(results: dict) -> str:
    """The markdown tables: machine, GEMM peak, training, start-up, allreduce, memory,
    targets."""
    from benchmarks.machine import summary

    lines = []
    if "machine" in results and "cpu_model" in results["machine"]:
        lines.append(f"Machine: {summary(results['machine'])}")
        load = results["machine"].get("load_average_at_start")
        if load:
            lines.append(
                f"Load average when the run started: {', '.join(f'{v:.1f}' for v in load)}"
            )
        lines.append("")
    g = results["gemm_peak"]
    peak = g["all_threads"]["gflops"]
    lines.append(
        f"GEMM peak (NumPy float32 2048^3): {g['1_thread']['gflops']:.0f} GFLOP/s 1 thread, "
        f"{peak:.0f} GFLOP/s {g['all_threads']['threads']} threads"
    )
    by_workload: dict[str, list[dict]] = {}
    for row in results["training"]:
        by_workload.setdefault(row.get("workload", "w1"), []).append(row)
    titles = {"w1": "W1 training (784-1024-1024-10, batch 256/worker)"}
    titles["w2"] = "W2 training (64-256-256-10, batch 64/worker)"
    for wl, rows in by_workload.items():
        lines.append("")
        if all("fraction_of_peak" in r for r in rows):  # the peak for the cores it used
            lines += [
                f"| {titles.get(wl, wl)} | workers | samples/s | fastdist 2w is x faster "
                "| cores | % of GEMM peak (same cores) | target | holds |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
            ]
            for r in rows:
                lines.append(
                    f"| {r['name']} | {r['workers']} | {r['samples_per_second']:,.0f} "
                    f"| {_fmt(r.get('fastdist_2w_speedup'))} | {r['cores']} "
                    f"| {_pct(r['fraction_of_peak'])} | {r.get('target') or '-'} "
                    f"| {_yes_no(r.get('holds'))} |"
                )
            continue
        lines += [  # a file from before: every row against the all-thread peak
            f"| {titles.get(wl, wl)} | workers | samples/s | fastdist 2w is x faster "
            "| % of GEMM peak |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r['name']} | {r['workers']} | {r['samples_per_second']:,.0f} "
                f"| {_fmt(r.get('fastdist_2w_speedup'))} | {100 * r['gflops'] / peak:.0f}% |"
            )
    w1 = next((r for r in results["training"] if r["name"] == _OURS and r["workers"] == 2), None)
    if w1 and "startup_seconds" in w1:
        lines += [
            "",
            "fastdist pool start-up to first finished step (warm cache, 2 workers, W1): "
            f"{w1['startup_seconds']:.2f} s",
        ]
    if results.get("allreduce"):
        lines += [
            "",
            "| allreduce (average, 2 processes) | floats | median ms | fastdist is x faster |",
        ]
        lines.append("| --- | ---: | ---: | ---: |")
        for r in results["allreduce"]:
            lines.append(
                f"| {r['impl']} | {r['n_floats']:,} | {r['median_ms']:.2f} "
                f"| {r['speedup_of_fastdist']:.2f} |"
            )
    if results.get("memory"):
        lines += [
            "",
            "| memory, 1 GB dataset | workers | coordinator preparing data (GB) "
            "| summed PSS while training (GB) | peak (GB) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in results["memory"]:
            lines.append(
                f"| coordinator + workers | {r['workers']} | {_fmt(r.get('preparing_pss_gb'))} "
                f"| {r['training_pss_gb']:.2f} | {r['peak_pss_gb']:.2f} |"
            )
    if results.get("w3"):
        from benchmarks.w3_ratios import table as w3_table

        lines += ["", "W3 (the MNIST CNN, `experiment=w3`), samples/s, medians:", ""]
        w3 = results["w3"]
        lines.append(
            w3_table(
                {
                    "samples_per_second": w3["samples_per_second"],
                    "useful_flops": [
                        r for r in w3.get("useful_flops", []) if r["workload"] == "w3"
                    ],
                }
            )
        )
    table = ratios(results)  # from the raw numbers, with this code's targets
    if table:
        lines += [
            "",
            "| target (this machine) | measured | target | met |",
            "| --- | ---: | ---: | :---: |",
        ]
        for r in table:
            met = "n/a" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append(f"| {r['what']} | {_fmt(r['value'])} | {r['target']} | {met} |")
    return "\n".join(lines)


def rewrite_region(text: str, body: str) -> str:
    """``text`` with everything between the bench markers replaced by ``body``."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {BEGIN} ... {END} region to rewrite")
    return pattern.sub(lambda _: f"{BEGIN}\n{body}\n{END}", text, count=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("json_file")
    parser.add_argument("--readme", help="rewrite the bench region of this markdown file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    results = json.loads(Path(args.json_file).read_text())
    body = render(results)
    if args.readme:
        path = Path(args.readme)
        path.write_text(rewrite_region(path.read_text(), body))
        print(f"rewrote the bench region of {path}")
    else:
        print(body)


if __name__ == "__main__":
    main()
