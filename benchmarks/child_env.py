"""The environment of the processes benchmarks start, and of the benchmark itself: which
source checkout a child imports, and how many threads its math libraries may use; and
how a benchmark runs one child Python (:func:`run_python`).

Thread pools are sized from the environment when a library loads (OpenBLAS, OpenMP,
MKL, Numba), so a pin only works if it is there before that: in a child's environment,
or in this process's before NumPy is imported (:func:`pin_this_process`). Stdlib only,
so that importing it loads no math library.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = [
    "INHERIT",
    "PIN_VARS",
    "ROOT",
    "child_env",
    "pin_this_process",
    "run_python",
    "thread_pins",
]

ROOT = Path(__file__).resolve().parents[1]  # the source checkout (benchmarks/ lives here)
PIN_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
INHERIT = "inherit"


def thread_pins(threads: int) -> dict[str, str]:
    """Every variable of :data:`PIN_VARS` set to ``threads``."""
    return dict.fromkeys(PIN_VARS, str(threads))


def pin_this_process(threads: int = 1) -> None:
    """Pin this process's math libraries to ``threads`` threads unless its environment
    already says otherwise. Call it before NumPy is imported."""
    for var, value in thread_pins(threads).items():
        os.environ.setdefault(var, value)


def child_env(threads: int | str | None = INHERIT, checkout: Path = ROOT) -> dict[str, str]:
    """This process's environment for a child that imports fastdist and the benchmarks
    from ``checkout`` (first on ``PYTHONPATH``).

    ``threads``: an int pins the child's math libraries to that many threads; None
    removes the pins, so each library sizes its pool itself (all cores); :data:`INHERIT`
    leaves the variables as they are here.
    """
    env = dict(os.environ)
    if threads != INHERIT:
        for var in PIN_VARS:
            env.pop(var, None)
        if threads is not None:
            env.update(thread_pins(int(threads)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")]))
    return env


def run_python(args: list[str], threads: int | str | None = INHERIT, timeout: float = 900) -> str:
    """``python args`` (this interpreter) in a child with :func:`child_env` (``threads``)
    and the checkout as its working directory; its stdout. A failure is a RuntimeError
    naming the command and the last line of its stderr."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=child_env(threads),
        cwd=ROOT,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{' '.join(args[:4])} failed: {tail}")
    return proc.stdout
