"""``fastdist.train``: the Python entry point, with what a script needs to know.

Workers are spawned processes that re-import the calling script, so the call must
sit under ``if __name__ == "__main__":``; without it every worker would start a run
of its own. That mistake is caught before anything starts and explained in one line.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["train"]

GUARD_HINT = (
    "fastdist.train() starts worker processes that re-import your script: call it "
    'under `if __name__ == "__main__":` (see examples/train.py)'
)


def train(config=None, /, *, overrides: Sequence[str] = (), **settings):
    """Train, combine and evaluate; returns a :class:`~fastdist.run.coordinator.RunResult`.

    ``config`` is a composed config (``fastdist.compose([...])``), a list of
    command-line overrides (``["combiner=weight_avg", "optimizer.lr=0.1"]``), or None
    for the defaults; ``settings`` are top-level overrides (``workers=4``). The result
    has ``metrics``, ``history`` (the rows of history.csv), and ``predict(x)`` /
    ``predict_proba(x)`` with the combined model::

        import fastdist

        if __name__ == "__main__":
            result = fastdist.train(["combiner=weight_avg"], workers=2, epochs=5)
            print(result.metrics["test_accuracy"])
    """
    _check_main_guard()
    from fastdist.run.config import compose
    from fastdist.run.coordinator import train as run

    if config is None or isinstance(config, list | tuple):
        extra = [f"{key}={_value(value)}" for key, value in settings.items()]
        config = compose([*(config or ()), *overrides, *extra])
    elif overrides or settings:
        raise TypeError("pass overrides with a list, or compose them into the config")
    return run(config)


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def _check_main_guard() -> None:
    """Refuse (one line, exit 2) a call from a script's top level outside the guard,
    and make a worker that re-imports such a script leave quietly."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if frame.f_code.co_name == "<module>" and name in ("__main__", "__mp_main__"):
            break
        frame = frame.f_back
    if frame is None:
        return  # not called while a script's top level runs (notebook, function, test)
    if name == "__mp_main__":  # a worker importing the script: its parent says why
        raise SystemExit(1)
    path = frame.f_globals.get("__file__")
    if not path or not Path(path).is_file():
        return  # python -c, stdin, a REPL: nothing is re-imported
    if frame.f_lineno not in _guarded_lines(str(Path(path).resolve())):
        sys.stderr.write(f"fastdist: error: {GUARD_HINT}\n")
        raise SystemExit(2)


@functools.cache
def _guarded_lines(path: str) -> frozenset[int]:
    """Line numbers inside ``if __name__ == "__main__":`` blocks of the file."""
    try:
        tree = ast.parse(Path(path).read_text(), path)
    except (OSError, SyntaxError, ValueError):
        return frozenset(range(1, 1_000_000))  # cannot tell: do not stand in the way
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_test(node.test):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return frozenset(lines)


def _is_main_test(test: ast.expr) -> bool:
    if not isinstance(test, ast.Compare) or len(test.comparators) != 1:
        return False
    sides = [test.left, test.comparators[0]]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    consts = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and consts == {"__main__"}
