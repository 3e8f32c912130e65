"""Removing shared-memory segments whose owner is gone.

A coordinator killed outright (SIGKILL of its whole process group, the OOM killer)
cannot unlink its segment, and /dev/shm is RAM. Segment names carry the owner's pid
(``fastdist-<pid>-<random>``): a segment whose pid no longer exists is stale. A live
run's segment is never touched; a pid that was reused by an unrelated process keeps its
segment (the safe side) until that process ends.

``fastdist-clean`` (:mod:`fastdist.cli.clean`) runs this by hand; every run also runs it
before it starts.
"""

from __future__ import annotations

import os

from fastdist.engine.shm import SEGMENT_PREFIX, list_segments

__all__ = ["owner_pid", "stale_segments", "remove_stale_segments"]


def owner_pid(name: str) -> int | None:
    try:
        return int(name[len(SEGMENT_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")  # a zombie will never unlink anything again


def stale_segments() -> list[str]:
    """``fastdist-`` segments in /dev/shm whose owner process does not exist."""
    stale = []
    for name in list_segments():
        pid = owner_pid(name)
        if pid is not None and not _alive(pid):
            stale.append(name)
    return stale


def remove_stale_segments() -> list[str]:
    """Unlink every stale segment; return the names removed."""
    removed = []
    for name in stale_segments():
        try:
            os.unlink(os.path.join("/dev/shm", name))
            removed.append(name)
        except FileNotFoundError:
            pass  # another cleaner was faster
    return removed
