"""Optional pieces and the extra that installs each: a missing one is a one-line
error naming ``pip install 'fastdist[<extra>]'``. Below every layer, like errors."""

from __future__ import annotations

import importlib
from types import ModuleType

from fastdist.errors import ConfigError

__all__ = ["EXTRAS", "MissingExtraError", "hint", "require"]

# extra -> what it adds (pyproject's [project.optional-dependencies] installs it)
EXTRAS = {
    "jax": "backend=jax (JAX kernels)",
    "mnist1d": "dataset=mnist1d (the mnist1d package's generator)",
    "experiments": "plots from fastdist-summarize (matplotlib)",
    "tensorboard": "logger=tensorboard (tensorboardX)",
    "sweep": "hydra/launcher=joblib, submitit_local, slurm (parallel and cluster sweeps)",
    "mpi": "dist=mpi (mpi4py and an MPI library)",
}


class MissingExtraError(ConfigError):
    """An optional dependency is not installed (exit code 2)."""


def hint(extra: str) -> str:
    return f"pip install 'fastdist[{extra}]'"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise a one-line error: ``what`` needs it, install ``extra``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or module).split(".")[0] != module.split(".")[0]:
            raise MissingExtraError(f"{what}: {module} cannot be imported ({exc})") from None
        raise MissingExtraError(f"{what} needs {module}: {hint(extra)}") from None
    except ImportError as exc:
        raise MissingExtraError(f"{what}: {module} cannot be imported ({exc})") from None
