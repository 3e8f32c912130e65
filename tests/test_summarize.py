"""fastdist-summarize on a small, real multirun directory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastdist.cli.stats import describe, paired_differences
from fastdist.cli.summarize import load_runs, main

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


# ------------------------------------------------------------ files from someone else


def _metrics(**changes) -> str:
    import json

    metrics = {"dataset": "digits", "combiner": "local_sgd", "workers": 2, "seed": 0}
    metrics.update(test_accuracy=0.5, test_loss=0.5)
    metrics.update(changes)
    return json.dumps(metrics)


def _write_text(text):
    return lambda path: path.write_text(text)


def _write_bytes(data):
    return lambda path: path.write_bytes(data)


def _too_large(path, size=5 << 20):
    with path.open("wb") as fh:
        fh.truncate(size)  # sparse: zeros that use no disk


HOSTILE_METRICS = {
    "200,000 nested lists": (_write_text("[" * 200_000 + "]" * 200_000), "nested deeper than"),
    "a combiner that is an object": (_write_text(_metrics(combiner={"x": 1})), "combiner must"),
    "a text accuracy": (_write_text(_metrics(test_accuracy="0.9")), "test_accuracy must"),
    "an infinite loss": (_write_text(_metrics(test_loss=float("inf"))), "test_loss must"),
    "workers true": (_write_text(_metrics(workers=True)), "workers must"),
    "workers as text": (_write_text(_metrics(workers="2")), "workers must"),
    "no seed": (_write_text(_metrics(seed=None)), "seed must"),
    "a 5,000-digit seed": (_write_text(_metrics()[:-1] + ', "x": ' + "9" * 5000 + "}"), "JSON"),
    "a table-breaking name": (_write_text(_metrics(dataset="a | b")), "dataset must"),
    "a mathtext name": (_write_text(_metrics(combiner="$\\frac$")), "combiner must"),
    "an escape sequence": (_write_text(_metrics(dataset="\x1b[31mred")), "dataset must"),
    "a list": (_write_text("[1, 2]"), "not an object"),
    "not JSON": (_write_text("{'dataset': 'digits'"), "not valid JSON"),
    "not UTF-8": (_write_bytes(b"\xff\xfe{}"), "not UTF-8"),
    "too large": (_too_large, "over the limit"),
    "a ragged interpolation": (
        _write_text(_metrics(interpolation={"alpha": [0, 1], "test_accuracy": [0.5]})),
        "interpolation",
    ),
    "a FIFO": (lambda path: os.mkfifo(path), "not a regular file (a FIFO)"),
    "a directory": (lambda path: path.mkdir(), "not a regular file (a directory)"),
    "a device": (lambda path: path.symlink_to("/dev/null"), "(a character device)"),
}


def _one_warning(err: str, path) -> str:
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"fastdist-summarize: warning: skipped {path}: "), line
    return line


@pytest.mark.parametrize("case", HOSTILE_METRICS)
def test_a_hostile_metrics_file_is_skipped_with_one_warning(tmp_path, capsys, deadline, case):
    make, why = HOSTILE_METRICS[case]
    _fake_run(tmp_path, "grad_avg", 0, 0.9)
    (tmp_path / "bad").mkdir()
    make(tmp_path / "bad" / "metrics.json")
    main([str(tmp_path), "--no-plots"])  # returns: exit status 0
    out, err = capsys.readouterr()
    assert "| digits | grad_avg | shared | 2 | 1 | 0.9000 |" in out
    assert "local_sgd" not in out
    assert why in _one_warning(err, tmp_path / "bad" / "metrics.json")


def test_only_hostile_files_is_a_one_line_error_without_traceback(tmp_path, deadline):
    for case, (make, _) in list(HOSTILE_METRICS.items())[:3]:
        (tmp_path / case).mkdir()
        make(tmp_path / case / "metrics.json")
    os.mkfifo(tmp_path / "metrics.json")
    proc = subprocess.run(
        [sys.executable, "-m", "fastdist.cli.summarize", str(tmp_path), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 5 and all(line.count(": warning: skipped ") for line in lines[:4])
    assert lines[-1] == (
        f"fastdist-summarize: error: no usable metrics.json (4 skipped) below {tmp_path}"
    )


HOSTILE_HISTORY = {
    "no step column": (_write_text("a,b\n1,2\n"), "no header with a step column"),
    "too large": (lambda path: _too_large(path, 33 << 20), "over the limit"),
    "not UTF-8": (_write_bytes(b"step\n\xff\n"), "not UTF-8"),
    "a FIFO": (lambda path: os.mkfifo(path), "not a regular file (a FIFO)"),
    "a directory": (lambda path: path.mkdir(), "not a regular file (a directory)"),
    "a field over csv's limit": (_write_text("step\n" + "1" * 200_000 + "\n"), "not a CSV"),
}


@pytest.mark.parametrize("case", HOSTILE_HISTORY)
def test_a_hostile_history_is_ignored_with_one_warning(tmp_path, capsys, deadline, case):
    make, why = HOSTILE_HISTORY[case]
    _fake_run(tmp_path, "grad_avg", 0, 0.9)
    history = tmp_path / "grad_avg-0" / "history.csv"
    history.unlink()
    make(history)
    runs = load_runs(tmp_path)
    assert len(runs) == 1 and runs[0]["history"] == [] and runs[0]["test_accuracy"] == 0.9
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fastdist-summarize: warning: ignored {history}: ") and why in line


def test_malformed_history_rows_are_skipped_with_one_warning(tmp_path, capsys):
    _fake_run(tmp_path, "grad_avg", 0, 0.9)
    history = tmp_path / "grad_avg-0" / "history.csv"
    history.write_text(
        "step,train_loss,test_accuracy\n0,,0.1\nx,1,1\n5,inf,\n6,0.5\n7,[1],\n-1,0.2,\n"
        "10,0.25,0.9\n"
    )
    (run,) = load_runs(tmp_path)
    assert run["history"] == [
        {"step": 0, "train_loss": None, "test_accuracy": 0.1},
        {"step": 10, "train_loss": 0.25, "test_accuracy": 0.9},
    ]
    err = capsys.readouterr().err
    assert err == f"fastdist-summarize: warning: {history}: skipped 5 malformed row(s)\n"


def test_interpolation_paths_over_other_points_are_not_averaged(tmp_path):
    pytest.importorskip("matplotlib")
    import json

    for seed, points in enumerate((3, 5)):
        _fake_run(tmp_path, "weight_avg", seed, 0.9)
        metrics = tmp_path / f"weight_avg-{seed}" / "metrics.json"
        path = {"alpha": [i / (points - 1) for i in range(points)]}
        path["test_accuracy"] = [0.5] * points
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "interpolation": path}))
    main([str(tmp_path)])  # an IndexError before: the second path is longer
    assert (tmp_path / "interpolation_barrier.png").is_file()


def test_a_fifo_or_link_left_at_an_output_is_replaced_or_refused(tmp_path, capsys, deadline):
    _fake_run(tmp_path, "grad_avg", 0, 0.9)
    os.mkfifo(tmp_path / "summary.md")  # opening it to write would block
    main([str(tmp_path), "--no-plots"])
    assert (tmp_path / "summary.md").is_file()  # a new file in its place
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "summary.md").unlink()
    (tmp_path / "summary.md").symlink_to(victim)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--no-plots"])
    assert exit_info.value.code == 2 and victim.read_text() == "keep"
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"fastdist-summarize: error: cannot write to {tmp_path}: {tmp_path / 'summary.md'} "
        "is a symbolic link; refusing to write through it"
    )
