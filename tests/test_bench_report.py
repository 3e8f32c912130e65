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
