"""The Markdown tables of fastdist-summarize's summary.md, one function each, from the
cells of cells.py: the summary per cell, the paired comparisons against a baseline,
the time to a target accuracy, and the choice of a setting by validation score."""

from __future__ import annotations

import math

from fastdist.cli.cells import Cell, baseline_of
from fastdist.cli.stats import (
    ALPHA,
    Summary,
    censored_median,
    describe,
    holm,
    matched_differences,
    paired_test,
)

__all__ = ["paired_table", "selection_report", "summary_table", "time_to_target_table"]

_COLUMNS = "| dataset | combiner | init | workers | setting "
_ALIGN = "| --- | --- | --- | ---: | --- "


def _columns(cell: Cell) -> str:
    names = (cell.dataset, cell.combiner, cell.init, cell.workers, cell.setting_text)
    return "".join(f"| {name} " for name in names)


def _values(summary: Summary, n: int | None = None) -> str:
    """``mean ± std [interval]``; ``(n=k)`` when it rests on another count than ``n``."""
    if summary.n == 0:
        return "—"
    return summary.text() + ("" if n is None or summary.n == n else f" (n={summary.n})")


def _p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def summary_table(cells: list[Cell]) -> str:
    """One line per cell: n, then mean ± sample std [95% t-interval] over its seeds."""
    lines = [
        "## Per setting",
        "",
        _COLUMNS + "| n | test accuracy | test loss | val accuracy | samples/s |",
        _ALIGN + "| ---: | --- | --- | --- | ---: |",
    ]
    for cell in cells:
        acc = describe(cell.values("test_accuracy"))
        n = str(acc.n) if acc.n == len(cell.runs) else f"{acc.n} of {len(cell.runs)}"
        loss = _values(describe(cell.values("test_loss")), acc.n)
        val = _values(describe(cell.values("validation_accuracy")), acc.n)
        speed = describe(cell.values("samples_per_second"))
        speed_text = "—" if speed.n == 0 else f"{speed.mean:.0f}"
        lines.append(_columns(cell) + f"| {n} | {_values(acc)} | {loss} | {val} | {speed_text} |")
    lines += [
        "",
        'n: the runs with a test accuracy (one per seed; "k of m": m runs in the cell, the '
        "warnings name the others). Values: mean ± sample std (ddof=1) [95% t-interval of "
        "the mean] over seeds; (n=k) where a column has another count. setting: the "
        "overrides that tell a cell from the others (those common to every run, and "
        "dataset, combiner and workers, which have columns, are not repeated); runs that "
        "differ in any override but the seed are never pooled. val accuracy: the last "
        "evaluation on the validation split at the run's final step.",
    ]
    return "\n".join(lines) + "\n"


def paired_table(cells: list[Cell], baseline: str, margin: float) -> str:
    """Test accuracy minus the baseline's, seed by seed, for every cell that has a
    baseline cell (the same setting but the combiner): the mean difference with its
    t-interval, the paired t-test, Holm's correction across the table, and a TOST of
    equivalence within ±``margin``."""
    rows = []
    for cell in cells:
        base = baseline_of(cell, cells, baseline)
        if base is None:
            continue
        differences, seeds = matched_differences(
            cell.by_seed("test_accuracy"), base.by_seed("test_accuracy")
        )
        if seeds:
            rows.append((cell, paired_test(differences, margin)))
    if not rows:
        return (
            f"No runs share seeds with baseline {baseline!r} (a {baseline} cell of the same "
            "setting, both runs of a seed with a test accuracy).\n"
        )
    adjusted = holm([test.p for _, test in rows])
    lines = [
        f"## Against {baseline}, seed by seed",
        "",
        f"| dataset | workers | combiner | init | setting | pairs | Δ test accuracy vs "
        f"{baseline} | p | p (Holm) | equivalent within ±{margin:g} |",
        "| --- | ---: | --- | --- | --- | ---: | --- | --- | --- | --- |",
    ]
    for (cell, test), p_holm in zip(rows, adjusted):
        equivalent = (
            "—"
            if math.isnan(test.tost_p)
            else (f"{'yes' if test.equivalent else 'no'} (p={_p(test.tost_p)})")
        )
        lines.append(
            f"| {cell.dataset} | {cell.workers} | {cell.combiner} | {cell.init} "
            f"| {cell.setting_text} | {test.diff.n} | {test.diff.text()} | {_p(test.p)} "
            f"| {_p(p_holm)} | {equivalent} |"
        )
    tested = sum(not math.isnan(p) for p in adjusted)
    lines += [
        "",
        f"Paired over the seeds both ran, against the {baseline} cell with the same "
        "overrides but the combiner. Δ: mean ± sample std [95% t-interval] of the per-seed "
        "difference. p: two-sided paired t-test of Δ = 0. p (Holm): Holm–Bonferroni over "
        f"the {tested} tests of this table (below {ALPHA:g}: a difference at the "
        f"{ALPHA:.0%} family-wise level). equivalent: TOST, two one-sided paired t-tests "
        f'at {ALPHA:g} (uncorrected) that Δ lies within ±{margin:g} (--margin): "yes" '
        'supports "as good as the baseline"; "no" only says equivalence is not shown (it '
        "is no evidence of a difference). —: fewer than two pairs, or every difference "
        "the same.",
    ]
    return "\n".join(lines) + "\n"


def _step(step: float) -> str:
    return "not reached" if math.isinf(step) else f"{step:.0f}"


def time_to_target_table(cells: list[Cell]) -> str:
    """Per cell whose runs tracked a target accuracy: how many reached it, and the
    median step over all of them (empty text when no run tracked one)."""
    lines = [
        "## Time to the target accuracy",
        "",
        _COLUMNS + "| target | reached | median step |",
        _ALIGN + "| --- | ---: | ---: |",
    ]
    for cell in cells:
        tracked = [r for r in cell.runs if r.get("tracks_target")]
        if not tracked:
            continue
        steps = [r["time_to_accuracy_step"] for r in tracked]
        targets = sorted({r["target_accuracy"] for r in tracked} - {None})
        reached = sum(s is not None for s in steps)
        lines.append(
            _columns(cell) + f"| {', '.join(f'{t:g}' for t in targets) or '—'} "
            f"| {reached}/{len(steps)} | {_step(censored_median(steps))} |"
        )
    if len(lines) == 4:  # the heading and the header: no run tracked a target
        return ""
    lines += [
        "",
        "reached: the runs (one per seed) that reached the target accuracy "
        "(eval.target_accuracy), of those that tracked it. median step: over all of them, "
        "a run that never reached it counted as +infinity: the first step by which half "
        'the runs had reached it, "not reached" when more than half never did (a mean '
        "over the runs that reached it would leave out the slow ones).",
    ]
    return "\n".join(lines) + "\n"


def selection_report(cells: list[Cell]) -> str | None:
    """The cell with the highest mean validation accuracy and its test accuracy, the
    only test score shown (None when no run has a validation score)."""
    scored = [(cell, describe(cell.values("validation_accuracy"))) for cell in cells]
    scored = [(cell, val) for cell, val in scored if val.n]
    if not scored:
        return None
    chosen, best = max(scored, key=lambda pair: pair[1].mean)  # a tie: the first
    lines = [
        "## Chosen by validation accuracy",
        "",
        _COLUMNS + "| n (val) | val accuracy | chosen |",
        _ALIGN + "| ---: | --- | --- |",
    ]
    for cell, val in scored:
        mark = "yes" if cell is chosen else ""
        lines.append(_columns(cell) + f"| {val.n} | {val.text()} | {mark} |")
    test = describe(chosen.values("test_accuracy"))
    tied = sum(val.mean == best.mean for _, val in scored) - 1
    tie = f"; tied with {tied} other(s), the first in table order taken" if tied else ""
    lines += [
        "",
        f"Chosen by the highest mean validation accuracy ({best.mean:.4f}, n={best.n}"
        f"{tie}): dataset {chosen.dataset}, combiner {chosen.combiner}, init "
        f"{chosen.init}, workers {chosen.workers}, setting {chosen.setting_text}.",
        "",
        f"Its test accuracy: {_values(test)} (n={test.n}; mean ± sample std (ddof=1) "
        "[95% t-interval of the mean]). The test set was looked at for the chosen "
        "setting only: it played no part in the choice.",
    ]
    return "\n".join(lines) + "\n"
