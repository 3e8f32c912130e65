"""What every optimizer record provides: state rows in the arena, and an update on a
slice of the flat vectors.

Like an optax ``GradientTransformation``, an optimizer is a small frozen record made by
the factory that ``conf/optimizer/<name>.yaml`` names in ``_target_``. Its state is a
fixed number of float32 vectors the size of the parameters (``state_names``), held in
the shared arena next to the parameters. Updates take ``[lo, hi)`` bounds so that under
``grad_avg`` worker k averages and applies only slice k of the shared vectors (a
reduce-scatter fused with a sharded optimizer step): every byte of the gradients is
read once, by one worker.

The learning rate of a step comes from outside (``lr=``: the schedule's value at the
global step, :mod:`fastdist.optim.schedules`), and so does the gradient's scale
(``grad_scale=``: global-norm clipping, :mod:`fastdist.optim.clipping`, needs the norm
of the whole averaged gradient, which no single slice knows). Without them an update
uses the record's base rate ``lr`` and the gradient as it is.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from fastdist.errors import ConfigError

__all__ = ["Optimizer", "check_beta", "check_common"]


class Optimizer(abc.ABC):
    """The record of one optimizer. Subclasses are frozen dataclasses (picklable) with
    at least the fields ``lr`` (base rate) and ``clip_norm`` (None: no clipping)."""

    name: str = "optimizer"
    # One float32 vector per name, as long as the parameters, zero at the start.
    state_names: tuple[str, ...] = ()
    lr: float
    clip_norm: float | None

    @abc.abstractmethod
    def update(
        self,
        params: np.ndarray,
        state: Sequence[np.ndarray],
        grad: np.ndarray,
        lo: int,
        hi: int,
        step: int,
        *,
        lr: float | None = None,
        grad_scale: float = 1.0,
    ) -> None:
        """Apply ``grad_scale * grad`` to ``params[lo:hi]`` and ``state[s][lo:hi]`` in
        place at rate ``lr`` (default: the base rate). ``step`` counts the updates
        before this one (bias correction)."""

    @abc.abstractmethod
    def update_from_mean(
        self,
        params: np.ndarray,
        state: Sequence[np.ndarray],
        grads: np.ndarray,
        lo: int,
        hi: int,
        step: int,
        *,
        lr: float | None = None,
        grad_scale: float = 1.0,
    ) -> None:
        """The same update with the gradient = the mean over the rows of ``grads``
        (summed in row order, so bitwise reproducible whatever the slice bounds)."""

    def rate(self, lr: float | None) -> np.float32:
        return np.float32(self.lr if lr is None else lr)


def check_common(lr: float, weight_decay: float, clip_norm: float | None) -> None:
    """The checks every optimizer's options share (one-line ConfigErrors)."""
    if not lr > 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {lr}")
    if not weight_decay >= 0:
        raise ConfigError(f"optimizer.weight_decay must be >= 0, got {weight_decay}")
    if clip_norm is not None and not clip_norm > 0:
        raise ConfigError(f"optimizer.clip_norm must be > 0 or null, got {clip_norm}")


def check_beta(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"optimizer.{name} must be in [0, 1), got {value}")
