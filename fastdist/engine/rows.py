"""Training rows that exist once: in a shared-memory segment or a memory-mapped file.

A loader that can write in place asks a :class:`RowStore` for its arrays
(:meth:`RowStore.empty`: zero-filled shared memory), so the data are generated straight
where the workers will read them. Arrays memory-mapped from a file (``np.load(...,
mmap_mode="r")``) are never copied: workers map the same region of the same file, and
the rows are shared through the page cache. Any other array is copied into the store
once (:meth:`RowStore.share`).

The run shuffles *by index*: the store also holds the shuffled order of the training
rows, and a worker gathers its minibatch through it (``x[rows[i]]``) instead of the
coordinator copying a shuffled dataset.

Workers reopen everything from a picklable :class:`RowsSpec` (segment names or file
paths, offsets and shapes). It travels in each job's worker spec, not at spawn, so a
warm pool's workers open the rows of whichever job they run.

This store is separate from the run's arena on purpose: the arena's layout (parameter
rows, their padding) does not depend on the data, and the data's segments do not
depend on the model.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass

import numpy as np

from fastdist.engine.shm import ArenaSpec, SharedArena, arena_bytes

__all__ = [
    "ArrayRef",
    "Prefetch",
    "RowStore",
    "RowsSpec",
    "file_root",
    "open_rows",
    "segment_bytes",
]


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
            _random_access(array)
            return array, None
        assert self.segment is not None
        arrays = {"a": (self.offset, self.shape, self.dtype)}
        arena = SharedArena.attach(ArenaSpec(self.segment.name, self.segment.size, arrays))
        return arena["a"], arena


def _random_access(array: np.memmap) -> None:
    """Tell the kernel this map is read in random order (``MADV_RANDOM``).

    A worker reads scattered rows of a few KB; with the default advice every page fault
    also reads ahead a window of the file around it (tens of times the row), which on a
    file larger than the memory evicts rows before they are used. The rows a worker
    needs next are asked for exactly (:class:`Prefetch`)."""
    raw = getattr(array, "_mmap", None)
    if raw is not None and hasattr(mmap, "MADV_RANDOM"):
        raw.madvise(mmap.MADV_RANDOM)


@dataclass(frozen=True)
class RowsSpec:
    """Picklable: the training features and labels, and the order that shuffles them."""

    x: ArrayRef
    y: ArrayRef
    rows: ArrayRef


def file_root(a: np.ndarray) -> np.memmap | None:
    """The memory map of a file that ``a`` is a view into, or None.

    Walks the chain of bases down to the array numpy built directly on the ``mmap``:
    its ``offset`` is the file offset of its first byte, which a view's ``offset``
    attribute (copied from its parent) is not.
    """
    b = a
    while isinstance(b, np.ndarray):
        if isinstance(b, np.memmap) and isinstance(b.base, mmap.mmap) and b.filename:
            return b
        b = b.base
    return None


def _one_array(shape, dtype) -> dict:
    """The layout of a store's segment: one array, ``a``."""
    return {"a": (tuple(int(d) for d in shape), np.dtype(dtype))}


def segment_bytes(shape, dtype) -> int:
    """The size of the segment :meth:`RowStore.empty` creates for ``shape`` and
    ``dtype`` (what a memory plan counts for it)."""
    return arena_bytes(_one_array(shape, dtype))


def _contains(outer: np.ndarray, a: np.ndarray) -> bool:
    lo = outer.ctypes.data
    return lo <= a.ctypes.data and a.ctypes.data + a.nbytes <= lo + outer.nbytes


class RowStore:
    """Owns the shared segments of one run's data (``shared=False``: private memory,
    for callers that start no workers). Close it (or use ``with``) to unlink them."""

    def __init__(self, shared: bool = True) -> None:
        self.shared = shared
        self._arenas: list[SharedArena] = []

    def empty(self, shape, dtype) -> np.ndarray:
        """A zero-filled array that workers can read without a copy."""
        if not self.shared:
            return np.zeros(shape, dtype)
        arena = SharedArena.create(_one_array(shape, dtype))
        self._arenas.append(arena)
        return arena["a"]

    @property
    def shared_bytes(self) -> int:
        """The bytes of the segments this store holds in /dev/shm now."""
        return sum(arena.spec.size for arena in self._arenas)

    def _segment(self, a: np.ndarray) -> SharedArena | None:
        return next((s for s in self._arenas if _contains(s["a"], a)), None)

    def share(self, a: np.ndarray) -> np.ndarray:
        """``a`` itself if workers can already open it (in this store, or a read-only
        view of a mapped file), else a shared copy of it."""
        if not self.shared:
            return a
        if a.flags.c_contiguous and (self._segment(a) is not None or file_root(a) is not None):
            return a
        out = self.empty(a.shape, a.dtype)
        out[...] = a
        return out

    def ref(self, a: np.ndarray) -> ArrayRef:
        """Where a worker finds ``a`` (which :meth:`share` returned)."""
        if not a.flags.c_contiguous:
            raise ValueError("only C-contiguous arrays can be opened by workers")
        segment = self._segment(a)
        if segment is not None:
            base = segment.spec.arrays["a"][0]
            offset = base + a.ctypes.data - segment["a"].ctypes.data
            return ArrayRef(tuple(a.shape), a.dtype.str, offset, segment.spec)
        root = file_root(a)
        if root is None:
            raise ValueError("the array is not in this store (call share() first)")
        offset = int(root.offset) + a.ctypes.data - root.ctypes.data
        path = os.path.abspath(root.filename)
        return ArrayRef(tuple(a.shape), a.dtype.str, offset, path=path)

    def close(self) -> None:
        """Unlink the segments (views still held elsewhere keep their pages until they
        go; a worker's view is its own mapping). Safe to call twice."""
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
        assert ref.path is not None
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
    opened = []
    prefetch = None
    try:
        for ref in (spec.x, spec.y, spec.rows):
            opened.append(ref.open())
        if spec.x.path is not None and hasattr(os, "posix_fadvise"):
            prefetch = Prefetch(spec.x)
        yield (*(array for array, _ in opened), prefetch)
    finally:
        if prefetch is not None:
            prefetch.close()
        for _, arena in opened:
            if arena is not None:
                arena.close()
