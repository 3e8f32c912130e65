"""benchmarks.report: the README region it rewrites, and the tables it renders from a
benchmark JSON (no timing here: the numbers are made up)."""

from __future__ import annotations

import pytest

from benchmarks.report import BEGIN, END, ratios, render, rewrite_region

RESULTS = {
    "machine": {
        "cpu_model": "Test CPU",
        "simd_flags": ["avx2"],
        "logical_cpus": 2,
        "usable_cpus": 2,
        "memory_gib": 4.0,
        "blas_thread_pools": [
            {"user_api": "blas", "internal_api": "openblas", "version": "0.3", "num_threads": 2}
        ],
        "versions": {"python": "3.11", "numpy": "2.0"},
        "commit": "abcdef1234567",
        "dirty": False,
        "date_utc": "2026-01-01T00:00:00+00:00",
    },
    "gemm_peak": {"1_thread": {"gflops": 100.0}, "all_threads": {"gflops": 200.0, "threads": 2}},
    "training": [
        {"workload": "w1", "name": "fastdist grad_avg (numba)", "workers": 2,
         "samples_per_second": 300.0, "gflops": 100.0, "startup_seconds": 0.5},
        {"workload": "w1", "name": "fastdist grad_avg (jax)", "workers": 2,
         "samples_per_second": 270.0, "gflops": 90.0},
        {"workload": "w1", "name": "JAX 1 process, all cores (batch x workers)", "workers": 2,
         "samples_per_second": 310.0, "gflops": 103.0},
        {"workload": "w1", "name": "naive pool: pickled weights/grads", "workers": 2,
         "samples_per_second": 100.0, "gflops": 33.0},
    ],
    "memory": [{"workers": 2, "dataset_gb": 1.0, "preparing_pss_gb": 1.2,
                "training_pss_gb": 1.3, "peak_pss_gb": 1.3}],
}  # fmt: skip


def test_targets_are_ratios_with_their_verdicts():
    table = {r["what"]: r for r in ratios(RESULTS)}
    jax = table["W1: fastdist backend=jax 2w / JAX 1 process all cores"]
    assert jax["value"] == pytest.approx(270 / 310) and jax["met"] is False
    assert table["W1: fastdist 2w / naive pickling pool 2w"]["met"] is True
    assert table["start-up to first finished step, W1 2w (s)"]["met"] is True
    assert table["memory 2w: coordinator preparing / dataset"]["value"] == pytest.approx(1.2)


def test_render_names_the_machine_and_the_readme_region_is_all_it_rewrites():
    body = render(RESULTS)
    assert "Test CPU" in body and "openblas 0.3" in body and "abcdef1234" in body
    readme = f"# title\n\nbefore\n{BEGIN}\nold numbers\n{END}\nafter\n"
    new = rewrite_region(readme, body)
    assert new.startswith("# title\n\nbefore\n") and new.endswith(f"{END}\nafter\n")
    assert "old numbers" not in new and body in new
    with pytest.raises(SystemExit, match="no <!-- bench:begin"):
        rewrite_region("no markers", body)


def test_w3_rows_and_targets_come_from_the_contenders_that_ran():
    w3 = {
        "samples_per_second": {
            "fastdist_numba_1w": 100.0,
            "fastdist_numba_2w": 190.0,
            "fastdist_jax_2w": 80.0,
            "jax_1p_all_cores_b128": 100.0,
        }
    }  # torch did not run: its ratios are left out, not guessed
    table = {r["what"]: r for r in ratios({**RESULTS, "w3": w3})}
    assert table["W3: fastdist_numba_2w / fastdist_numba_1w"]["value"] == pytest.approx(1.9)
    assert table["W3: fastdist_jax_2w / jax_1p_all_cores_b128"]["met"] is False
    assert not any("torch" in what for what in table)
    body = render({**RESULTS, "w3": w3})
    assert "| fastdist_jax_2w | 80 |" in body and "W3: fastdist_jax_2w" in body


def test_fastdist_rate_leaves_out_the_warm_up_steps_like_the_peers(tmp_path):
    """benchmarks.compare times fastdist over the history windows after ``--warmup``
    steps: a slow first window must not count, and the rest is samples over seconds."""
    from benchmarks.compare import _rate_after

    history = tmp_path / "history.csv"
    history.write_text(
        "step,wall_time,samples_per_second\n"
        "0,0.0,\n"
        "5,1.0,100.0\n"  # the warm-up window: 100 samples in 1 s
        "10,1.5,1000.0\n"  # 500 samples in 0.5 s
        "15,2.5,500.0\n"  # 500 samples in 1 s
    )
    assert _rate_after(history, 5) == pytest.approx(1000 / 1.5)
    assert _rate_after(history, 0) == pytest.approx(1100 / 2.5)
    with pytest.raises(RuntimeError, match="no history window"):
        _rate_after(history, 15)
    # RunResult.history's rows (numbers, None for no rate) give the same answer.
    from benchmarks.warmup import rate_after

    rows = [
        {"step": 0, "wall_time": 0.0, "samples_per_second": None},
        {"step": 5, "wall_time": 1.0, "samples_per_second": 100.0},
        {"step": 10, "wall_time": 1.5, "samples_per_second": 1000.0},
        {"step": 15, "wall_time": 2.5, "samples_per_second": 500.0},
    ]
    assert rate_after(rows, 5) == pytest.approx(1000 / 1.5)


def test_useful_flops_use_the_peak_of_the_cores_each_contender_used():
    """benchmarks.peak: useful FLOP/s over the peak measured with as many threads as
    the contender has cores, against the issue's target for its workload."""
    from benchmarks.peak import median_peaks, useful_row

    rounds = [{1: {"gflops": 100.0}, 2: {"gflops": 150.0}}, {1: {"gflops": 90.0}}]
    rounds.append({1: {"gflops": 110.0}, 2: {"gflops": 210.0}})
    peaks = median_peaks(rounds)
    assert peaks[1]["gflops"] == 100.0 and peaks[2]["gflops"] == 150.0  # median_low of 2
    one = useful_row("w3", "fastdist_numba_1w", 1, 1000.0, 72_000_000, peaks)
    assert one["useful_gflops"] == pytest.approx(72.0)
    assert one["fraction_of_peak"] == pytest.approx(0.72)
    assert one["target"] == ">= 70%" and one["holds"] is True
    peaks[1]["torch_mm_gflops"] = 120.0  # a faster GEMM on the machine: the second column
    best = useful_row("w3", "fastdist_numba_1w", 1, 1000.0, 72_000_000, peaks)
    assert best["fraction_of_peak"] == pytest.approx(0.72)
    assert best["fraction_of_best_gemm"] == pytest.approx(0.6)
    two = useful_row("w1", "torch_ddp_2x1", 2, 10_000.0, 11_000_000, peaks)
    assert two["fraction_of_peak"] == pytest.approx(110 / 150) and two["holds"] is False
    assert useful_row("w2", "x", 4, 1.0, 1, peaks)["holds"] is None  # no peak, no target


def test_compare_rows_get_their_cores_fraction_and_verdict():
    from benchmarks import compare
    from benchmarks.peak import usable_cpus

    results = {
        "gemm_peak": {"1_thread": {"gflops": 100.0}, "all_threads": {"gflops": 200.0}},
        "training": [
            {"workload": "w1", "name": "fastdist grad_avg (numba)", "workers": 1, "gflops": 95.0,
             "samples_per_second": 8500.0},
            {"workload": "w1", "name": "PyTorch 1 process, 1 thread", "workers": 2,
             "gflops": 80.0},
            {"workload": "w2", "name": "fastdist grad_avg (numba)", "workers": 1, "gflops": 5.0},
        ],
    }  # fmt: skip
    compare.useful_flops(results)
    ours, torch, w2 = results["training"]
    assert ours["cores"] == 1 and ours["fraction_of_peak"] == pytest.approx(0.95)
    assert ours["holds"] is True and ours["target"] == ">= 90%"
    assert torch["cores"] == 1 and torch["holds"] is False  # one thread, whatever workers says
    assert w2["target"] is None and w2["holds"] is None
    if usable_cpus() == 2:
        row = {"workload": "w1", "name": "JAX 1 process, all cores", "workers": 1, "gflops": 190.0}
        results["training"] = [row]
        compare.useful_flops(results)
        assert row["cores"] == 2 and row["fraction_of_peak"] == pytest.approx(0.95)
    body = render({**RESULTS, "training": [ours]})
    assert "| cores | % of GEMM peak (same cores) | target | holds |" in body
    assert "| fastdist grad_avg (numba) | 1 |" in body and "| 95% | >= 90% | yes |" in body
    table = {r["what"]: r for r in ratios({**RESULTS, "training": [ours]})}
    what = "W1: fastdist grad_avg (numba) 1w, fraction of the GEMM peak (cores: 1)"
    assert table[what]["value"] == pytest.approx(0.95) and table[what]["met"] is True


def test_w3_tables_show_the_peak_fractions_and_the_step_phases():
    from benchmarks import step_phases, w3_ratios
    from benchmarks.peak import useful_row

    peaks = {1: {"gflops": 100.0, "scipy_sgemm_gflops": 98.0, "blas": ["openblas 0.3 (X)"]}}
    steps = [
        {"step": 0.010, "kernel": 0.008, "gather": 0.001},  # step 2: a warm-up step
        {"step": 0.010, "kernel": 0.007, "gather": 0.001, "update": 0.001},
        {"step": 0.012, "kernel": 0.009, "gather": 0.001, "update": 0.001},
    ]
    for s in steps:
        s["rest"] = s["step"] - sum(v for k, v in s.items() if k != "step")
    summary = step_phases.summarize(steps, warmup=2)
    assert summary["steps"] == 2 and summary["step_ms_mean"] == pytest.approx(11.0)
    assert summary["phases"]["kernel"]["ms"] == pytest.approx(8.0)
    assert summary["phases"]["kernel"]["percent"] == pytest.approx(800 / 11)
    assert summary["phases"]["rest"]["ms"] == pytest.approx(1.0)
    results = {
        "gemm_peak": {"median": peaks},
        "samples_per_second": {"fastdist_numba_1w": 1000.0},
        "useful_flops": [useful_row("w3", "fastdist_numba_1w", 1, 1000.0, 72_000_000, peaks)],
        "phases": [{"workload": "w3", "workers": 1, "per_worker": [summary]}],
    }
    body = w3_ratios.table(results)
    assert "1 thread(s) 100 (SciPy's BLAS, which Numba calls: 98)" in body
    assert "openblas 0.3 (X)" in body
    assert "| W3 fastdist_numba_1w | 1 | 1,000 | 72.0 | 100 | 72% | >= 70% | yes | 72% |" in body
    assert "| kernel: forward + backward (loss_and_grad) | 8.000 / 8.000 (72.7%) |" in body
    assert "combiner local_step" not in body  # phases that never ran are left out


def test_w3_ratios_reads_the_last_json_object_a_child_printed():
    from benchmarks.w3_ratios import _json

    out = 'log {"not": json\n{\n  "peer": "x",\n  "samples_per_second": 12.5\n}\n'
    assert _json(out) == {"peer": "x", "samples_per_second": 12.5}
    assert _json('{"a": {"b": 1}, "samples_per_second": 3}')["samples_per_second"] == 3
    with pytest.raises(RuntimeError, match="no JSON object"):
        _json("a crash, no result")
