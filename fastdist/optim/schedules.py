"""Learning-rate schedules (``schedule=...``) and worker-count scaling (``lr_scaling``).

A schedule is a pure function of the global step: every worker of every combiner
computes the rate of step t itself, from (t, horizon), so they all use the same rate at
the same step without exchanging anything, and a resumed run continues on the same
curve. Schedules are multipliers of ``optimizer.lr`` (times the scaling rule's factor):

    rate(t) = optimizer.lr * scale(lr_scaling, workers) * factor(t)

``factor`` warms up linearly from 0 over the warm-up steps (optax's convention: step 0
has factor 0), then follows the schedule's shape over the remaining steps of the
horizon, from 1 down to ``final_fraction``. The horizon is ``schedule.steps`` or, when
null, the run's total steps (resume with the same total, or pin ``schedule.steps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastdist.errors import ConfigError

__all__ = [
    "LearningRate",
    "Schedule",
    "constant",
    "cosine",
    "linear",
    "lr_scale",
    "step",
    "warmup_cosine",
    "SCALING_RULES",
]

SCALING_RULES = ("none", "linear", "sqrt")


def _cosine(progress: float, final: float) -> float:
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(progress: float, final: float) -> float:
    return 1.0 + (final - 1.0) * progress


# schedule=step's defaults, for its factory and its record alike: the rate divided by
# 10 at half the horizon and again at three quarters.
STEP_GAMMA = 0.1
STEP_MILESTONES = (0.5, 0.75)


@dataclass(frozen=True)
class Schedule:
    """The record of one schedule: ``factor(step, total_steps)`` in [0, 1]."""

    name: str
    shape: str  # constant | step | cosine | linear
    warmup_steps: int | None = None
    warmup_fraction: float = 0.0
    final_fraction: float = 0.0
    steps: int | None = None  # horizon; None = the run's total steps
    gamma: float = STEP_GAMMA  # shape "step": the factor applied at each milestone
    milestones: tuple[float, ...] = STEP_MILESTONES  # shape "step": fractions of the horizon

    def __post_init__(self) -> None:
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(
                f"schedule.warmup_fraction must be in [0, 1), got {self.warmup_fraction}"
            )
        if not 0.0 <= self.final_fraction <= 1.0:
            raise ConfigError(
                f"schedule.final_fraction must be in [0, 1], got {self.final_fraction}"
            )
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"schedule.steps must be >= 1 or null, got {self.steps}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"schedule.gamma must be in (0, 1], got {self.gamma}")
        if any(not 0.0 < m < 1.0 for m in self.milestones):
            raise ConfigError(f"schedule.milestones must lie in (0, 1), got {self.milestones}")

    def horizon(self, total_steps: int) -> int:
        return int(self.steps) if self.steps is not None else int(total_steps)

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        return int(self.warmup_fraction * self.horizon(total_steps))

    def factor(self, step: int, total_steps: int) -> float:
        """The multiplier of the base rate at 0-based ``step``."""
        horizon, warm = self.horizon(total_steps), self.warmup(total_steps)
        if step < warm:
            return step / warm
        # Past the horizon the schedule holds its final value.
        progress = min(step - warm, horizon - warm) / max(horizon - warm, 1)
        if self.shape == "cosine":
            return _cosine(progress, self.final_fraction)
        if self.shape == "linear":
            return _linear(progress, self.final_fraction)
        if self.shape == "step":
            passed = sum(1 for m in self.milestones if step >= int(m * horizon))
            return self.gamma**passed
        return 1.0


def _warmup(warmup_steps: int | None, warmup_fraction: float) -> dict:
    return {
        "warmup_steps": None if warmup_steps is None else int(warmup_steps),
        "warmup_fraction": float(warmup_fraction),
    }


def constant(
    warmup_steps: int | None = None, warmup_fraction: float = 0.0, steps: int | None = None
) -> Schedule:
    """``schedule=constant``: ``optimizer.lr`` throughout (after the optional warm-up:
    with ``lr_scaling=linear`` that is Goyal et al. 2017's recipe)."""
    return Schedule("constant", "constant", **_warmup(warmup_steps, warmup_fraction), steps=steps)


def step(
    gamma: float = STEP_GAMMA,
    milestones: tuple[float, ...] = STEP_MILESTONES,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.0,
    steps: int | None = None,
) -> Schedule:
    """``schedule=step``: multiply the rate by ``gamma`` at each milestone (fractions of
    the horizon: the default divides it by 10 at half and again at three quarters)."""
    return Schedule(
        "step",
        "step",
        **_warmup(warmup_steps, warmup_fraction),
        steps=steps,
        gamma=float(gamma),
        milestones=tuple(float(m) for m in milestones),
    )


def cosine(
    final_fraction: float = 0.0,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.0,
    steps: int | None = None,
) -> Schedule:
    """``schedule=cosine``: half a cosine from the rate down to ``final_fraction`` of it
    over the horizon (Loshchilov & Hutter 2017, without restarts)."""
    return Schedule(
        "cosine",
        "cosine",
        **_warmup(warmup_steps, warmup_fraction),
        final_fraction=float(final_fraction),
        steps=steps,
    )


def warmup_cosine(
    final_fraction: float = 0.0,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.05,
    steps: int | None = None,
) -> Schedule:
    """``schedule=warmup_cosine``: linear warm-up from 0 over ``warmup_steps`` (default
    5% of the horizon), then the cosine down to ``final_fraction``."""
    return Schedule(
        "warmup_cosine",
        "cosine",
        **_warmup(warmup_steps, warmup_fraction),
        final_fraction=float(final_fraction),
        steps=steps,
    )


def linear(
    final_fraction: float = 0.0,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.0,
    steps: int | None = None,
) -> Schedule:
    """``schedule=linear``: a straight line from the rate down to ``final_fraction`` of
    it over the horizon."""
    return Schedule(
        "linear",
        "linear",
        **_warmup(warmup_steps, warmup_fraction),
        final_fraction=float(final_fraction),
        steps=steps,
    )


def lr_scale(rule: str, workers: int) -> float:
    """The factor of ``lr_scaling=rule`` for ``workers`` workers: 1, N or sqrt(N)."""
    if rule == "none":
        return 1.0
    if rule == "linear":
        return float(workers)
    if rule == "sqrt":
        return math.sqrt(workers)
    raise ConfigError(f"lr_scaling must be one of {', '.join(SCALING_RULES)}, got {rule!r}")


@dataclass(frozen=True)
class LearningRate:
    """The rate of every step of one run (picklable: the workers receive it)."""

    base: float
    scale: float
    schedule: Schedule
    total_steps: int

    @property
    def peak(self) -> float:
        return self.base * self.scale

    def __call__(self, step: int) -> float:
        return self.peak * self.schedule.factor(step, self.total_steps)

    def summary(self, scaling: str, workers: int) -> dict:
        """What metrics.json records: the rule and the effective rates."""
        last = self.total_steps - 1
        return {
            "schedule": self.schedule.name,
            "lr_base": self.base,
            "lr_scaling": scaling,
            "lr_scaling_workers": workers,
            "lr_peak": self.peak,
            "lr_first_step": self(0),
            "lr_last_step": self(last),
            "lr_warmup_steps": self.schedule.warmup(self.total_steps),
            "lr_horizon": self.schedule.horizon(self.total_steps),
        }
