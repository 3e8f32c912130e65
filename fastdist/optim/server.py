"""Server (outer) optimizers of federated learning, as optimizer records.

A local-update combiner (``fastdist.combiners.federated``) applies an outer optimizer
to the pseudo-gradient ``theta_start - mean_i(theta_i)`` once per round. Any
:class:`~fastdist.optim.base.Optimizer` record can serve (``outer=sgd`` is FedAvgM /
SlowMo with ``optimizer.sgd``'s own kernel); the records here are the rules that are
not ordinary optimizers:

* :class:`ServerAdaptive`: FedAdam, FedYogi and FedAdagrad exactly as in Reddi et al.
  2021, "Adaptive Federated Optimization", Algorithm 2: first moment
  ``m = b1*m + (1-b1)*g``; second moment ``v = b2*v + (1-b2)*g^2`` (Adam),
  ``v = v - (1-b2)*g^2*sign(v - g^2)`` (Yogi) or ``v = v + g^2`` (Adagrad); step
  ``p -= lr * m / (sqrt(v) + tau)``. No bias correction (the paper has none); ``tau``
  is the adaptivity floor.
* :class:`NesterovSGD`: momentum SGD with Nesterov's look-ahead (PyTorch convention:
  ``v = mu*v + g``, ``p -= lr*(g + mu*v)``), DiLoCo's outer optimizer. Used until
  ``optimizer.sgd`` grows a ``nesterov`` option of its own.

All run once per round on the worker's slice ``[lo, hi)`` of the flat vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from fastdist.errors import ConfigError
from fastdist.optim.base import Optimizer

__all__ = ["ServerAdaptive", "NesterovSGD", "server_adaptive", "nesterov_sgd"]

_RULES = {"adam": 0, "yogi": 1, "adagrad": 2}


@njit(cache=True, nogil=True)
def _adaptive_update(params, m, v, grad, lr, b1, b2, tau, rule, lo, hi):
    p, mm, vv, g = params[lo:hi], m[lo:hi], v[lo:hi], grad[lo:hi]
    for i in range(p.shape[0]):
        gi = g[i]
        g2 = gi * gi
        mm[i] = b1 * mm[i] + (np.float32(1.0) - b1) * gi
        if rule == 0:
            vv[i] = b2 * vv[i] + (np.float32(1.0) - b2) * g2
        elif rule == 1:
            vv[i] = vv[i] - (np.float32(1.0) - b2) * g2 * np.sign(vv[i] - g2)
        else:
            vv[i] = vv[i] + g2
        p[i] -= lr * mm[i] / (np.sqrt(vv[i]) + tau)


@njit(cache=True, nogil=True)
def _nesterov_update(params, momentum, grad, lr, mu, lo, hi):
    p, m, g = params[lo:hi], momentum[lo:hi], grad[lo:hi]
    for i in range(p.shape[0]):
        v = mu * m[i] + g[i]
        m[i] = v
        p[i] -= lr * (g[i] + mu * v)


class _FromMean:
    """``update_from_mean`` for records that only ever see one pseudo-gradient."""

    def update_from_mean(self, params, state, grads, lo, hi, step) -> None:
        mean = np.zeros_like(params)
        mean[lo:hi] = grads[:, lo:hi].astype(np.float64).mean(axis=0)
        self.update(params, state, mean, lo, hi, step)


@dataclass(frozen=True)
class ServerAdaptive(_FromMean, Optimizer):
    rule: str = "adam"
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    state_names = ("m", "v")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"fed{self.rule}"

    def update(self, params, state, grad, lo, hi, step) -> None:
        f = np.float32
        _adaptive_update(
            params, state[0], state[1], grad, f(self.lr), f(self.beta1), f(self.beta2),
            f(self.tau), _RULES[self.rule], lo, hi,
        )  # fmt: skip


@dataclass(frozen=True)
class NesterovSGD(_FromMean, Optimizer):
    lr: float = 0.7
    momentum: float = 0.9

    name = "nesterov"
    state_names = ("momentum",)

    def update(self, params, state, grad, lo, hi, step) -> None:
        _nesterov_update(
            params, state[0], grad, np.float32(self.lr), np.float32(self.momentum), lo, hi
        )


def server_adaptive(
    rule: str = "adam", lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> ServerAdaptive:
    """FedAdam / FedYogi / FedAdagrad's server rule (Reddi et al. 2021)."""
    if rule not in _RULES:
        raise ConfigError(f"the server rule must be one of {sorted(_RULES)}, got {rule!r}")
    if not lr > 0 or not tau > 0:
        raise ConfigError(f"outer lr and tau must be > 0, got lr={lr} tau={tau}")
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ConfigError(f"outer betas must be in [0, 1), got {beta1}, {beta2}")
    return ServerAdaptive(rule, float(lr), float(beta1), float(beta2), float(tau))


def nesterov_sgd(lr: float = 0.7, momentum: float = 0.9) -> NesterovSGD:
    """Nesterov momentum SGD (DiLoCo's outer optimizer: lr 0.7, momentum 0.9)."""
    if not lr > 0 or not 0 <= momentum < 1:
        raise ConfigError(f"outer lr must be > 0 and momentum in [0, 1), got {lr}, {momentum}")
    return NesterovSGD(float(lr), float(momentum))
