"""Where a dataset key's path points: absolute against the directory fastdist was
started in, whatever directory a Hydra job runs in."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["absolute_path"]


def absolute_path(path) -> Path:
    """``path`` made absolute against the directory fastdist was started in (Hydra's
    original working directory when a Hydra job changed it, else the current one)."""
    try:
        from hydra.utils import to_absolute_path

        path = to_absolute_path(str(path))
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    return Path(os.path.expanduser(str(path))).absolute()
