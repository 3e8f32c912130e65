"""Turning what goes wrong at the command line into one line that says what to do:
Hydra's usage errors, launchers whose extra is not installed, a closed pipe."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys

from fastdist.extras import hint

__all__ = [
    "LAUNCHER_EXTRAS",
    "command_parser",
    "launcher_hint",
    "plain_text",
    "quiet_broken_pipe",
    "quiet_on_broken_pipe",
    "usage_error",
]

# Hydra launchers that come from an extra (the plugin packages register their configs).
LAUNCHER_EXTRAS = {
    "joblib": "sweep",
    "submitit_local": "sweep",
    "submitit_slurm": "sweep",
    "slurm": "sweep",
}

_LAUNCHER = re.compile(r"hydra/launcher/?[=:' ]*'?(\w+)")


def launcher_hint(message: str) -> str | None:
    """``hydra/launcher=joblib`` without the plugin: which extra installs it."""
    if "hydra/launcher" not in message:
        return None
    match = _LAUNCHER.search(message)
    name = match.group(1) if match else ""
    extra = LAUNCHER_EXTRAS.get(name)
    if extra is None:
        return None
    return f"hydra/launcher={name} needs the launcher plugins: {hint(extra)}"


def usage_error(exc: BaseException) -> str | None:
    """The one-line message for a command-line mistake Hydra reports as a bare
    ValueError (e.g. ``-m`` with ``--cfg``); None for anything else."""
    if not isinstance(exc, ValueError):
        return None
    text = str(exc).strip()
    if text.startswith("Only one of --run, --multirun, --cfg"):
        return text + " (--cfg/--info print the config of a single run; drop -m)"
    return None


def quiet_broken_pipe() -> SystemExit:
    """The reader of our output went away (``fastdist ... | head``): stop quietly, the
    way a command killed by SIGPIPE does. Python would otherwise complain again when it
    flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return SystemExit(141)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; the description kept as written."""

    def _get_help_string(self, action):
        if action.default in (None, False):  # nothing to show: no default, or a flag
            return action.help
        return super()._get_help_string(action)


def plain_text(doc: str) -> str:
    """A docstring as plain text for --help: no RST literals or roles."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc)
    return text.replace("``", "").strip()


def command_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argparse parser for a fastdist-* command: plain-text description (the
    module docstring), defaults shown."""
    return argparse.ArgumentParser(
        prog=prog, description=plain_text(doc or ""), formatter_class=_Formatter
    )


def quiet_on_broken_pipe(main):
    """Decorate a command's ``main``: ``fastdist-summarize ... | head`` ends quietly."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            raise quiet_broken_pipe() from None

    return wrapper
