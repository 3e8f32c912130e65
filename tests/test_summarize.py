"""fastdist-summarize on a small, real multirun directory."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from fastdist.cli.summarize import main  # noqa: E402

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
    for name in ("accuracy_per_combiner", "accuracy_vs_workers", "interpolation_barrier"):
        png = tmp_path / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| synthetic | ensemble | shared | 2 | 2 |" in capsys.readouterr().out


def test_an_empty_directory_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("fastdist-summarize: error: no metrics.json")
