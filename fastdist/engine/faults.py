"""Fault injection for the reliability tests (in the style of loky's): a worker can be
made to raise, exit or be SIGKILLed at a chosen step, through an environment variable
the coordinator's children inherit:

    FASTDIST_INJECT_FAULT="worker=1,step=5,kind=sigkill[,once=/tmp/marker]"

``kind`` is ``raise`` (RuntimeError), ``exit`` (os._exit(3)), ``sigkill``, or
``sigstop`` (the worker freezes: alive, silent, holding its peers at the barrier). With
``once=PATH`` the fault fires only if PATH does not exist yet, and creates it, so a
respawned worker does not fail again. Unset (always, outside tests), it costs one
comparison per step.
"""

from __future__ import annotations

import os
import signal

__all__ = ["FaultPlan", "fault_plan"]

ENV_VAR = "FASTDIST_INJECT_FAULT"


class FaultPlan:
    def __init__(self, worker: int, step: int, kind: str, once: str | None) -> None:
        if kind not in ("raise", "exit", "sigkill", "sigstop"):
            raise ValueError(f"{ENV_VAR}: unknown kind {kind!r}")
        self.worker, self.step, self.kind, self.once = worker, step, kind, once

    def maybe_fire(self, rank: int, step: int) -> None:
        if rank != self.worker or step != self.step:
            return
        if self.once:
            try:
                os.close(os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        if self.kind == "raise":
            raise RuntimeError(f"injected fault at step {step}")
        if self.kind == "exit":
            os._exit(3)
        if self.kind == "sigstop":
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        os.kill(os.getpid(), signal.SIGKILL)


def fault_plan() -> FaultPlan | None:
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return None
    fields = dict(item.split("=", 1) for item in spec.split(","))
    return FaultPlan(int(fields["worker"]), int(fields["step"]), fields["kind"], fields.get("once"))
