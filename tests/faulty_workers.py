"""Worker functions that fail on purpose, for the fault-injection tests. They live in
an importable module because spawned workers import their target by name."""

from __future__ import annotations

import os
import signal
import time


def raise_on_rank_1(ctx):
    if ctx.rank == 1:
        raise ValueError("boom in worker")
    ctx.barrier.wait()  # would wait forever: the failing worker never arrives


def exit_3_on_rank_0(ctx):
    if ctx.rank == 0:
        os._exit(3)
    ctx.barrier.wait()


def sigkill_self_on_rank_1(ctx):
    if ctx.rank == 1:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    ctx.barrier.wait()


def finish(ctx, value):
    ctx.send("progress", value)
    ctx.barrier.wait()
    ctx.send("done", value * 10 + ctx.rank)


def report_loaded(ctx, names):
    """Which of ``names`` this worker had imported before the job arrived."""
    import sys

    ctx.send("done", sorted(name for name in names if name in sys.modules))
