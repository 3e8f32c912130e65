"""SGD with momentum (PyTorch's convention), Nesterov momentum and coupled weight
decay, fused and in place: ``optimizer=sgd``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from fastdist.optim.base import Optimizer, check_beta, check_common
from fastdist.optim.blocked import for_blocks, for_blocks_of_mean

__all__ = ["SGD", "sgd", "sgd_update", "sgd_update_from_mean"]


@njit(cache=True, nogil=True)
def _sgd_block(start, stop, g, params, momentum, scale, lr, mu, weight_decay, nesterov):
    p, m = params[start:stop], momentum[start:stop]
    # Two loops rather than a branch inside one: each vectorises on its own.
    if nesterov:
        for i in range(p.shape[0]):
            d = scale * g[i] + weight_decay * p[i]
            v = mu * m[i] + d
            m[i] = v
            p[i] -= lr * (d + mu * v)
    else:
        for i in range(p.shape[0]):
            v = mu * m[i] + (scale * g[i] + weight_decay * p[i])
            m[i] = v
            p[i] -= lr * v


@njit(cache=True, nogil=True)
def sgd_update(params, momentum, grad, lr, mu, weight_decay, nesterov, scale, lo, hi):
    """d = scale*g + wd*p; v = mu*v + d; p -= lr*v (Nesterov: p -= lr*(d + mu*v))."""
    args = (params, momentum, scale, lr, mu, weight_decay, nesterov)
    for_blocks(_sgd_block, grad, lo, hi, args)


@njit(cache=True, nogil=True)
def sgd_update_from_mean(params, momentum, grads, lr, mu, weight_decay, nesterov, scale, lo, hi):
    """Same update with g = mean over the rows of ``grads``, summed in row order so the
    result is bitwise reproducible whatever the slice boundaries."""
    args = (params, momentum, scale, lr, mu, weight_decay, nesterov)
    for_blocks_of_mean(_sgd_block, grads, lo, hi, args)


@dataclass(frozen=True)
class SGD(Optimizer):
    lr: float  # defaults: the factory's signature (the config schema), stated once
    momentum: float
    weight_decay: float
    nesterov: bool
    clip_norm: float | None

    name = "sgd"
    state_names = ("momentum",)

    def __post_init__(self) -> None:
        check_common(self.lr, self.weight_decay, self.clip_norm)
        check_beta("momentum", self.momentum)

    def _hyper(self, lr, grad_scale) -> tuple:
        f32 = np.float32
        return (
            self.rate(lr),
            f32(self.momentum),
            f32(self.weight_decay),
            self.nesterov,
            f32(grad_scale),
        )

    def update(self, params, state, grad, lo, hi, step, *, lr=None, grad_scale=1.0) -> None:
        sgd_update(params, state[0], grad, *self._hyper(lr, grad_scale), lo, hi)

    def update_from_mean(
        self, params, state, grads, lo, hi, step, *, lr=None, grad_scale=1.0
    ) -> None:
        sgd_update_from_mean(params, state[0], grads, *self._hyper(lr, grad_scale), lo, hi)


def sgd(
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    clip_norm: float | None = None,
) -> SGD:
    """``optimizer=sgd``: momentum SGD (PyTorch's convention), ``d = g + weight_decay*p``
    (coupled decay), ``v = momentum*v + d``, ``p -= lr*v``; ``nesterov=true`` steps
    along ``d + momentum*v``; ``momentum=0`` is plain SGD. ``clip_norm``: clip the
    (averaged) gradient to this global L2 norm first."""
    clip = None if clip_norm is None else float(clip_norm)
    return SGD(float(lr), float(momentum), float(weight_decay), bool(nesterov), clip)
