"""fastdist's samples/s after the same warm-up steps its peers leave untimed.

A fastdist run reports samples/s over every step from the first; the peers time their
steps after ``--warmup`` untimed ones. A benchmark runs fastdist for ``warmup + steps``
steps with ``history.every=warmup`` and takes the rate of the history windows after the
first: the same steps, timed the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["rate_after"]


def rate_after(history: Iterable[Mapping], warmup: int) -> float:
    """samples/s over the history rows' windows that end after step ``warmup``.

    Rows are history.csv's (strings) or ``RunResult.history``'s (numbers); the step-0
    row and evaluation-only rows have no rate and only mark where a window starts."""
    samples = seconds = previous = 0.0
    for row in history:
        now = float(row["wall_time"])
        rate = row.get("samples_per_second")
        if rate not in (None, "") and int(row["step"]) > warmup:
            samples += float(rate) * (now - previous)
            seconds += now - previous
        previous = now
    if seconds <= 0:
        raise RuntimeError(f"no history window after step {warmup}")
    return samples / seconds
