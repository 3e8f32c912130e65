"""What the coordinator does with the workers' control messages while they train:
the per-epoch log lines, the history rows, and what the person watching sees.

Display modes (``progress=``): ``bar`` is a live tqdm bar on stderr (steps done/total,
ETA, loss, samples/s); ``lines`` logs a plain line at every tenth of the run (logs,
SLURM, pipes); ``off`` shows neither; ``auto`` (default) picks ``bar`` when stderr is a
terminal and this is a single run, else ``lines``. Jobs of a multirun never draw bars
(parallel jobs would garble each other's); their lines start with ``[job N]`` and are
written one whole line per write, which the OS keeps intact.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import sys
import time

__all__ = ["EpochLog", "ProgressMode", "LineDisplay", "BarDisplay", "make_display"]

log = logging.getLogger("fastdist")


class ProgressMode(enum.Enum):
    auto = "auto"
    bar = "bar"
    lines = "lines"
    off = "off"


class EpochLog:
    """Records the workers' thread pools at start, logs one line per epoch once every
    worker has reported that epoch, and passes step reports to the run's history."""

    def __init__(self, workers: int, quiet: bool = False, history=None, display=None) -> None:
        self.workers = workers
        self.quiet = quiet
        self.history = history
        self.display = display
        self.blas_threads: dict[int, list] = {}
        self.cpus: dict[int, list[int]] = {}
        self._pending: dict[int, list[dict]] = {}

    def __call__(self, kind: str, rank: int, payload) -> None:
        if kind == "ready":
            self.blas_threads[rank] = payload["threads"]
            self.cpus[rank] = payload["cpus"]
            if len(self.blas_threads) == self.workers:
                self._ready()
        elif kind == "epoch":
            self._epoch(payload)
        elif kind == "step" and self.history is not None:
            self.history.on_step(rank, payload)

    def start(self, start_step: int = 0) -> None:
        """The workers are being started (they compile their kernels first)."""
        self._start_step = start_step
        if self.display is not None:
            self.display.start(start_step)
        if self.history is not None:
            self.history.initial_row(start_step)

    def _ready(self) -> None:
        start_step = getattr(self, "_start_step", 0)
        if self.history is not None:
            self.history.begin(start_step)
        if self.display is not None:
            self.display.ready()

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
        self.blas_threads.clear()
        if self.history is not None:
            self.history.reset()

    def close(self, complete: bool = True) -> None:
        """Training is over (or failed): finish the history, take the bar down."""
        try:
            if self.history is not None:
                self.history.close(complete)
        finally:
            if self.display is not None:
                self.display.close()

    @property
    def max_threads(self) -> int:
        """The largest thread pool any worker had loaded (1 when pinning worked)."""
        counts = [n for libs in self.blas_threads.values() for _, n in libs]
        return max(counts, default=0)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LineDisplay:
    """Plain log lines: "starting workers", then one line per tenth of the run."""

    def __init__(self, total_steps: int, prefix: str = "", parts: int = 10) -> None:
        self.total, self.prefix, self.parts = total_steps, prefix, parts
        self._next = 1
        self._t0 = self._ready_at = time.monotonic()
        self._first_step = 0

    def start(self, start_step: int) -> None:
        self._t0 = time.monotonic()
        self._first_step = start_step
        self._next = start_step * self.parts // max(self.total, 1) + 1
        # Kernels compile only on a machine's first run (or after a change); later runs
        # load them from the cache, and a warm pool has them loaded already.
        log.info("%sstarting workers", self.prefix)

    def ready(self) -> None:
        self._ready_at = time.monotonic()
        log.info("%sworkers ready after %.1f s", self.prefix, self._ready_at - self._t0)

    def __call__(self, row: dict) -> None:
        step = row["step"]
        if row["train_loss"] is None:  # the starting point, before any step
            return
        if step * self.parts < self._next * self.total and step < self.total:
            return
        while self._next * self.total <= step * self.parts:
            self._next += 1
        elapsed = time.monotonic() - self._ready_at
        done = max(step - self._first_step, 1)
        eta = elapsed / done * (self.total - step)
        log.info(
            "%sstep %d/%d (%d%%)  loss %.4f  samples/s %.0f  elapsed %s  eta %s",
            self.prefix,
            step,
            self.total,
            100 * step // max(self.total, 1),
            row["train_loss"],
            row["samples_per_second"],
            _clock(elapsed),
            _clock(eta),
        )

    def close(self) -> None:
        pass


class BarDisplay:
    """A live tqdm bar on stderr; log lines are printed above it while it is up."""

    def __init__(self, total_steps: int, stream=None) -> None:
        self.total = total_steps
        self.stream = stream or sys.stderr
        self._bar = None
        self._resume = 0
        self._redirect = contextlib.ExitStack()

    def start(self, start_step: int) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # Log records (epoch lines) go through tqdm.write, above the bar, not through it.
        self._redirect.enter_context(logging_redirect_tqdm([logging.getLogger()]))
        self._resume = start_step
        self._bar = tqdm(
            total=self.total,
            initial=start_step,
            desc="starting workers",
            unit="step",
            file=self.stream,
            dynamic_ncols=True,
            mininterval=0.2,
            leave=True,
        )

    def ready(self) -> None:
        if self._bar is not None:
            self._bar.set_description("training")
            self._bar.reset(total=self.total)  # the ETA starts now, not at spawn
            self._bar.update(self._resume)

    def __call__(self, row: dict) -> None:
        if self._bar is None or row["train_loss"] is None:
            return
        self._bar.set_postfix(
            loss=f"{row['train_loss']:.4f}",
            samples_s=f"{row['samples_per_second']:.0f}",
            refresh=False,
        )
        self._bar.update(row["step"] - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._redirect.close()


def make_display(mode, total_steps: int, *, quiet: bool, multirun_job: int | None):
    """The display for ``mode`` (a ProgressMode or its name); None for none."""
    mode = ProgressMode(getattr(mode, "value", mode))
    if quiet or mode is ProgressMode.off:
        return None
    if mode is ProgressMode.auto:
        tty = sys.stderr.isatty()
        mode = ProgressMode.bar if tty and multirun_job is None else ProgressMode.lines
    if mode is ProgressMode.bar and multirun_job is None:
        return BarDisplay(total_steps)
    prefix = "" if multirun_job is None else f"[job {multirun_job}] "
    return LineDisplay(total_steps, prefix)
