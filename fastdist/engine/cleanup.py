"""Removing shared-memory segments whose owner is gone.

A coordinator killed outright (SIGKILL of its whole process group, the OOM killer)
cannot unlink its segment, and /dev/shm is RAM. Every segment's owner holds an
``flock`` on ``<segment>.lock`` for the segment's life (:mod:`.shm`); the kernel drops
it when the owner dies. A segment is stale exactly when that lock can be taken: this
holds in every PID namespace sharing /dev/shm (containers of one pod, ``docker run
--ipc``), where the owner's PID in the name may mean nothing or another process.

Segments without a lock file come from fastdist versions before the lock. Their owner
cannot be judged safely (a PID from another namespace proves nothing), so they are left
alone unless asked (``legacy=True``, ``fastdist-clean --legacy``: the old rule, the
name's PID no longer exists here). A live run's segment is never touched: the cleaner
holds the lock while it removes a stale one.

``fastdist-clean`` (:mod:`fastdist.cli.clean`) runs this by hand; every run also runs it
before it starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from fastdist.engine.shm import LOCK_SUFFIX, SEGMENT_PREFIX, SHM_DIR, list_segments

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


@contextlib.contextmanager
def _owner_gone(name: str, legacy: bool = False):
    """Yield True while holding the segment's lock if its owner is gone, else False.

    Holding the lock during the removal keeps two cleaners (or a cleaner and a very
    late owner) from ever acting on a segment at the same time."""
    lock = os.path.join(SHM_DIR, name + LOCK_SUFFIX)
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        pid = owner_pid(name)  # a segment of a fastdist before the lock file
        yield legacy and pid is not None and not _alive(pid)
        return
    except OSError:
        yield False  # someone else's file we may not open: not ours to judge
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False  # held: the owner is alive (in whatever namespace)
            return
        yield True
    finally:
        os.close(fd)


def stale_segments(legacy: bool = False) -> list[str]:
    """``fastdist-`` segments in /dev/shm whose owner is gone."""
    stale = []
    for name in list_segments():
        with _owner_gone(name, legacy) as gone:
            if gone:
                stale.append(name)
    return stale


def _orphan_locks() -> list[str]:
    """Lock files whose segment is gone (an owner killed between the two unlinks)."""
    segments = set(list_segments())
    return [
        n
        for n in list_segments(with_locks=True)
        if n.endswith(LOCK_SUFFIX) and n[: -len(LOCK_SUFFIX)] not in segments
    ]


def remove_stale_segments(legacy: bool = False) -> list[str]:
    """Unlink every stale segment (and its lock file); return the segment names."""
    removed = []
    for name in list_segments():
        with _owner_gone(name, legacy) as gone:
            if not gone:
                continue
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
            except FileNotFoundError:
                pass  # another cleaner was faster
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, name + LOCK_SUFFIX))
    for lock in _orphan_locks():
        with _owner_gone(lock[: -len(LOCK_SUFFIX)]) as gone:
            if gone:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(SHM_DIR, lock))
    return removed
