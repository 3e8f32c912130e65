"""Statistics over seeds for fastdist-summarize: sample std (ddof=1), 95% t-intervals,
paired t-tests over matched seeds, Holm's correction across a table's comparisons, an
equivalence test (TOST) and the median of a censored time-to-accuracy. Plain Python
and SciPy (a core dependency)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

__all__ = [
    "ALPHA",
    "Comparison",
    "Paired",
    "Summary",
    "censored_median",
    "compare_family",
    "describe",
    "holm",
    "matched_differences",
    "paired_differences",
    "paired_test",
]

ALPHA = 0.05  # the level of every test and of the 95% intervals


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for one value
    low: float  # 95% t-interval of the mean; nan for one value
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def text(self, digits: int = 4) -> str:
        """``mean ± std [low, high]`` (the interval only with two values or more)."""
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return (
            f"{self.mean:.{digits}f} ± {self.std:.{digits}f} "
            f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"
        )


def describe(values: Sequence[float | None], confidence: float = 0.95) -> Summary:
    """Mean, sample std and the t-interval of the mean of ``values`` (None and NaN are
    left out: ``n`` counts the values used)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(xs) / n
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def matched_differences(
    candidate: dict[int, float | None], baseline: dict[int, float | None]
) -> tuple[list[float], list[int]]:
    """``candidate - baseline`` seed by seed over the seeds both have a value for (seed
    -> value; None is no value: a run whose evaluation failed), and those seeds."""
    seeds = sorted(
        s for s in set(candidate) & set(baseline) if None not in (candidate[s], baseline[s])
    )
    return [candidate[s] - baseline[s] for s in seeds], seeds


def paired_differences(
    candidate: dict[int, float | None], baseline: dict[int, float | None]
) -> tuple[Summary, list[int]]:
    """The summary of :func:`matched_differences`, and the seeds."""
    differences, seeds = matched_differences(candidate, baseline)
    return describe(differences), seeds


@dataclass(frozen=True)
class Paired:
    """A paired comparison: the per-seed differences, the two-sided paired t-test of
    "no difference" (``p``) and the TOST of "the difference is within ±``margin``"
    (``tost_p``: equivalent at level ALPHA when below it). Both are nan with fewer than
    two pairs or differences that are all equal (the t statistic is undefined)."""

    diff: Summary
    p: float
    tost_p: float
    margin: float

    @property
    def equivalent(self) -> bool:
        return self.tost_p < ALPHA


def paired_test(differences: Sequence[float], margin: float) -> Paired:
    """The paired t-test and the TOST on the per-seed ``differences``.

    The paired t-test is the one-sample t-test of the differences against 0 (what
    scipy.stats.ttest_rel computes). TOST (Schuirmann's two one-sided tests): the
    difference is shown to lie within ±margin when both "mean <= -margin" and "mean >=
    +margin" are rejected; its p-value is the larger of the two one-sided p-values (the
    same verdict as a 90% t-interval inside ±margin)."""
    diff = describe(differences)
    if diff.n < 2 or not diff.std > 0:
        return Paired(diff, math.nan, math.nan, margin)
    se, df = diff.std / math.sqrt(diff.n), diff.n - 1
    p = 2 * float(stats.t.sf(abs(diff.mean) / se, df))
    above_low = float(stats.t.sf((diff.mean + margin) / se, df))  # H0: mean <= -margin
    below_high = float(stats.t.cdf((diff.mean - margin) / se, df))  # H0: mean >= +margin
    return Paired(diff, p, max(above_low, below_high), margin)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given.

    Sorted ascending, the i-th smallest of m p-values (i from 1) is multiplied by
    m - i + 1, capped at 1, and made no smaller than the adjusted value before it; a
    comparison is significant at level a after correction when its adjusted p-value is
    below a (the family-wise error rate is at most a, whatever the dependence between
    the tests). NaN (no test) stays NaN and is not counted in m."""
    ranked = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of a family (:func:`compare_family`): the test, its
    t-test and TOST p-values each Holm-adjusted over the family, and the seeds on
    which the candidate won and lost."""

    test: Paired
    p_holm: float
    tost_holm: float
    wins: int
    losses: int

    @property
    def mark(self) -> str:
        """``*``: different at ALPHA, ``≈``: equivalent within the margin at ALPHA (both
        after Holm's correction over the family), ``""``: neither shown."""
        if self.p_holm < ALPHA:
            return "*"
        return "≈" if self.tost_holm < ALPHA else ""


def compare_family(
    pairs: Mapping[str, tuple[Mapping[int, float | None], Mapping[int, float | None]]],
    margin: float,
) -> dict[str, Comparison]:
    """Each ``name -> (candidate, baseline)`` (seed -> value) compared seed by seed
    (:func:`matched_differences`, :func:`paired_test`), the t-tests' and the TOSTs'
    p-values each adjusted with :func:`holm` over the whole family: a table's stars
    then hold together."""
    tests = {}
    for name, (candidate, baseline) in pairs.items():
        differences, _ = matched_differences(dict(candidate), dict(baseline))
        tests[name] = (paired_test(differences, margin), differences)
    names = list(tests)
    p = holm([tests[n][0].p for n in names])
    tost = holm([tests[n][0].tost_p for n in names])
    return {
        name: Comparison(
            test,
            p_holm,
            tost_holm,
            sum(d > 0 for d in differences),
            sum(d < 0 for d in differences),
        )
        for name, (test, differences), p_holm, tost_holm in zip(names, tests.values(), p, tost)
    }


def censored_median(steps: Sequence[int | None]) -> float:
    """The median step at which runs reached a target, counting a run that never did
    (None) as +infinity: the ceil(n/2)-th smallest step, i.e. the first step by which
    at least half of all the runs had reached it. ``math.inf`` ("not reached") when more
    than half never did; nan for no runs. A mean over the runs that reached the target
    would leave out exactly the slow ones."""
    if not steps:
        return math.nan
    ordered = sorted(math.inf if s is None else float(s) for s in steps)
    return ordered[(len(ordered) + 1) // 2 - 1]
