"""The run's history: train loss every ``history.every`` steps and, every
``eval.every`` steps, the combined model's validation and test scores (the one
evaluation pipeline: :mod:`fastdist.run.evaluation`).

How the current combined model is evaluated, cheaply and consistently:

* At an evaluation step each worker copies the row its exchange names
  (``Exchange.evaluated_row``: the parameter row it owns; the one shared row, under
  grad_avg and Hogwild, copied by worker 0; a round's server model) into its own row of
  the arena's ``snapshots`` array, right after finishing that step, and tells the
  coordinator. No extra barrier is needed: a worker's row is only written by others
  inside a sync point, which completes before the row's owner passes it, so the copy
  is the row exactly as it stands after that step (under Hogwild the shared row is, as
  always, whatever the racing updates left).
* The coordinator copies each row out of the arena as soon as it is told, and marks the
  slot free (``progress[rank, 2]``); a worker waits for its slot only if the coordinator
  has not copied the previous snapshot yet, so training never waits for an evaluation.
* Once training is over, the coordinator runs the combiner's own ``finalize`` on each
  step's rows (exactly what the run ends with) and scores it on the validation split
  (when there is one) and the test set. Scoring afterwards keeps the coordinator off
  the CPUs the workers spin on: scored during training, once per epoch on digits made
  the run 10x slower on 2 cores. The snapshots are held in memory (up to 256 MiB, then
  scored at once). Combiners whose finalize is costly (fisher_avg, aligned_avg,
  soup_greedy) cost that much per evaluation: raise ``eval.every``.
  Under dist=mpi the rows live on several machines: only ``eval.at_sync`` scores there
  (right after a sync every node holds the model the workers agree on).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastdist.combiners.exchange import Exchange, communication_bytes
from fastdist.optim.base import Optimizer

__all__ = [
    "COLUMNS",
    "History",
    "HistoryConfig",
    "StepReporter",
    "bytes_per_sync",
    "learning_rate",
]

log = logging.getLogger("fastdist")

# history.csv's columns, in order; evaluation columns are empty between evaluations.
COLUMNS = (
    "step",
    "epoch",
    "wall_time",
    "lr",
    "train_loss",
    "samples_per_second",
    "bytes_synchronised",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    # byzantine.*: "attack:rank;rank" on every row of a run with simulated attackers.
    "byzantine",
)

# Snapshots kept for scoring at the end of the run; beyond this they are scored at once.
_MAX_HELD_BYTES = 256 * 2**20

# progress[rank, col]: col 0 is the step counter (worker.py); these two are the
# snapshot hand-over between a worker and the coordinator.
_WRITTEN, _TAKEN = 1, 2


@dataclass
class HistoryConfig:
    every: int = 10  # steps between rows of the history (train loss, lr, samples/s)


def learning_rate(optimizer: Optimizer, step: int, rates=None) -> float:
    """The learning rate of the last of ``step`` steps: the schedule's rate (with the
    worker-count scaling) when the run has one, else the optimizer's ``lr``."""
    if rates is not None:
        return float(rates(max(step - 1, 0)))
    return float(getattr(optimizer, "lr", math.nan))


def bytes_per_sync(exchange: Exchange, workers: int, n_params: int, n_state: int) -> int:
    """Bytes the workers taking part in one sync would send together (the combiner's
    own count, :func:`fastdist.combiners.exchange.communication_bytes`, the same as
    metrics.json's ``comm_*`` keys)."""
    per_worker = communication_bytes(exchange, n_params, n_state)
    return per_worker * exchange.participants(workers)


class StepReporter:
    """A worker's side: reports its mean loss every ``every`` steps, and hands over a
    snapshot of its parameter row at evaluation steps."""

    def __init__(self, ctx, spec, arena, params: np.ndarray, own_steps: int | None = None) -> None:
        # Evaluations follow the run's steps; a worker with fewer of its own
        # (worker_overrides) reports its last one too, and the coordinator scores later
        # evaluations with its final row (History.fills_finished).
        self.ctx, self.total = ctx, spec.total_steps
        self.own_total = spec.total_steps if own_steps is None else own_steps
        self.every, self.eval_every = spec.history_every, spec.eval_every
        self.exchange, self.at_sync = spec.exchange, spec.eval_at_sync
        # The first evaluation due (eval.at_sync: the first sync at or past it).
        every = self.eval_every
        self.due = (spec.start_step // every + 1) * every if every else 0
        shared = spec.exchange.shares_parameters
        owns_row = ctx.rank == 0 or not shared
        self.params = None
        if self.eval_every and owns_row:
            self.params = spec.exchange.evaluated_row(arena, params)
            self.snapshot = arena["snapshots"][0 if shared else ctx.rank]
            self.flags = arena["progress"][ctx.rank]
        self.loss_sum, self.seen = 0.0, 0

    def _evaluates(self, step: int) -> bool:
        """Whether the model after ``step`` steps is scored (see run/evaluation.py)."""
        if not self.eval_every:
            return False
        if not self.at_sync:
            return step % self.eval_every == 0 or step == self.total
        if step < self.due or not self.exchange.sync_at(step - 1, self.total):
            return False
        self.due = (step // self.eval_every + 1) * self.eval_every
        return True

    def after_step(self, step: int, loss: float, batch: int) -> None:
        """Called with the number of steps done (``step``) after each one."""
        if not self.every:
            return
        self.loss_sum += loss * batch
        self.seen += batch
        evaluate_now = self._evaluates(step)
        # A worker with fewer steps than the run (worker_overrides) reports its last
        # ones with the run's next row, which then completes without waiting for it.
        finished = step == self.own_total < self.total
        if not (step % self.every == 0 or step == self.total or evaluate_now or finished):
            return
        row_step = step
        if finished and not (step % self.every == 0 or evaluate_now):
            row_step = min(-(-step // self.every) * self.every, self.total)
        snapshot = evaluate_now and self.params is not None
        if snapshot:
            while self.flags[_TAKEN] != self.flags[_WRITTEN]:
                time.sleep(0.0002)  # the coordinator has not copied the last one yet
            self.snapshot[:] = self.params
            self.flags[_WRITTEN] = step
        payload = {"step": row_step, "loss_sum": self.loss_sum, "seen": self.seen}
        payload.update(time=time.monotonic(), evaluate=evaluate_now, snapshot=snapshot)
        self.ctx.send("step", payload)
        self.loss_sum, self.seen = 0.0, 0


class History:
    """The coordinator's side: merges the workers' step reports into rows (written to
    the sinks and shown by the listeners as they come), keeps the snapshots, and
    scores them once training is over, so the evaluation never competes with the
    workers for the CPUs; then the sinks get the complete rows."""

    def __init__(
        self,
        *,
        workers: int,
        batch: int,
        steps_per_epoch: int,
        lr: Callable[[int], float],
        exchange: Exchange,
        total_steps: int,
        sync_bytes: int,
        score: Callable | None = None,
        arena=None,
        sinks: tuple = (),
        fills_finished: bool = False,
        own_steps: tuple[int, ...] | None = None,
    ) -> None:
        self.workers, self.batch, self.steps_per_epoch = workers, batch, steps_per_epoch
        self.lr, self.exchange, self.sync_bytes = lr, exchange, sync_bytes
        self.total_steps = total_steps
        self.score, self.arena, self.sinks = score, arena, list(sinks)
        # Workers train different step counts (worker_overrides): an evaluation after a
        # worker's last step scores its final row, which no longer changes.
        self.fills_finished = fills_finished
        # Each worker's own step count (worker_overrides): a row past a worker's last
        # step is complete without its report.
        self.own_steps = own_steps
        self.listeners: list[Callable[[dict], None]] = []
        self.rows: list[dict] = []
        self.start: float | None = None
        self._pending: dict[int, dict[int, dict]] = {}  # step -> rank -> report
        self._snapshots: dict[int, dict[int, np.ndarray]] = {}
        self._held: list[tuple[dict, np.ndarray]] = []  # (row, parameter rows) to score
        self._held_bytes = 0
        self._last = (0, 0.0)  # (step, time) of the previous row
        self._syncs = (0, 0)  # sync points counted up to this step
        reduction = exchange.reduction
        self.attackers = None
        if reduction is not None and reduction.byzantine.active:
            byz = reduction.byzantine
            self.attackers = f"{byz.attack}:" + ";".join(map(str, byz.workers))

    def initial_row(self, start_step: int) -> None:
        """The parameters the workers start from: the learning curve's first point."""
        if self.score is None or self.arena is None:
            return
        row = dict.fromkeys(COLUMNS, None)
        row.update(step=start_step, epoch=round(start_step / max(self.steps_per_epoch, 1), 4))
        row.update(wall_time=0.0, lr=self.lr(start_step), bytes_synchronised=0)
        row.update(byzantine=self.attackers)
        self._hold(row, self.arena["params"].copy())
        self._publish(row)

    def begin(self, start_step: int, start: float | None = None) -> None:
        """The workers start training (now, or at ``start``) from ``start_step``."""
        self.start = time.monotonic() if start is None else start
        self._last = (start_step, self.start)
        self._syncs = (start_step, self._syncs_between(0, start_step))

    def on_step(self, rank: int, payload: dict) -> None:
        step = payload["step"]
        if payload.get("snapshot"):
            flags = self.arena["progress"][rank]
            rows = self._snapshots.setdefault(step, {})
            row = 0 if self.exchange.shares_parameters else rank
            rows[row] = self.arena["snapshots"][row].copy()
            flags[_TAKEN] = flags[_WRITTEN]  # the worker may write its next snapshot
        reports = self._pending.setdefault(step, {})
        reports[rank] = payload
        if len(reports) == self.workers or self._complete(step, reports):
            self._emit(step)

    def _complete(self, step: int, reports: dict) -> bool:
        if self.own_steps is None:
            return False
        due = {r for r in range(self.workers) if self.own_steps[r] >= step}
        return due <= set(reports) and bool(reports)

    def _emit(self, step: int) -> None:
        # Rank order, not arrival order: that is timing (a warm pool's differs from a
        # cold one's), and a float sum of three or more losses changes with the order.
        reports = [report for _, report in sorted(self._pending.pop(step).items())]
        if self.start is None:
            self.begin(0)
        now = max(r["time"] for r in reports)
        seen = sum(r["seen"] for r in reports)
        last_step, last_time = self._last
        counted_to, syncs = self._syncs
        syncs += self._syncs_between(counted_to, step)
        self._syncs, self._last = (step, syncs), (step, now)
        row = dict.fromkeys(COLUMNS, None)
        row.update(
            step=step,
            epoch=round(step / max(self.steps_per_epoch, 1), 4),
            wall_time=now - self.start,
            lr=self.lr(step),
            train_loss=sum(r["loss_sum"] for r in reports) / max(seen, 1),
            samples_per_second=(step - last_step)
            * self.batch
            * len(reports)
            / max(now - last_time, 1e-9),
            bytes_synchronised=syncs * self.sync_bytes,
            byzantine=self.attackers,
        )
        rows = self._snapshots.pop(step, None)
        if rows and self.fills_finished and len(rows) < self.workers:
            for rank in range(self.workers):
                if rank not in rows:  # finished before this step: its row is final
                    rows[rank] = self.arena["params"][rank].copy()
        if rows and self.score is not None and any(r.get("evaluate") for r in reports):
            self._hold(row, np.stack([rows[k] for k in sorted(rows)]))
        self._publish(row)

    def _syncs_between(self, start: int, stop: int) -> int:
        return self.exchange.syncs_between(start, stop, self.total_steps)

    def _hold(self, row: dict, params: np.ndarray) -> None:
        """Keep a snapshot to score at the end; past _MAX_HELD_BYTES score it now."""
        if self._held_bytes + params.nbytes > _MAX_HELD_BYTES:
            row.update(self._evaluate(row, params))
            return
        self._held.append((row, params))
        self._held_bytes += params.nbytes

    def _publish(self, row: dict) -> None:
        self.rows.append(row)
        for sink in self.sinks:
            sink.write(row)
        for listener in self.listeners:
            listener(row)

    def _evaluate(self, row: dict, params: np.ndarray) -> dict:
        if self.score is None:
            return {}
        seen = np.full(len(params), row["step"] * self.batch, dtype=np.int64)
        try:
            return self.score(params, seen)
        except Exception as exc:  # a combiner that cannot finalize on these rows
            log.warning("history: evaluating the combined model failed (%s); not again", exc)
            self.score = None
            return {}

    def reset(self) -> None:
        """The workers restart from a checkpoint: forget partial steps."""
        self._pending.clear()
        self._snapshots.clear()
        if self.arena is not None:
            self.arena["progress"][:, _WRITTEN : _TAKEN + 1] = 0

    def close(self, complete: bool = True) -> None:
        """Training is over: flush steps some worker never reported (it failed and the
        others went on), score the held snapshots (unless the run failed), and give the
        sinks the complete rows."""
        try:
            for step in sorted(self._pending):
                self._emit(step)
            scored = []
            if complete:
                for row, params in self._held:
                    scores = self._evaluate(row, params)
                    row.update(scores)
                    scored.append({"step": row["step"], **scores})
            self._held, self._held_bytes = [], 0
            for sink in self.sinks:
                sink.finish(self.rows, scored)
        finally:
            for sink in self.sinks:
                sink.close()
            self.sinks = []
