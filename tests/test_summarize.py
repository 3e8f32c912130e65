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
    assert "| synthetic | ensemble | shared | 2 | — | 2 |" in out
    assert "No runs share seeds with baseline 'grad_avg'" in out


def _fake_run(root, combiner, seed, accuracy, workers=2, overrides=(), name=None, **metrics):
    """A run directory as a multirun job leaves it: metrics.json, history.csv and
    .hydra/overrides.yaml (``overrides=None``: none, as from an older fastdist)."""
    import json

    run = root / (name or f"{combiner}-{seed}")
    run.mkdir(parents=True)
    record = {"dataset": "digits", "combiner": combiner, "workers": workers, "seed": seed}
    record.update(test_accuracy=accuracy, samples_per_second=100.0)
    record.update(test_loss=None if accuracy is None else 1 - accuracy, **metrics)
    (run / "metrics.json").write_text(json.dumps(record))
    last = "" if accuracy is None else accuracy
    (run / "history.csv").write_text(
        f"step,train_loss,test_accuracy\n0,,0.1\n5,0.5,\n10,0.25,{last}\n"
    )
    if overrides is not None:
        (run / ".hydra").mkdir()
        items = [f"combiner={combiner}", f"workers={workers}", f"seed={seed}", *overrides]
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in items))
    return run


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
    assert f"| digits | grad_avg | shared | 2 | — | 5 | {s.text()} |" in out
    diff, seeds = paired_differences(dict(enumerate(other)), dict(enumerate(base)))
    assert seeds == [0, 1, 2, 3, 4] and diff.mean == pytest.approx(0.018)
    assert f"| digits | 2 | weight_avg | shared | — | 5 | {diff.text()} |" in out
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
    "evaluations not a list": (
        _write_text(_metrics(eval_split="validation", evaluations="x", steps=10)),
        "evaluations must",
    ),
    "a text final accuracy": (
        _write_text(
            _metrics(eval_split="validation", evaluations=[{"step": 10, "accuracy": "1"}], steps=10)
        ),
        "accuracy must",
    ),
    "no final step": (
        _write_text(_metrics(eval_split="validation", evaluations=[], steps=None)),
        "steps must",
    ),
    "a text time to accuracy": (_write_text(_metrics(time_to_accuracy_step="5")), "time_to_acc"),
    "a negative time to accuracy": (_write_text(_metrics(time_to_accuracy_step=-1)), "time_to_"),
    "a text target": (_write_text(_metrics(target_accuracy="0.9")), "target_accuracy must"),
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
    assert "| digits | grad_avg | shared | 2 | — | 1 | 0.9000 |" in out
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


# ------------------------------------------------- cells, paired tests, choices


def _main_out(capsys, *argv) -> tuple[str, str]:
    main([*map(str, argv), "--no-plots"])
    return capsys.readouterr()


def _row(out: str, start: str) -> list[str]:
    """The cells of the one table line that starts with ``start``."""
    (line,) = [line for line in out.splitlines() if line.startswith(start)]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_sweep_over_two_learning_rates_does_not_pool(tmp_path, capsys):
    for lr, acc in (("0.1", 0.9), ("0.01", 0.5)):
        for seed in range(3):
            for combiner, shift in (("grad_avg", 0.0), ("weight_avg", 0.01 * (seed + 1))):
                overrides = [f"optimizer.lr={lr}", "epochs=2", "hydra.verbose=true"]
                name = f"{combiner}-{lr}-{seed}"
                _fake_run(tmp_path, combiner, seed, acc + shift, overrides=overrides, name=name)
    out, err = _main_out(capsys, tmp_path)
    assert err == ""
    fast = _row(out, "| digits | grad_avg | shared | 2 | `optimizer.lr=0.1` |")
    slow = _row(out, "| digits | grad_avg | shared | 2 | `optimizer.lr=0.01` |")
    assert fast[5] == "3" and fast[6].startswith("0.9000 ± 0.0000")
    assert slow[5] == "3" and slow[6].startswith("0.5000 ± 0.0000")
    assert "epochs=2" not in out and "hydra" not in out  # common to all; Hydra's own
    # Each candidate is paired with the baseline of its own learning rate: Δ 0.01, 0.02, 0.03.
    for lr in ("0.1", "0.01"):
        row = _row(out, f"| digits | 2 | weight_avg | shared | `optimizer.lr={lr}` |")
        assert row[5] == "3" and row[6].startswith("0.0200 ± 0.0100 [")


def test_a_candidate_without_the_baselines_setting_is_not_compared(tmp_path, capsys):
    for seed in range(2):
        _fake_run(tmp_path, "grad_avg", seed, 0.9, overrides=["optimizer.lr=0.1"])
        name = f"weight_avg-{seed}"
        _fake_run(tmp_path, "weight_avg", seed, 0.8, overrides=["optimizer.lr=0.5"], name=name)
    out, _ = _main_out(capsys, tmp_path)
    assert "No runs share seeds with baseline 'grad_avg' (" in out


def test_duplicate_seeds_warn_and_count_once(tmp_path, capsys):
    for seed, acc in enumerate((0.90, 0.92, 0.94)):
        _fake_run(tmp_path, "grad_avg", seed, acc)
        _fake_run(tmp_path, "weight_avg", seed, acc + 0.01)
    again = _fake_run(tmp_path, "weight_avg", 1, 0.10, name="weight_avg-1-rerun")
    out, err = _main_out(capsys, tmp_path)
    (line,) = err.splitlines()
    assert line == (
        f"fastdist-summarize: warning: {again}: seed 1 again in the cell of "
        f"{tmp_path / 'weight_avg-1'}: left out (the first in path order is kept)"
    )
    row = _row(out, "| digits | weight_avg | shared | 2 | — |")
    assert row[5] == "3" and row[6] == describe([0.91, 0.93, 0.95]).text()
    paired = _row(out, "| digits | 2 | weight_avg | shared | — |")
    assert paired[5] == "3" and paired[6].startswith("0.0100 ± 0.0000")


def test_runs_without_an_accuracy_warn_and_n_counts_the_values_used(tmp_path, capsys):
    for seed, acc in enumerate((0.90, None, 0.94, float("nan"))):
        _fake_run(tmp_path, "grad_avg", seed, acc)
        _fake_run(tmp_path, "weight_avg", seed, 0.95 if seed != 2 else None)
    out, err = _main_out(capsys, tmp_path)  # a None in a pair: a TypeError before
    lines = err.splitlines()
    assert len(lines) == 3 and "Traceback" not in err
    for seed in (1, 3):
        assert (
            f"fastdist-summarize: warning: {tmp_path / f'grad_avg-{seed}'}: no test accuracy "
            "(null or NaN): not counted (its cell has n=2 of 4 runs)"
        ) in lines
    row = _row(out, "| digits | grad_avg | shared | 2 | — |")
    assert row[5] == "2 of 4" and row[6] == describe([0.90, 0.94]).text()
    assert _row(out, "| digits | 2 | weight_avg |")[5] == "1"  # only seed 0 has both


def test_holm_against_a_hand_computation():
    from fastdist.cli.stats import holm

    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.02, float("nan"), 0.04])  # no test: not counted in m
    assert adjusted[0] == pytest.approx(0.04) and adjusted[2] == pytest.approx(0.04)
    assert adjusted[1] != adjusted[1]
    assert holm([0.6, 0.7]) == [1.0, 1.0] and holm([]) == []


def test_the_paired_t_test_and_tost_match_scipy_and_decide_on_constructed_data():
    from scipy import stats

    from fastdist.cli.stats import paired_test

    close = [0.001, -0.002, 0.0005, 0.0015, -0.001, 0.0]  # mean ~0, spread small
    test = paired_test(close, margin=0.01)
    assert test.p == pytest.approx(stats.ttest_1samp(close, 0).pvalue)
    lower = stats.ttest_1samp(close, -0.01, alternative="greater").pvalue
    upper = stats.ttest_1samp(close, 0.01, alternative="less").pvalue
    assert test.tost_p == pytest.approx(max(lower, upper)) and test.equivalent
    assert not paired_test(close, margin=0.001).equivalent  # the same data, a tighter margin
    assert not paired_test([0.02, 0.021, 0.019, 0.022], margin=0.01).equivalent  # a real gap
    assert not paired_test([0.05, -0.05, 0.04, -0.04], margin=0.01).equivalent  # too noisy
    assert paired_test([0.01], 0.01).p != paired_test([0.01], 0.01).p  # nan: one pair


def test_a_family_of_comparisons_is_holm_adjusted_and_marked():
    from fastdist.cli.stats import compare_family, holm, matched_differences, paired_test

    base = {0: 0.90, 1: 0.92, 2: 0.91, 3: 0.93, 4: 0.95}
    gaps = {
        "worse": (-0.050, -0.060, -0.040, -0.050, -0.055),
        "same": (0.001, -0.001, 0.0005, 0.0, -0.0005),
        "noisy": (0.05, -0.05, 0.04, -0.04, 0.0),
    }
    pairs = {
        name: ({s: base[s] + gap[s] for s in base if s != 4 or name != "noisy"}, base)
        for name, gap in gaps.items()
    }
    family = compare_family(pairs, margin=0.01)
    tests = [paired_test(matched_differences(*pairs[n])[0], 0.01) for n in gaps]
    assert [family[n].p_holm for n in gaps] == pytest.approx(holm([t.p for t in tests]))
    assert [family[n].tost_holm for n in gaps] == pytest.approx(holm([t.tost_p for t in tests]))
    assert family["noisy"].test.diff.n == 4  # seed 4 has no candidate value: left out
    assert [family[n].mark for n in gaps] == ["*", "≈", ""]
    assert (family["worse"].wins, family["worse"].losses) == (0, 5)
    assert (family["noisy"].wins, family["noisy"].losses) == (2, 2)


def test_the_paired_table_has_holm_and_tost_columns(tmp_path, capsys):
    gaps = {"weight_avg": (0.001, -0.001, 0.0005, 0.0), "local_sgd": (-0.05, -0.06, -0.04, -0.05)}
    for seed, base in enumerate((0.90, 0.92, 0.91, 0.93)):
        _fake_run(tmp_path, "grad_avg", seed, base)
        for combiner, gap in gaps.items():
            _fake_run(tmp_path, combiner, seed, base + gap[seed])
    out, _ = _main_out(capsys, tmp_path)
    from scipy import stats

    from fastdist.cli.stats import holm

    base = [0.90, 0.92, 0.91, 0.93]
    p = [
        stats.ttest_rel([b + g for b, g in zip(base, gaps[c])], base).pvalue
        for c in ("local_sgd", "weight_avg")  # the table's order
    ]
    header = _row(out, "| dataset | workers | combiner |")
    assert header[6:] == ["Δ test accuracy vs grad_avg", "p", "p (Holm)", "equivalent within ±0.01"]
    for combiner, p_raw, p_holm in zip(("local_sgd", "weight_avg"), p, holm(p)):
        row = _row(out, f"| digits | 2 | {combiner} |")
        assert float(row[7]) == pytest.approx(p_raw, abs=1e-4)
        assert float(row[8]) == pytest.approx(p_holm, abs=1e-4)
    assert _row(out, "| digits | 2 | weight_avg |")[9].startswith("yes (p=")
    assert _row(out, "| digits | 2 | local_sgd |")[9].startswith("no (p=")
    out, _ = _main_out(capsys, tmp_path, "--margin", "0.0001")
    assert _row(out, "| digits | 2 | weight_avg |")[9].startswith("no (p=")


def test_a_bad_margin_is_a_usage_error(tmp_path, capsys):
    _fake_run(tmp_path, "grad_avg", 0, 0.9)
    for margin in ("0", "-0.1", "nan", "inf", "x"):
        with pytest.raises(SystemExit) as exit_info:
            main([str(tmp_path), "--margin", margin])
        assert exit_info.value.code == 2
        assert "is not an accuracy difference in (0, 1)" in capsys.readouterr().err


def test_time_to_accuracy_is_a_censored_median_over_all_runs(tmp_path, capsys):
    from fastdist.cli.stats import censored_median

    assert censored_median([100, None, None, 200, None]) == float("inf")
    assert censored_median([100, None, 300, None]) == 300  # half reached by step 300
    assert censored_median([None, 50, 70]) == 70 and censored_median([]) != 0
    for seed, step in enumerate((100, None, None, 200, None)):
        _fake_run(tmp_path, "local_sgd", seed, 0.8, time_to_accuracy_step=step, target_accuracy=0.9)
        _fake_run(tmp_path, "grad_avg", seed, 0.9, time_to_accuracy_step=50 + 10 * seed,
                  target_accuracy=0.9)  # fmt: skip
    out, _ = _main_out(capsys, tmp_path)
    assert _row(out, "| digits | local_sgd | shared | 2 | — | 0.9 |")[6:] == ["2/5", "not reached"]
    assert _row(out, "| digits | grad_avg | shared | 2 | — | 0.9 |")[6:] == ["5/5", "70"]
    assert "| 150 |" not in out  # the mean over the two that reached it


def test_no_target_no_time_to_accuracy_table(tmp_path, capsys):
    _fake_run(tmp_path, "grad_avg", 0, 0.9)
    out, _ = _main_out(capsys, tmp_path)
    assert "Time to the target accuracy" not in out


def _with_validation(val: float, steps: int = 100, at: int = 100, split: str = "validation"):
    evaluations = [{"step": 50, "accuracy": 0.99, "loss": 0.1}]
    evaluations.append({"step": at, "accuracy": val, "loss": 0.2})
    return {"eval_split": split, "evaluations": evaluations, "steps": steps}


def test_the_validation_score_is_the_final_steps_evaluation(tmp_path, capsys):
    _fake_run(tmp_path, "grad_avg", 0, 0.9, **_with_validation(0.85))
    _fake_run(tmp_path, "weight_avg", 0, 0.9, **_with_validation(0.85, at=90))  # not final
    _fake_run(tmp_path, "local_sgd", 0, 0.9, **_with_validation(0.85, split="test"))
    out, _ = _main_out(capsys, tmp_path)
    assert _row(out, "| digits | grad_avg | shared |")[8] == "0.8500"
    assert _row(out, "| digits | weight_avg | shared |")[8] == "—"
    assert _row(out, "| digits | local_sgd | shared |")[8] == "—"


def test_select_val_picks_the_best_validation_cell_and_shows_its_test_score_only(tmp_path, capsys):
    cells = {"0.1": (0.95, 0.81), "0.01": (0.90, 0.99), "0.001": (0.70, 0.50)}  # lr: val, test
    for lr, (val, test) in cells.items():
        for seed in range(3):
            name = f"grad_avg-{lr}-{seed}"
            _fake_run(tmp_path, "grad_avg", seed, test + seed / 100, overrides=[f"lr={lr}"],
                      name=name, **_with_validation(val + seed / 100))  # fmt: skip
    main([str(tmp_path), "--select", "val", "--out", str(tmp_path / "report")])
    out, err = capsys.readouterr()
    assert err == "" and "plots skipped" not in out and "PNG" not in out
    assert _row(out, "| digits | grad_avg | shared | 2 | `lr=0.1` |")[5:] == [
        "3",
        describe([0.95, 0.96, 0.97]).text(),
        "yes",
    ]
    assert "setting `lr=0.1`." in out
    assert f"Its test accuracy: {describe([0.81, 0.82, 0.83]).text()} (n=3;" in out
    assert "0.99" not in out and "0.5000" not in out  # no other cell's test score
    assert (tmp_path / "report" / "summary.md").read_text() + "\n" in out
    assert not list((tmp_path / "report").glob("*.png"))


def test_select_val_without_validation_scores_is_a_one_line_error(tmp_path, capsys):
    _fake_run(tmp_path, "grad_avg", 0, 0.9, **_with_validation(0.8, at=90))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--select", "val"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith(f"fastdist-summarize: error: --select val: no run below {tmp_path} ")
    assert out == "" and not (tmp_path / "summary.md").exists()


def test_runs_without_overrides_are_grouped_by_their_metrics_with_one_warning(tmp_path, capsys):
    for seed in range(3):
        _fake_run(tmp_path, "grad_avg", seed, 0.9, overrides=None)
    _fake_run(tmp_path, "grad_avg", 0, 0.5, overrides=["lr=0.5"], name="with-overrides")
    out, err = _main_out(capsys, tmp_path)
    (line,) = err.splitlines()
    assert line == (
        f"fastdist-summarize: warning: 3 run(s) without .hydra/overrides.yaml (the first: "
        f"{tmp_path / 'grad_avg-0'}): grouped by dataset, combiner, init and workers only, "
        "so they pool whatever else differs"
    )
    assert _row(out, "| digits | grad_avg | shared | 2 | (no overrides file) |")[5] == "3"
    # The one run with overrides: nothing varies among such runs, yet it is a cell of its own.
    assert _row(out, "| digits | grad_avg | shared | 2 | — |")[5:7] == ["1", "0.5000"]


def test_overrides_are_text_never_resolved_and_prefixes_are_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SECRET_FOR_THE_TEST", "leaked")
    odd = ["+extra=${oc.env:SECRET_FOR_THE_TEST}", "~model.dropout", "note=a|b", "x=`y`"]
    _fake_run(tmp_path, "grad_avg", 0, 0.9, overrides=odd)
    _fake_run(tmp_path, "grad_avg", 1, 0.8, overrides=["++seed=1"], name="plain")
    out, err = _main_out(capsys, tmp_path)
    assert err == "" and "leaked" not in out
    assert (
        "| `+extra=${oc.env:SECRET_FOR_THE_TEST}` `note=a\\|b` `` x=`y` `` `~model.dropout` |"
        in out
    )
    assert "seed" not in _row(out, "| digits | grad_avg | shared | 2 | — |")[4]


HOSTILE_OVERRIDES = {
    "not a list": (_write_text("combiner: x\n"), "expected a list of key=value"),
    "a list of numbers": (_write_text("- 1\n- 2\n"), "expected a list of key=value"),
    "an escape sequence": (_write_text('- "lr=\\e[31m"\n'), "expected a list of key=value"),
    "not YAML": (_write_text("- [unclosed\n"), "not a valid overrides file ("),
    "a Python object": (_write_text("- !!python/object:os.system x\n"), "not a valid overrides"),
    "deep nesting": (_write_text("[" * 30_000 + "]" * 30_000), "not a valid overrides file"),
    "not UTF-8": (_write_bytes(b"- \xff\n"), "not a valid overrides file"),
    "too large": (lambda path: _too_large(path, 1 << 20), "over the limit"),
    "a FIFO": (lambda path: os.mkfifo(path), "not a regular file (a FIFO)"),
    "a device": (lambda path: path.symlink_to("/dev/zero"), "(a character device)"),
}


@pytest.mark.parametrize("case", HOSTILE_OVERRIDES)
def test_a_hostile_overrides_file_skips_its_run_with_one_warning(tmp_path, capsys, deadline, case):
    make, why = HOSTILE_OVERRIDES[case]
    _fake_run(tmp_path, "grad_avg", 0, 0.9)
    bad = _fake_run(tmp_path, "local_sgd", 0, 0.9, overrides=None)
    (bad / ".hydra").mkdir()
    make(bad / ".hydra" / "overrides.yaml")
    out, err = _main_out(capsys, tmp_path)  # returns: exit status 0
    assert "| digits | grad_avg | shared | 2 | — | 1 | 0.9000 |" in out and "local_sgd" not in out
    assert why in _one_warning(err, bad / ".hydra" / "overrides.yaml")
