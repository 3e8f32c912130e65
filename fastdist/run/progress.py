"""What the coordinator does with the workers' control messages while they train."""

from __future__ import annotations

import logging

__all__ = ["EpochLog"]

log = logging.getLogger("fastdist")


class EpochLog:
    """Records the workers' thread pools at start, and logs one line per epoch once
    every worker has reported that epoch."""

    def __init__(self, workers: int, quiet: bool = False) -> None:
        self.workers = workers
        self.quiet = quiet
        self.blas_threads: dict[int, list] = {}
        self.cpus: dict[int, list[int]] = {}
        self._pending: dict[int, list[dict]] = {}

    def __call__(self, kind: str, rank: int, payload) -> None:
        if kind == "ready":
            self.blas_threads[rank] = payload["threads"]
            self.cpus[rank] = payload["cpus"]
        elif kind == "epoch":
            self._epoch(payload)

    def _epoch(self, payload: dict) -> None:
        reports = self._pending.setdefault(payload["epoch"], [])
        reports.append(payload)
        if len(reports) < self.workers:
            return
        del self._pending[payload["epoch"]]
        if self.quiet:
            return
        seen = sum(r["seen"] for r in reports)
        log.info(
            "epoch %d  loss %.4f  train_acc %.4f  samples/s %.0f",
            payload["epoch"] + 1,
            sum(r["loss_sum"] for r in reports) / max(seen, 1),
            sum(r["correct"] for r in reports) / max(seen, 1),
            seen / max(max(r["seconds"] for r in reports), 1e-9),
        )

    def reset(self) -> None:
        """Forget partial epochs (the workers restart from a checkpoint)."""
        self._pending.clear()

    @property
    def max_threads(self) -> int:
        """The largest thread pool any worker had loaded (1 when pinning worked)."""
        counts = [n for libs in self.blas_threads.values() for _, n in libs]
        return max(counts, default=0)
