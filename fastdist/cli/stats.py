"""Statistics over seeds for fastdist-summarize: sample std (ddof=1), 95% t-intervals,
paired differences over matched seeds. Plain Python and SciPy (a core dependency)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

__all__ = ["Summary", "describe", "paired_differences"]


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


def describe(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std and the t-interval of the mean of ``values``."""
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


def paired_differences(
    candidate: dict[int, float], baseline: dict[int, float]
) -> tuple[Summary, list[int]]:
    """``candidate - baseline`` over the seeds both have (seed -> value), and those seeds."""
    seeds = sorted(set(candidate) & set(baseline))
    return describe([candidate[s] - baseline[s] for s in seeds]), seeds
