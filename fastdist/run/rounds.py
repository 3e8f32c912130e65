"""The worker's side of local-update rounds (``fastdist.combiners.federated``).

Arena arrays (created by the coordinator when the combiner has a ``RoundPlan``):

* ``anchor`` (P,): the server model theta, where every round starts;
* ``pseudo_grad`` (P,): scratch for the round's mean / pseudo-gradient;
* ``outer_state`` (S, P): the outer optimizer's state (S = its ``state_names``);
* ``controls`` (N + 1, P): SCAFFOLD's control variates, c_i in row i, c in row N;
* ``control_sums`` (N, P): SCAFFOLD: each worker's sum of its raw local gradients
  over the current round.

At the end of a round worker k reduces and updates slice k of every vector between
barriers, like parameter averaging: O(P/N) work per worker, plus, under SCAFFOLD, the
update of its own control variate (O(P), as each client computes its own).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastdist.combiners.base import Combiner
from fastdist.engine.allreduce import mean_rows_into, slice_bounds
from fastdist.errors import ConfigError

__all__ = ["LocalRounds", "ROUND_STATE", "round_arrays", "check_rounds"]

# The arrays a checkpoint must hold besides the parameters and optimizer state.
ROUND_STATE = ("anchor", "outer_state", "controls", "control_sums")


def round_arrays(combiner: Combiner, workers: int, size: int) -> dict:
    """Name -> (shape, dtype) of the arena arrays the combiner's rounds need."""
    plan = combiner.schedule.rounds
    if plan is None:
        return {}
    arrays = {"anchor": ((size,), np.float32), "pseudo_grad": ((size,), np.float32)}
    if plan.outer is not None and plan.outer.state_names:
        arrays["outer_state"] = ((len(plan.outer.state_names), size), np.float32)
    if plan.scaffold:
        arrays["controls"] = ((workers + 1, size), np.float32)
        arrays["control_sums"] = ((workers, size), np.float32)
    return arrays


def check_rounds(combiner: Combiner, optimizer, dist: str) -> None:
    """Refuse what rounds cannot do, before any worker starts."""
    plan = combiner.schedule.rounds
    if plan is None:
        return
    if dist != "local":
        raise ConfigError(f"{combiner.name} runs on one machine for now: use dist=local")


@njit(cache=True, nogil=True)
def _correct(grad, params, anchor, mu, c, ci, acc, scaffold):
    """SCAFFOLD: acc += grad (the raw gradient), grad += c - c_i; FedProx: grad +=
    mu*(params - anchor). In place, one pass."""
    for i in range(grad.shape[0]):
        g = grad[i]
        if scaffold:
            acc[i] += g
            g += c[i] - ci[i]
        if mu != 0:
            g += mu * (params[i] - anchor[i])
        grad[i] = g


@njit(cache=True, nogil=True)
def _weighted_mean_into(rows, weights, out, lo, hi):
    """out[lo:hi] = sum_r weights[r] * rows[r, lo:hi], rows in order, zeros skipped."""
    o = out[lo:hi]
    for i in range(o.shape[0]):
        o[i] = 0
    for r in range(rows.shape[0]):
        w = weights[r]
        if w == 0:
            continue
        row = rows[r, lo:hi]
        for i in range(o.shape[0]):
            o[i] += w * row[i]


class LocalRounds:
    """One worker's view of the rounds: who trains, gradient corrections, the sync."""

    def __init__(self, arena, plan, *, rank, n_workers, seed, total_steps, shards):
        self.plan, self.rank, self.n = plan, rank, n_workers
        self.seed, self.total = seed, total_steps
        self.anchor, self.pseudo = arena["anchor"], arena["pseudo_grad"]
        self.outer_state = list(arena["outer_state"]) if "outer_state" in arena else []
        self.controls = arena["controls"] if plan.scaffold else None
        self.sums = arena["control_sums"] if plan.scaffold else None
        self.lo, self.hi = slice_bounds(self.anchor.shape[0], n_workers, rank)
        self.sizes = np.array([hi - lo for lo, hi in shards], dtype=np.float64)
        self.mu = np.float32(plan.prox_mu)
        self._cached: tuple[int, np.ndarray] = (-1, np.arange(n_workers))

    def members(self, step: int) -> np.ndarray:
        r = step // self.plan.period
        if self._cached[0] != r:
            self._cached = (r, self.plan.participants(self.seed, r, self.n))
        return self._cached[1]

    def trains(self, step: int) -> bool:
        return self.rank in self.members(step)

    def sync_at(self, step: int) -> bool:
        return self.plan.sync_at(step, self.total)

    def correct(self, grad: np.ndarray, params: np.ndarray) -> None:
        """FedProx / SCAFFOLD terms added to the local gradient before the step."""
        if self.controls is not None:
            c, ci = self.controls[self.n], self.controls[self.rank]
            _correct(grad, params, self.anchor, self.mu, c, ci, self.sums[self.rank], True)
        elif self.mu != 0:
            _correct(grad, params, self.anchor, self.mu, grad, grad, grad, False)

    def _weights(self, members: np.ndarray) -> np.ndarray | None:
        """Per-row weights of the mean; None for the plain mean over all rows."""
        uniform = self.plan.weighting == "uniform"
        if uniform and len(members) == self.n:
            return None
        w = np.zeros(self.n, dtype=np.float64)
        w[members] = 1.0 if uniform else self.sizes[members]
        return (w / w.sum()).astype(np.float32)

    def sync(self, barrier, step: int, param_rows: np.ndarray, state_rows: np.ndarray) -> None:
        """End of the round containing ``step``: the outer step on slice k, then every
        row restarts from the new server model."""
        plan, lo, hi = self.plan, self.lo, self.hi
        r = step // plan.period
        members = self.members(step)
        barrier.wait()  # every participant's row holds its round's result
        weights = self._weights(members)
        if weights is None:
            mean_rows_into(param_rows, self.pseudo, lo, hi)
        else:
            _weighted_mean_into(param_rows, weights, self.pseudo, lo, hi)
        if self.controls is not None:
            self._server_control(step - r * plan.period + 1, members, barrier)
        anchor = self.anchor
        if plan.outer is None:
            anchor[lo:hi] = self.pseudo[lo:hi]
        else:
            np.subtract(anchor[lo:hi], self.pseudo[lo:hi], out=self.pseudo[lo:hi])
            plan.outer.update(anchor, self.outer_state, self.pseudo, lo, hi, r)
        if plan.inner_state == "average":
            for rows in state_rows:
                mean_rows_into(rows, self.pseudo, lo, hi)
                rows[:, lo:hi] = self.pseudo[lo:hi]
        elif plan.inner_state == "reset":
            state_rows[:, :, lo:hi] = 0
        param_rows[:, lo:hi] = anchor[lo:hi]
        if self.controls is not None and self.rank in members:
            k_steps = np.float32(step - r * plan.period + 1)
            np.divide(self.sums[self.rank], k_steps, out=self.controls[self.rank])
            self.sums[self.rank] = 0
        barrier.wait()  # every row holds the new server model

    def _server_control(self, k_steps: int, members, barrier) -> None:
        """c <- c + (1/N) sum_{i in S} (c_i+ - c_i) on slice k, where c_i+ = the mean of
        worker i's raw local gradients over the round (set after the next barrier).

        This is option II of Karimireddy et al. 2020 in the form that holds for any
        inner optimizer: with plain SGD, c_i - c + (theta - theta_i)/(K*lr) is exactly
        that mean; with momentum or Adam, (theta - theta_i)/(K*lr) is not a gradient.
        """
        lo, hi = self.lo, self.hi
        c, scale = self.controls[self.n, lo:hi], np.float32(1.0 / k_steps)
        delta = np.zeros(hi - lo, dtype=np.float32)
        for i in members:
            delta += self.sums[i, lo:hi] * scale - self.controls[i, lo:hi]
        c += delta * np.float32(1.0 / self.n)
        barrier.wait()  # the server's c is computed from every old c_i
