"""Training rows that exist once: in a shared-memory segment or a memory-mapped file.

A loader that can write in place asks a :class:`RowStore` for its arrays
(:meth:`RowStore.empty`: zero-filled shared memory; :meth:`RowStore.map_npy`: a
read-only memory map of a ``.npy`` file), so the data are generated or read straight
where the workers will read them. The run shuffles *by index*: the store also holds the
shuffled order of the training rows, and a worker gathers its minibatch through it
(``x[rows[i]]``) instead of the coordinator copying a shuffled dataset.

Workers reopen everything from a picklable :class:`RowsSpec` (segment names or file
paths, offsets and shapes): shared memory is attached, files are mapped read-only and
shared through the page cache. An array a loader returns in private memory is copied
into the store once (:meth:`RowStore.share`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

from fastdist.engine.shm import ArenaSpec, SharedArena

__all__ = ["ArrayRef", "RowStore", "RowsSpec", "open_rows"]


@dataclass(frozen=True)
class ArrayRef:
    """Where one C-contiguous array lives: a segment (``segment``) or a file (``path``),
    at byte ``offset``, with ``shape`` and ``dtype``."""

    shape: tuple[int, ...]
    dtype: str
    offset: int
    segment: ArenaSpec | None = None
    path: str | None = None

    def open(self) -> tuple[np.ndarray, SharedArena | None]:
        """The array (read-only for files) and the attached segment to close, if any."""
        if self.path is not None:
            if 0 in self.shape:  # np.memmap refuses an empty map
                return np.empty(self.shape, self.dtype), None
            array = np.memmap(self.path, self.dtype, "r", self.offset, self.shape, order="C")
            return array, None
        assert self.segment is not None
        spec = ArenaSpec(
            self.segment.name, self.segment.size, {"a": (self.offset, self.shape, self.dtype)}
        )
        arena = SharedArena.attach(spec)
        return arena["a"], arena


@dataclass(frozen=True)
class RowsSpec:
    """Picklable: the training features and labels, and the order that shuffles them."""

    x: ArrayRef
    y: ArrayRef
    rows: ArrayRef


class _Root:
    """A whole segment or file mapping that arrays may be views into."""

    def __init__(self, array: np.ndarray, segment: ArenaSpec | None, path: str | None, base: int):
        self.array, self.segment, self.path, self.base = array, segment, path, base

    def holds(self, a: np.ndarray) -> bool:
        lo = self.array.ctypes.data
        return lo <= a.ctypes.data and a.ctypes.data + a.nbytes <= lo + self.array.nbytes


class RowStore:
    """Owns the shared segments of one run's data (``shared=False``: private memory,
    for callers that start no workers). Close it (or use ``with``) to unlink them."""

    def __init__(self, shared: bool = True) -> None:
        self.shared = shared
        self._roots: list[_Root] = []
        self._arenas: list[SharedArena] = []

    def empty(self, shape, dtype) -> np.ndarray:
        """A zero-filled array that workers can read without a copy."""
        if not self.shared:
            return np.zeros(shape, dtype)
        arena = SharedArena.create({"a": (tuple(shape), np.dtype(dtype))})
        self._arenas.append(arena)
        offset = arena.spec.arrays["a"][0]
        self._roots.append(_Root(arena["a"], arena.spec, None, offset))
        return arena["a"]

    def map_npy(self, path: str) -> np.ndarray:
        """The array in a ``.npy`` file, memory-mapped read-only (never copied)."""
        array = np.load(path, mmap_mode="r")
        if isinstance(array, np.memmap):
            self._roots.append(_Root(array, None, os.path.abspath(path), int(array.offset)))
        return array

    def _root(self, a: np.ndarray) -> _Root | None:
        if not a.flags.c_contiguous:
            return None
        return next((r for r in self._roots if r.holds(a)), None)

    def share(self, a: np.ndarray) -> np.ndarray:
        """``a`` itself if it already lives in the store, else a shared copy of it."""
        if not self.shared or self._root(a) is not None:
            return a
        out = self.empty(a.shape, a.dtype)
        out[...] = a
        return out

    def ref(self, a: np.ndarray) -> ArrayRef:
        root = self._root(a)
        if root is None:
            raise ValueError("the array is not in this store (call share() first)")
        offset = root.base + a.ctypes.data - root.array.ctypes.data
        return ArrayRef(tuple(a.shape), a.dtype.str, offset, root.segment, root.path)

    def close(self) -> None:
        self._roots.clear()
        arenas, self._arenas = self._arenas, []
        for arena in arenas:
            arena.close()

    def __enter__(self) -> RowStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Prefetch:
    """Asks the kernel to start reading rows of a memory-mapped file into the page
    cache (``posix_fadvise(WILLNEED)``, asynchronous), so a worker can request its next
    minibatch's rows while it computes the current one: the disk then sees a queue of
    row reads instead of one page fault at a time."""

    def __init__(self, ref: ArrayRef) -> None:
        self._fd = os.open(ref.path, os.O_RDONLY)
        self._offset = ref.offset
        self._row_bytes = int(np.prod(ref.shape[1:], dtype=np.int64)) * np.dtype(ref.dtype).itemsize

    def __call__(self, rows: np.ndarray) -> None:
        for row in rows.tolist():
            os.posix_fadvise(
                self._fd,
                self._offset + row * self._row_bytes,
                self._row_bytes,
                os.POSIX_FADV_WILLNEED,
            )

    def close(self) -> None:
        os.close(self._fd)


@contextlib.contextmanager
def open_rows(spec: RowsSpec):
    """``(x, y, rows, prefetch)`` in a worker: the training features and labels and the
    shuffled order of the training rows, all without a copy, and a :class:`Prefetch`
    for features in a file (None in shared memory); detached on exit."""
    opened = [ref.open() for ref in (spec.x, spec.y, spec.rows)]
    prefetch = (
        Prefetch(spec.x) if spec.x.path is not None and hasattr(os, "posix_fadvise") else None
    )
    try:
        yield (*(array for array, _ in opened), prefetch)
    finally:
        if prefetch is not None:
            prefetch.close()
        for _, arena in opened:
            if arena is not None:
                arena.close()
