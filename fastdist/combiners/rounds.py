"""Local-update rounds as an exchange (:mod:`fastdist.combiners.exchange`): the
protocol behind the federated family (:mod:`fastdist.combiners.federated`).

Arena arrays (from :meth:`Rounds.arrays`; per-worker ones have a row per global worker):

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

from dataclasses import dataclass

import numpy as np
from numba import njit

from fastdist.combiners.exchange import Exchange, ExchangeView, Sync, WorkerExchange
from fastdist.engine.allreduce import mean_rows_into
from fastdist.optim.base import Optimizer

__all__ = ["Rounds"]

_PARTICIPATION_STREAM = 0xFEDA


@dataclass(frozen=True)
class Rounds(Exchange):
    """Rounds of ``period`` local steps, then an outer step on the pseudo-gradient
    (``outer``; None: theta <- the mean). Picklable."""

    kind: Sync = Sync.PARAMETERS
    period: int = 8
    outer: Optimizer | None = None
    prox_mu: float = 0.0
    scaffold: bool = False
    participation: float = 1.0
    weighting: str = "uniform"  # or "samples": weights proportional to shard size
    inner_state: str = "keep"
    checkpointed: tuple[str, ...] = ("anchor", "outer_state", "controls", "control_sums")
    reduces: bool = True

    def n_participants(self, workers: int) -> int:
        return max(1, min(workers, int(round(self.participation * workers))))

    def participants(self, workers: int) -> int:
        return self.n_participants(workers)

    def members(self, seed: int, round_index: int, workers: int) -> np.ndarray:
        """The sorted ranks taking part in round ``round_index`` (pure in its args)."""
        m = self.n_participants(workers)
        if m == workers:
            return np.arange(workers)
        rng = np.random.default_rng([int(seed), int(round_index), _PARTICIPATION_STREAM])
        return np.sort(rng.choice(workers, m, replace=False))

    def rounds(self, total_steps: int) -> int:
        return -(-total_steps // self.period)

    def sync_at(self, step: int, total_steps: int) -> bool:
        """A round ends after every ``period`` steps, and the run ends on one."""
        return (step + 1) % self.period == 0 or step == total_steps - 1

    def vectors_per_sync(self, n_state: int) -> int:
        """A participant sends its parameters (or pseudo-gradient), its control-variate
        change, its optimizer state if averaged."""
        return 1 + int(self.scaffold) + (n_state if self.inner_state == "average" else 0)

    def arrays(self, workers: int, size: int, n_state: int) -> dict:
        arrays = {"anchor": ((size,), np.float32), "pseudo_grad": ((size,), np.float32)}
        if self.outer is not None and self.outer.state_names:
            arrays["outer_state"] = ((len(self.outer.state_names), size), np.float32)
        if self.scaffold:
            arrays["controls"] = ((workers + 1, size), np.float32)
            arrays["control_sums"] = ((workers, size), np.float32)
        reduction = self.reduction_arrays(workers, size)  # the round uses its own anchor
        arrays.update({k: v for k, v in reduction.items() if k not in ("anchor", "reduced")})
        return arrays

    def init_arena(self, arena) -> None:
        arena["anchor"][:] = arena["params"][0]  # the server model starts where all do

    def published(self, arena) -> list[np.ndarray]:
        rows = [arena["params"]]
        if self.inner_state == "average":
            rows += list(arena["opt_state"])
        if self.scaffold:
            workers = arena["control_sums"].shape[0]
            rows += [arena["controls"][:workers], arena["control_sums"]]
        return rows

    def evaluated_row(self, arena, own: np.ndarray) -> np.ndarray:
        return arena["anchor"]

    def worker(self, view: ExchangeView) -> WorkerExchange:
        return _RoundsWorker(view, self)


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


class _RoundsWorker(WorkerExchange):
    """One worker's view of the rounds: who trains, gradient corrections, the sync."""

    def __init__(self, view: ExchangeView, plan: Rounds) -> None:
        super().__init__(view)
        arena = view.arena
        self.plan, self.rank, self.n = plan, view.rank, view.workers
        self.anchor, self.pseudo = arena["anchor"], arena["pseudo_grad"]
        self.outer_state = list(arena["outer_state"]) if "outer_state" in arena else []
        self.controls = arena["controls"] if plan.scaffold else None
        self.sums = arena["control_sums"] if plan.scaffold else None
        self.sizes = np.array(view.shard_sizes, dtype=np.float64)
        self.mu = np.float32(plan.prox_mu)
        self.reduction = plan.reduction.worker(view) if plan.reducing else None
        self._cached: tuple[int, np.ndarray] = (-1, np.arange(self.n))

    def members(self, step: int) -> np.ndarray:
        r = step // self.plan.period
        if self._cached[0] != r:
            self._cached = (r, self.plan.members(self.view.seed, r, self.n))
        return self._cached[1]

    def trains(self, step: int) -> bool:
        return self.rank in self.members(step)

    def local_step(self, step: int, lr: float) -> None:
        self._correct(self.view.grad, self.view.params)  # FedProx / SCAFFOLD terms
        self.view.own_update(step, lr)

    def _correct(self, grad: np.ndarray, params: np.ndarray) -> None:
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

    def sync(self, step: int, lr: float) -> None:
        """End of the round containing ``step``: the outer step on slice k, then every
        row restarts from the new server model."""
        plan, v = self.plan, self.view
        lo, hi, param_rows, state_rows = v.lo, v.hi, v.param_rows, v.state_rows
        r = step // plan.period
        members = self.members(step)
        if self.reduction is not None and self.rank in members:
            # A participant sends its update theta_i - theta (what compressors and
            # attackers act on); the rule over the members' updates is the negated
            # pseudo-gradient.
            own = param_rows[self.rank]
            np.subtract(own, self.anchor, out=own)
            self.reduction.publish(own, step)
        v.meet()  # every participant's row holds its round's result
        if self.reduction is not None:
            self.reduction.reduce(param_rows, members, self.pseudo)
        else:
            weights = self._weights(members)
            if weights is None:
                mean_rows_into(param_rows, self.pseudo, lo, hi)
            else:
                _weighted_mean_into(param_rows, weights, self.pseudo, lo, hi)
        if self.controls is not None:
            self._server_control(step - r * plan.period + 1, members)
        anchor = self.anchor
        if self.reduction is not None and plan.outer is None:
            anchor[lo:hi] += self.pseudo[lo:hi]
        elif self.reduction is not None:
            np.negative(self.pseudo[lo:hi], out=self.pseudo[lo:hi])
            plan.outer.update(anchor, self.outer_state, self.pseudo, lo, hi, r)
        elif plan.outer is None:
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
        v.barrier.wait()  # every row holds the new server model

    def _server_control(self, k_steps: int, members) -> None:
        """c <- c + (1/N) sum_{i in S} (c_i+ - c_i) on slice k, where c_i+ = the mean of
        worker i's raw local gradients over the round (set after the next barrier).

        This is option II of Karimireddy et al. 2020 in the form that holds for any
        inner optimizer: with plain SGD, c_i - c + (theta - theta_i)/(K*lr) is exactly
        that mean; with momentum or Adam, (theta - theta_i)/(K*lr) is not a gradient.
        """
        lo, hi = self.view.lo, self.view.hi
        c, scale = self.controls[self.n, lo:hi], np.float32(1.0 / k_steps)
        delta = np.zeros(hi - lo, dtype=np.float32)
        for i in members:
            delta += self.sums[i, lo:hi] * scale - self.controls[i, lo:hi]
        c += delta * np.float32(1.0 / self.n)
        self.view.barrier.wait()  # the server's c is computed from every old c_i
