"""One shared-memory block holding named, aligned NumPy arrays.

The coordinator creates and unlinks the block; workers attach to it from a picklable
:class:`ArenaSpec` and get zero-copy views. Segment names start with ``fastdist-`` and
carry the owner's pid, so a leaked segment is easy to find and to attribute.

Two guarantees beyond ``multiprocessing.shared_memory``:

* every page is reserved when the segment is created (``posix_fallocate``), so a full
  /dev/shm is a one-line error at creation, never a SIGBUS when a page is first touched;
* the owner holds an ``flock`` on ``<segment>.lock`` beside it for the segment's whole
  life. The kernel drops that lock when the owner dies, however it dies, and the lock is
  the same in every PID namespace that shares /dev/shm, so "is the owner alive" never
  depends on a PID that may belong to another namespace (see :mod:`.cleanup`).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import secrets
import sys
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from fastdist.engine.signals import deferred_signals
from fastdist.errors import ConfigError

__all__ = [
    "ArenaSpec",
    "SharedArena",
    "SEGMENT_PREFIX",
    "LOCK_SUFFIX",
    "SHM_DIR",
    "arena_bytes",
    "list_segments",
]

SEGMENT_PREFIX = "fastdist-"
LOCK_SUFFIX = ".lock"
SHM_DIR = "/dev/shm"
# 64-byte alignment keeps every array on its own cache lines (no false sharing between
# the per-worker slots) and satisfies SIMD loads in BLAS and Numba.
_ALIGN = 64


@dataclass(frozen=True)
class ArenaSpec:
    """Everything a worker needs to attach: picklable, a few hundred bytes."""

    name: str
    size: int
    arrays: dict[str, tuple[int, tuple[int, ...], str]] = field(default_factory=dict)


def _layout(arrays: dict[str, tuple[tuple[int, ...], np.dtype]]) -> tuple[dict, int]:
    placed, pos = {}, 0
    for name, (shape, dtype) in arrays.items():
        dtype = np.dtype(dtype)
        pos = (pos + _ALIGN - 1) // _ALIGN * _ALIGN
        placed[name] = (pos, tuple(int(s) for s in shape), dtype.str)
        pos += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return placed, max(pos, 1)


def arena_bytes(arrays: dict[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """The size of the segment that would hold ``arrays`` (for a memory plan)."""
    return _layout(arrays)[1]


def _hold_lock(name: str) -> int:
    """Create ``<segment>.lock`` and hold an exclusive flock on it (the fd is not
    inherited by children: PEP 446). Taken before the segment exists, so a fastdist
    segment without its lock file is never a live one of this version."""
    fd = os.open(os.path.join(SHM_DIR, name + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _release_lock(name: str, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(SHM_DIR, name + LOCK_SUFFIX))
    os.close(fd)  # releases the flock


def _reserve_pages(name: str, size: int) -> None:
    """Allocate every page now: on a tmpfs that cannot hold them this fails with
    ENOSPC here, instead of a SIGBUS at the first write to a missing page."""
    try:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    except FileNotFoundError:
        return  # not Linux-style /dev/shm: nothing to reserve through
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV):
            return  # a filesystem without fallocate: the memory plan is the guard
        if exc.errno != errno.ENOSPC:
            raise
        raise ConfigError(
            f"shared memory is full: {SHM_DIR} cannot hold a {size / 2**20:.1f} MiB "
            "segment; give it more room (docker run --shm-size=..., or "
            "mount -o remount,size=... /dev/shm) or make the data/model smaller"
        ) from None
    finally:
        os.close(fd)


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    """Attach without registering with the resource tracker.

    On Python < 3.13 an attaching process registers the segment and its tracker may
    unlink it when that process exits (bpo-39959). Only the coordinator owns segments.
    """
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register


class SharedArena:
    """Named arrays in one segment. Use :meth:`create` (owner) or :meth:`attach`."""

    def __init__(
        self,
        spec: ArenaSpec,
        shm: shared_memory.SharedMemory,
        owner: bool,
        lock_fd: int | None = None,
    ) -> None:
        self.spec = spec
        self._shm = shm
        self._owner = owner
        self._lock_fd = lock_fd
        self._arrays: dict[str, np.ndarray] = {}
        for key, (offset, shape, dtype) in spec.arrays.items():
            count = int(np.prod(shape, dtype=np.int64))
            self._arrays[key] = np.ndarray(
                shape, dtype=np.dtype(dtype), buffer=shm.buf, offset=offset
            )
            assert self._arrays[key].size == count

    @classmethod
    def create(cls, arrays: dict[str, tuple[tuple[int, ...], np.dtype]]) -> SharedArena:
        """Allocate a zero-filled segment holding ``arrays`` (name -> (shape, dtype))."""
        placed, size = _layout(arrays)
        name = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        arena = None
        try:
            # Ctrl-C / SIGTERM wait until the segment is complete (or gone again); one
            # that arrived meanwhile is delivered as the block ends, and then the new
            # segment goes too.
            with deferred_signals():
                lock_fd = _hold_lock(name) if os.path.isdir(SHM_DIR) else None
                shm = None
                try:
                    shm = shared_memory.SharedMemory(name=name, create=True, size=size)
                    _reserve_pages(name, size)
                except BaseException:
                    if shm is not None:
                        shm.close()
                        with contextlib.suppress(FileNotFoundError):
                            shm.unlink()
                    _release_lock(name, lock_fd)
                    raise
                arena = cls(ArenaSpec(name, size, placed), shm, owner=True, lock_fd=lock_fd)
                _OWNED[name] = arena
        except BaseException:
            if arena is not None:
                arena.close()
            raise
        return arena

    @classmethod
    def attach(cls, spec: ArenaSpec) -> SharedArena:
        return cls(spec, _attach_untracked(spec.name), owner=False)

    def __getitem__(self, key: str) -> np.ndarray:
        return self._arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    @property
    def name(self) -> str:
        return self.spec.name

    def close(self) -> None:
        """Drop the views and unmap; the owner also unlinks. Safe to call twice."""
        if self._shm is None:
            return
        with deferred_signals():  # a signal here must not leave the name behind
            self._arrays.clear()
            shm, self._shm = self._shm, None
            # A caller may still hold a view (BufferError): the mapping then dies with
            # the process, but the name must still go so nothing leaks in /dev/shm.
            with contextlib.suppress(BufferError):
                shm.close()
            if self._owner:
                with contextlib.suppress(FileNotFoundError):
                    shm.unlink()
                _release_lock(self.spec.name, self._lock_fd)
                self._lock_fd = None
                _OWNED.pop(self.spec.name, None)

    def __enter__(self) -> SharedArena:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Segments this process owns and has not closed yet. A signal can still land between
# ``create`` returning and a ``with`` block taking the arena over (CPython checks for
# signals when ``__enter__`` starts); whatever is left here when the interpreter exits,
# normally or by an exception, is closed then, so no segment outlives its owner.
_OWNED: dict[str, SharedArena] = {}


@atexit.register
def _close_owned() -> None:
    for arena in list(_OWNED.values()):
        arena.close()


def list_segments(with_locks: bool = False) -> list[str]:
    """Names of ``fastdist-`` segments currently in /dev/shm (Linux); with
    ``with_locks`` their lock files too."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted(
        n
        for n in names
        if n.startswith(SEGMENT_PREFIX) and (with_locks or not n.endswith(LOCK_SUFFIX))
    )
