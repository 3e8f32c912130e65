"""One shared-memory block holding named, aligned NumPy arrays.

The coordinator creates and unlinks the block; workers attach to it from a picklable
:class:`ArenaSpec` and get zero-copy views. Segment names start with ``fastdist-`` and
carry the owner's pid, so a leaked segment is easy to find and to attribute.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory

import numpy as np

__all__ = ["ArenaSpec", "SharedArena", "SEGMENT_PREFIX", "list_segments"]

SEGMENT_PREFIX = "fastdist-"
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

    def __init__(self, spec: ArenaSpec, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self.spec = spec
        self._shm = shm
        self._owner = owner
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
        shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        return cls(ArenaSpec(name, size, placed), shm, owner=True)

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
        self._arrays.clear()
        shm, self._shm = self._shm, None
        # A caller may still hold a view (BufferError): the mapping then dies with the
        # process, but the name must still go so nothing leaks in /dev/shm.
        with contextlib.suppress(BufferError):
            shm.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()

    def __enter__(self) -> SharedArena:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_segments() -> list[str]:
    """Names of ``fastdist-`` segments currently in /dev/shm (Linux)."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(SEGMENT_PREFIX))
    except FileNotFoundError:
        return []
