"""What every optimizer record provides: state rows in the arena, and an update on a
slice of the flat vectors.

Like an optax ``GradientTransformation``, an optimizer is a small frozen record made by
the factory that ``conf/optimizer/<name>.yaml`` names in ``_target_``. Its state is a
fixed number of float32 vectors the size of the parameters (``state_names``), held in
the shared arena next to the parameters. Updates take ``[lo, hi)`` bounds so that under
``grad_avg`` worker k averages and applies only slice k of the shared vectors (a
reduce-scatter fused with a sharded optimizer step): every byte of the gradients is
read once, by one worker.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

__all__ = ["Optimizer"]


class Optimizer(abc.ABC):
    """The record of one optimizer. Subclasses are frozen dataclasses (picklable)."""

    name: str = "optimizer"
    # One float32 vector per name, as long as the parameters, zero at the start.
    state_names: tuple[str, ...] = ()

    @abc.abstractmethod
    def update(
        self,
        params: np.ndarray,
        state: Sequence[np.ndarray],
        grad: np.ndarray,
        lo: int,
        hi: int,
        step: int,
    ) -> None:
        """Apply ``grad`` to ``params[lo:hi]`` and ``state[s][lo:hi]`` in place.
        ``step`` counts the updates before this one (schedules, bias correction)."""

    @abc.abstractmethod
    def update_from_mean(
        self,
        params: np.ndarray,
        state: Sequence[np.ndarray],
        grads: np.ndarray,
        lo: int,
        hi: int,
        step: int,
    ) -> None:
        """The same update with the gradient = the mean over the rows of ``grads``
        (summed in row order, so bitwise reproducible whatever the slice bounds)."""
