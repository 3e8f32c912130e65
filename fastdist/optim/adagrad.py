"""Adagrad (Duchi et al. 2011), fused and in place: ``optimizer=adagrad``.

Also the worked example of "how to add an optimizer" (docs): a frozen dataclass with
``name``, ``state_names`` and the two updates, an elementwise block kernel shared by
both, and a factory whose keyword arguments are the config's options.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from fastdist.errors import ConfigError
from fastdist.optim.base import Optimizer, check_common
from fastdist.optim.blocked import for_blocks, for_blocks_of_mean

__all__ = ["Adagrad", "adagrad", "adagrad_update", "adagrad_update_from_mean"]


# error_model="numpy": a float division must not test for zero (Python's error model
# does, and that branch stops LLVM vectorising the loop: 10x slower).
@njit(cache=True, nogil=True, error_model="numpy")
def _adagrad_block(start, stop, g, params, sum_sq, scale, lr, initial, eps, weight_decay):
    # The state starts at zero like every state row; the accumulator is s + initial.
    p, s = params[start:stop], sum_sq[start:stop]
    for i in range(p.shape[0]):
        gi = scale * g[i] + weight_decay * p[i]
        si = s[i] + gi * gi
        s[i] = si
        p[i] -= lr * gi / np.sqrt(si + initial + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def adagrad_update(params, s, grad, lr, initial, eps, wd, scale, lo, hi):
    for_blocks(_adagrad_block, grad, lo, hi, (params, s, scale, lr, initial, eps, wd))


@njit(cache=True, nogil=True, error_model="numpy")
def adagrad_update_from_mean(params, s, grads, lr, initial, eps, wd, scale, lo, hi):
    # The mean of each block is formed in L1 and consumed at once (fastdist.optim.blocked).
    for_blocks_of_mean(_adagrad_block, grads, lo, hi, (params, s, scale, lr, initial, eps, wd))


@dataclass(frozen=True)
class Adagrad(Optimizer):
    lr: float  # defaults: the factory's signature (the config schema), stated once
    initial_accumulator: float
    eps: float
    weight_decay: float
    clip_norm: float | None

    name = "adagrad"
    state_names = ("sum_of_squares",)

    def __post_init__(self) -> None:
        check_common(self.lr, self.weight_decay, self.clip_norm)
        if not self.initial_accumulator >= 0 or not self.eps > 0:
            raise ConfigError(
                "optimizer.initial_accumulator must be >= 0 and optimizer.eps > 0, got "
                f"{self.initial_accumulator} and {self.eps}"
            )

    def _hyper(self, lr, grad_scale) -> tuple:
        f32 = np.float32
        return (
            self.rate(lr),
            f32(self.initial_accumulator),
            f32(self.eps),
            f32(self.weight_decay),
            f32(grad_scale),
        )

    def update(self, params, state, grad, lo, hi, step, *, lr=None, grad_scale=1.0) -> None:
        adagrad_update(params, state[0], grad, *self._hyper(lr, grad_scale), lo, hi)

    def update_from_mean(
        self, params, state, grads, lo, hi, step, *, lr=None, grad_scale=1.0
    ) -> None:
        adagrad_update_from_mean(params, state[0], grads, *self._hyper(lr, grad_scale), lo, hi)


def adagrad(
    lr: float = 0.01,
    initial_accumulator: float = 0.1,
    eps: float = 1e-7,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
) -> Adagrad:
    """``optimizer=adagrad``: ``s += g^2``, ``p -= lr*g/sqrt(s + eps)`` with ``s``
    starting at ``initial_accumulator`` (optax's ``adagrad``); ``weight_decay`` is
    coupled (added to the gradient)."""
    clip = None if clip_norm is None else float(clip_norm)
    return Adagrad(float(lr), float(initial_accumulator), float(eps), float(weight_decay), clip)
