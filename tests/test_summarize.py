"""fastdist-summarize on a small, real multirun directory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastdist.cli.stats import describe, paired_differences
from fastdist.cli.summarize import main

TINY = [
    "dataset=synthetic",
    "dataset.n_train=320",
    "dataset.n_test=100",
    "dataset.n_features=8",
    "dataset.n_classes=3",
    "model.hidden=[8]",
    "batch_size=16",
    "epochs=2",
]


def test_table_and_plots_from_a_real_sweep(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastdist",
            "-m",
            *TINY,
            "combiner=weight_avg,ensemble",
            "workers=1,2",
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    main([str(sweep), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "summary.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| synthetic")]
    assert len(rows) == 4  # 2 combiners x 2 worker counts, seeds aggregated
    assert all("| 2 | " in row and " ± " in row for row in rows)
    names = ("accuracy_per_combiner", "accuracy_vs_workers", "interpolation_barrier")
    for name in (*names, "learning_curves"):
        png = tmp_path / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "| synthetic | ensemble | shared | 2 | 2 |" in out
    assert "No runs share seeds with baseline 'grad_avg'" in out


def _fake_run(root, combiner, seed, accuracy, workers=2):
    import json

    run = root / f"{combiner}-{seed}"
    run.mkdir(parents=True)
    metrics = {"dataset": "digits", "combiner": combiner, "workers": workers, "seed": seed}
    metrics.update(test_accuracy=accuracy, test_loss=1 - accuracy, samples_per_second=100.0)
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "history.csv").write_text(
        f"step,train_loss,test_accuracy\n0,,0.1\n5,0.5,\n10,0.25,{accuracy}\n"
    )


def test_tables_report_ddof1_t_intervals_and_paired_differences(tmp_path, capsys, monkeypatch):
    base = [0.90, 0.92, 0.91, 0.93, 0.89]
    other = [0.93, 0.94, 0.92, 0.95, 0.90, 0.99]  # one more seed: not paired
    for seed, acc in enumerate(base):
        _fake_run(tmp_path, "grad_avg", seed, acc)
    for seed, acc in enumerate(other):
        _fake_run(tmp_path, "weight_avg", seed, acc)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the experiments extra blocked
    main([str(tmp_path), "--baseline", "grad_avg"])
    out = capsys.readouterr().out
    s = describe(base)
    assert s.std == pytest.approx(0.015811388, rel=1e-6)  # ddof=1
    assert s.half_width == pytest.approx(2.776445 * 0.015811388 / 5**0.5, rel=1e-5)
    assert f"| digits | grad_avg | shared | 2 | 5 | {s.text()} |" in out
    diff, seeds = paired_differences(dict(enumerate(other)), dict(enumerate(base)))
    assert seeds == [0, 1, 2, 3, 4] and diff.mean == pytest.approx(0.018)
    assert f"| digits | 2 | weight_avg | shared | 5 | {diff.text()} |" in out
    assert "plots skipped: they need matplotlib: pip install 'fastdist[experiments]'" in out


def test_an_empty_directory_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("fastdist-summarize: error: no metrics.json")
