"""The console scripts' entry points: the command's module is imported only after a
Ctrl-C or SIGTERM handler is in place.

Importing Hydra, NumPy and Numba takes a second or more; a Ctrl-C in that time used to
print a 50-line KeyboardInterrupt traceback from the middle of an import. Nothing exists
yet that needs cleaning up then (no segment, no worker), so the handler here just says
so in one line and exits 130 (SIGINT) or 143 (SIGTERM). Once the module is loaded, its
``main`` installs the run's own handlers; a KeyboardInterrupt that reaches this level
all the same becomes the same one line.

This module imports nothing heavy on purpose (``fastdist/__init__`` is lazy too).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import sys

__all__ = ["fastdist", "fastdist_combine", "fastdist_summarize", "fastdist_clean", "fastdist_tune"]


def _run(module: str, prog: str) -> None:
    def quit_now(signum, frame) -> None:
        what = "interrupted" if signum == signal.SIGINT else "terminated"
        os.write(2, f"{prog}: error: {what} while starting; nothing to clean up\n".encode())
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, quit_now)
    signal.signal(signal.SIGTERM, quit_now)
    main = importlib.import_module(module).main

    def terminated(signum, frame) -> None:
        raise SystemExit(143)  # every finally runs: temporary files are removed

    signal.signal(signal.SIGTERM, terminated)  # the command may install its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: error: interrupted\n")
        raise SystemExit(130) from None
    except SystemExit as exc:
        if exc.code in (130, 143):
            _exit_after_signal(exc.code)
        raise
    finally:
        # The command has ended and said how; what remains is atexit cleanup (warm
        # workers, segments) and interpreter teardown, which a late Ctrl-C or SIGTERM
        # must neither cut short nor turn into a death by signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _exit_after_signal(code: int) -> None:
    """End an interrupted command with ``code`` (130 or 143), whatever happened inside.

    A Ctrl-C in the first second of a run ended it, about once in twenty tries
    (tests/test_signals.py under load), with status -2 (killed by SIGINT) although it
    had printed its one line and raised SystemExit(130); CPython re-kills itself with
    SIGINT at exit when it believes a KeyboardInterrupt went unhandled, and where that
    belief came from was not found. So: run the atexit cleanup (warm workers,
    multiprocessing's children, logging) and leave with the code, without the
    interpreter's own teardown.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def fastdist() -> None:
    _run("fastdist.cli.main", "fastdist")


def fastdist_combine() -> None:
    _run("fastdist.cli.combine", "fastdist-combine")


def fastdist_summarize() -> None:
    _run("fastdist.cli.summarize", "fastdist-summarize")


def fastdist_clean() -> None:
    _run("fastdist.cli.clean", "fastdist-clean")


def fastdist_tune() -> None:
    _run("fastdist.cli.tune", "fastdist-tune")
