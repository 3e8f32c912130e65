"""The ``fastdist`` command: a Hydra app whose failures are one readable line.

Exit codes: 0 success; 1 a run-time failure (a worker died, the loss diverged);
2 a bad configuration or input; 130 interrupted (Ctrl-C) or 143 terminated (SIGTERM).
In every case the workers are stopped and the shared memory is released first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fastdist.cli.help import launcher_hint, quiet_broken_pipe, usage_error
from fastdist.errors import FastdistError
from fastdist.run.launchers import check_sweep_fits

__all__ = ["main", "write_metrics"]

log = logging.getLogger("fastdist")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so every ``finally`` and ``__exit__`` runs."""


# Signals received, remembered: a library that catches the KeyboardInterrupt (it was
# seen once inside llvmlite during the final evaluation) must not turn Ctrl-C into a
# successful run. Checked before metrics are written and once more at the end.
_received: list[int] = []


def _on_sigterm(signum, frame) -> None:
    _received.append(signum)
    raise _Terminated()


def _on_sigint(signum, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _raise_if_signalled() -> None:
    if signal.SIGTERM in _received:
        raise _Terminated()
    if _received:
        raise KeyboardInterrupt


def write_metrics(metrics: dict, directory: str | Path) -> Path:
    """Write ``metrics.json`` atomically (temp file + rename): readers never see half,
    and nothing is written through a link planted in the directory."""
    from fastdist.engine.files import replacing

    path = Path(directory) / "metrics.json"
    with replacing(path) as fh:
        fh.write((json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    return path


def _raised_by_hydra(exc: BaseException) -> bool:
    """Hydra's override parser raises plain ValueErrors for some bad overrides
    (``combiner=true``: a group given a bool); they are bad input too."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (
        isinstance(exc, ValueError)
        and tb is not None
        and (str(tb.tb_frame.f_globals.get("__name__", "")).startswith("hydra."))
    )


def _fail(message: str, code: int) -> SystemExit:
    sys.stderr.write(f"fastdist: error: {message}\n")
    sys.stderr.flush()
    return SystemExit(code)


@hydra.main(version_base="1.3", config_path="pkg://fastdist.conf", config_name="config")
def _run(cfg: DictConfig) -> float:
    try:
        return _job(cfg)
    except (FastdistError, SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get("FASTDIST_DEBUG"):
            raise
        # Raised as SystemExit, which Hydra lets through without its own "Error
        # executing job" line: the one line below is all the user sees.
        raise _fail(*_describe(exc)) from None


def _job(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from fastdist.run.config_checks import check_override_types, validate
    from fastdist.run.coordinator import train

    out_dir = HydraConfig.get().runtime.output_dir
    if cfg.quiet:
        logging.getLogger("fastdist").setLevel(logging.WARNING)
    try:
        # The values first: no advice about a sweep's threads for a config refused anyway.
        check_override_types(cfg, HydraConfig.get().overrides.task)
        validate(cfg)
        warning = check_sweep_fits(cfg)
        if warning:
            log.warning(warning)
        result = train(cfg)
    except FastdistError as exc:
        # SystemExit passes through Hydra untouched: no "Error executing job" banner
        # and no traceback, just the cause.
        raise _fail(str(exc).splitlines()[0], exc.exit_code) from None
    if not result.metrics:
        return float("nan")  # dist=mpi, rank > 0: rank 0 reports for the whole job
    if cfg.save_states:
        from fastdist.run.states import save_states, split_hash

        combiner = result.metrics["combiner"]
        saved = save_states(
            out_dir,
            result.worker_params,
            result.samples_seen,
            result.validation_fraction,
            result.sync,
            split_hash(cfg),
            result.base,
        )
        log.info("worker states of %s written to %s", combiner, saved)
    if cfg.save_model:
        log.info("combined model written to %s", result.save(out_dir))
    _raise_if_signalled()
    path = write_metrics(result.metrics, out_dir)
    log.info("metrics written to %s", path)
    return result.metrics["test_accuracy"]


def _compact(exc: BaseException) -> str:
    """Hydra/OmegaConf messages span lines (options, search path); keep the substance."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept: list[str] = []
    options: list[str] = []
    key = None
    for line in lines:
        if line.startswith("full_key:"):
            key = line.split(":", 1)[1].strip()
        elif line.startswith(("reference_type", "object_type")):
            continue
        elif line.startswith(("Config search path", "Set the environment")):
            break
        elif line.startswith("Available options"):
            options = ["(available:"]
        elif options:
            options.append(line + ",")
        else:
            kept.append(line)
    text = " ".join(kept) or type(exc).__name__
    if options:
        text += " " + " ".join(options).rstrip(",") + ")"
    if key and key not in text:
        text += f" (key: {key})"
    return text


def main() -> None:
    """Console-script entry point (``fastdist`` and ``python -m fastdist``)."""
    if "--version" in sys.argv[1:]:
        from fastdist import __version__

        print(f"fastdist {__version__}")
        return
    # Let Hydra's own errors reach us unformatted; we print them as one line below.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    _received.clear()  # a signal an earlier call in this process saw is not this run's
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        _run()
        _raise_if_signalled()
    except _Terminated:
        raise _fail("terminated; workers stopped and shared memory released", 143) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; workers stopped and shared memory released", 130) from None
    except FastdistError as exc:
        raise _fail(str(exc).splitlines()[0], exc.exit_code) from None
    except BrokenPipeError:
        raise quiet_broken_pipe() from None
    except Exception as exc:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if _received:
            # The signal came first; a library it interrupted (OmegaConf mid-merge, seen
            # here) turned it into an error of its own: report the signal.
            if signal.SIGTERM in _received:
                raise _fail("terminated; workers stopped and shared memory released", 143) from None
            raise _fail("interrupted; workers stopped and shared memory released", 130) from None
        if isinstance(exc, (HydraException, OmegaConfBaseException)) or _raised_by_hydra(exc):
            cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
            raise _fail(launcher_hint(str(exc)) or _compact(cause), 2) from None
        if usage_error(exc):
            raise _fail(usage_error(exc), 2) from None
        if os.environ.get("FASTDIST_DEBUG"):
            raise
        raise _fail(*_describe(exc)) from None


def _describe(exc: Exception) -> tuple[str, int]:
    """One line and an exit code for an exception fastdist did not raise itself."""
    if isinstance(exc, OSError) and exc.filename:
        # hydra.run.dir or another path we were given cannot be created/written.
        return f"cannot use {exc.filename}: {exc.strerror or exc}", 2
    if isinstance(exc, ValueError) and str(exc).startswith("Config group override"):
        return _compact(exc), 2  # Hydra's own check of a group override (combiner=false)
    if "Unable to configure handler" in str(exc):  # Hydra's log file in hydra.run.dir
        return f"cannot write the run's log file (hydra.run.dir?): {_compact(exc)}", 2
    # Not a known failure: still one line (and a clean shutdown, which the context
    # managers already did), with the way to get the whole story.
    return (
        f"unexpected {type(exc).__name__}: {_compact(exc)} "
        "(run with FASTDIST_DEBUG=1 for the traceback)",
        1,
    )


if __name__ == "__main__":
    main()
