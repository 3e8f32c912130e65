"""Adam with decoupled weight decay (Loshchilov & Hutter 2019), fused and in place:
``optimizer=adamw``; ``weight_decay=0`` is Adam (Kingma & Ba 2015).

Two state vectors (first and second moment). The bias corrections depend only on the
step, so they are computed once per step on the host and the kernel stays one pass
over p, m, v and g: the update is memory-bound like SGD's, with one more vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from fastdist.errors import ConfigError
from fastdist.optim.base import Optimizer, check_beta, check_common
from fastdist.optim.blocked import for_blocks, for_blocks_of_mean

__all__ = ["AdamW", "adamw", "adamw_update", "adamw_update_from_mean"]


@njit(cache=True, nogil=True, error_model="numpy")
def _adamw_block(start, stop, g, params, first, second, scale, lr, b1, b2, eps, wd, c1, c2):
    # c1 = 1/(1 - b1^t), c2 = 1/(1 - b2^t): the bias corrections of step t.
    p, m, v = params[start:stop], first[start:stop], second[start:stop]
    one = np.float32(1.0)
    for i in range(p.shape[0]):
        gi = scale * g[i]
        mi = b1 * m[i] + (one - b1) * gi
        vi = b2 * v[i] + (one - b2) * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] -= lr * ((mi * c1) / (np.sqrt(vi * c2) + eps) + wd * p[i])


@njit(cache=True, nogil=True, error_model="numpy")
def adamw_update(params, m, v, grad, lr, b1, b2, eps, wd, c1, c2, scale, lo, hi):
    args = (params, m, v, scale, lr, b1, b2, eps, wd, c1, c2)
    for_blocks(_adamw_block, grad, lo, hi, args)


@njit(cache=True, nogil=True, error_model="numpy")
def adamw_update_from_mean(params, m, v, grads, lr, b1, b2, eps, wd, c1, c2, scale, lo, hi):
    args = (params, m, v, scale, lr, b1, b2, eps, wd, c1, c2)
    for_blocks_of_mean(_adamw_block, grads, lo, hi, args)


@dataclass(frozen=True)
class AdamW(Optimizer):
    lr: float  # defaults: the factory's signature (the config schema), stated once
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    clip_norm: float | None

    name = "adamw"
    state_names = ("first_moment", "second_moment")

    def __post_init__(self) -> None:
        check_common(self.lr, self.weight_decay, self.clip_norm)
        check_beta("beta1", self.beta1)
        check_beta("beta2", self.beta2)
        if not self.eps > 0:
            raise ConfigError(f"optimizer.eps must be > 0, got {self.eps}")

    def _hyper(self, step: int, lr, grad_scale) -> tuple:
        f32, t = np.float32, step + 1
        # 1 - beta^t in float64 (expm1/log1p keep it exact for beta near 1).
        c1 = 1.0 / -math.expm1(t * math.log(self.beta1)) if self.beta1 > 0 else 1.0
        c2 = 1.0 / -math.expm1(t * math.log(self.beta2)) if self.beta2 > 0 else 1.0
        return (
            self.rate(lr),
            f32(self.beta1),
            f32(self.beta2),
            f32(self.eps),
            f32(self.weight_decay),
            f32(c1),
            f32(c2),
            f32(grad_scale),
        )

    def update(self, params, state, grad, lo, hi, step, *, lr=None, grad_scale=1.0) -> None:
        adamw_update(params, state[0], state[1], grad, *self._hyper(step, lr, grad_scale), lo, hi)

    def update_from_mean(
        self, params, state, grads, lo, hi, step, *, lr=None, grad_scale=1.0
    ) -> None:
        hyper = self._hyper(step, lr, grad_scale)
        adamw_update_from_mean(params, state[0], state[1], grads, *hyper, lo, hi)


def adamw(
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    clip_norm: float | None = None,
) -> AdamW:
    """``optimizer=adamw``: ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g^2``,
    ``p -= lr*(m_hat/(sqrt(v_hat) + eps) + weight_decay*p)`` with bias-corrected
    ``m_hat``, ``v_hat`` (PyTorch's and optax's AdamW). ``weight_decay=0`` is Adam."""
    clip = None if clip_norm is None else float(clip_norm)
    return AdamW(float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), clip)
