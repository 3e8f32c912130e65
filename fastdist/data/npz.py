"""Reading an untrusted ``.npz`` file (a checkpoint, saved worker states, a dataset or
its cache) into a dict of arrays, or one line that names the file and the problem.

``np.load(..., allow_pickle=False)`` in a try block is not enough for a file anyone
may have written or edited: a member that is not an ``.npy`` array comes back as
``bytes``; a header may declare an array far larger than the member holds, which NumPy
allocates before reading (a forged shape of 2**40 rows is a MemoryError); an unknown
compression method or an encrypted member raise NotImplementedError and RuntimeError;
and a plain ``.npy`` file comes back as an array, not an archive. Here every member is
read through :mod:`zipfile` and :mod:`numpy.lib.format` and checked before anything
is allocated. Object arrays are refused (they would be unpickled), and so is a path
that is not a regular file, before it is opened (opening a FIFO blocks).

Callers keep their own checks of what the arrays mean (keys, shapes, hashes) and their
own wording: they catch :class:`NpzError` (``detail``) and :class:`MissingArrays`
(``missing``), both ConfigErrors, and say what kind of file it was meant to be.
"""

from __future__ import annotations

import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from fastdist.engine.files import NotARegularFile, regular_file
from fastdist.engine.memory import available_ram_bytes, human_bytes
from fastdist.errors import ConfigError

__all__ = ["HEADER_ERRORS", "MissingArrays", "NpzError", "checker", "npy_header", "read_npz"]

# What zipfile, zlib and numpy.lib.format raise on a damaged archive or member.
# RuntimeError: an encrypted member, and (its subclass NotImplementedError) an unknown
# compression method; MemoryError: a member larger than the memory (after the checks
# below, only if the memory went elsewhere meanwhile).
# What NumPy's .npy header reader raises on a damaged header: its dict literal goes
# through ast.literal_eval and, failing that, a tokenize pass (SyntaxError, TokenError;
# found by the fuzz: ``'shape': (10, 28, 28s, }``).
HEADER_ERRORS = (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError)
_UNREADABLE = (
    *HEADER_ERRORS,
    KeyError,
    zlib.error,
    zipfile.BadZipFile,
    RuntimeError,
    MemoryError,
)
_VERSIONS = ((1, 0), (2, 0), (3, 0))
_DRAIN = 1 << 20


class NpzError(ConfigError):
    """``path`` cannot be read as an .npz file; ``detail`` says why (one line)."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path, self.detail = path, detail
        super().__init__(f"{path}: cannot read as .npz ({detail})")


class MissingArrays(NpzError):
    """The archive lacks the arrays ``missing`` (in the order they were asked for)."""

    def __init__(self, path: Path, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(path, f"missing array(s) {', '.join(missing)}")


def checker(prefix: str, suffix: str = "") -> Callable[[object, str], None]:
    """``need(ok, message)``: unless ``ok``, a ConfigError ``prefix + message + suffix``
    (each caller's own wording for what a file's arrays must be)."""

    def need(ok, message: str) -> None:
        if not ok:
            raise ConfigError(f"{prefix}{message}{suffix}")

    return need


def read_npz(
    path: str | Path,
    required: Iterable[str] = (),
    optional: Callable[[str], bool] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    max_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """The arrays ``required`` (all must be there) and any other whose name ``optional``
    accepts, read from the .npz file at ``path``. Names are NumPy's (``x`` is the member
    ``x`` or ``x.npy``); members not asked for are never read. ``shapes`` names the
    shape the caller expects of some arrays: a member whose header declares another is
    refused before a byte of it is inflated (a deflated member may declare a thousand
    times its size). ``max_bytes`` bounds what the arrays asked for may declare in all
    (small fields of a file: a text scalar's dtype may declare gigabytes). Raises
    :class:`MissingArrays` or :class:`NpzError`, never anything else."""
    path = Path(path)
    required = tuple(required)
    try:
        regular_file(path)  # a FIFO would block the open below (forever)
    except NotARegularFile as exc:
        raise NpzError(path, f"not a regular file: {exc.kind}") from None
    try:
        with zipfile.ZipFile(path) as archive:
            wanted = _members(path, archive.namelist(), required, optional)
            infos = {key: archive.getinfo(name) for key, name in wanted.items()}
            expected = shapes or {}
            declared = (
                _declared_bytes(path, k, archive, i, expected.get(k)) for k, i in infos.items()
            )
            total = sum(declared)
            if max_bytes is not None and total > max_bytes:
                raise NpzError(path, f"its arrays declare {total} bytes, over {max_bytes}")
            _check_room(path, total)
            return {key: _read(archive, info) for key, info in infos.items()}
    except NpzError:
        raise
    except _UNREADABLE as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise NpzError(path, detail) from None


def _members(path: Path, names: list[str], required: tuple, optional) -> dict[str, str]:
    """Key -> member name of the arrays asked for. NumPy's naming: the key ``x`` is the
    member ``x`` if there is one, else ``x.npy``."""
    exact = set(names)

    def member(key: str) -> str:
        return key if key in exact else f"{key}.npy"

    missing = [key for key in required if member(key) not in exact]
    if missing:
        raise MissingArrays(path, missing)
    keys = dict.fromkeys(name[:-4] if name.endswith(".npy") else name for name in names)
    extra = [key for key in keys if key not in required and optional and optional(key)]
    return {key: member(key) for key in (*required, *extra)}


def _declared_bytes(
    path: Path, key: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, expected=None
) -> int:
    """The bytes the member's .npy header declares, once they are known to be in it
    (and its shape is the ``expected`` one, if given)."""
    with archive.open(info) as fp:
        shape, dtype = npy_header(fp, key)
        if dtype.hasobject:
            raise NpzError(path, f"{key} is an object array (reading it would unpickle it)")
        if expected is not None and tuple(shape) != tuple(expected):
            raise NpzError(path, f"{key} has shape {shape}, expected {tuple(expected)}")
        count = 1
        for d in shape:
            count *= d  # Python ints: cannot overflow (a negative d fails in read_array)
        declared, held = count * dtype.itemsize, info.file_size - fp.tell()
    if declared > held:
        raise NpzError(
            path, f"{key} declares {shape} {dtype} ({declared} bytes) but holds {held} bytes"
        )
    return declared


def npy_header(fp, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of the .npy array ``name`` that ``fp`` is at the
    start of, leaving ``fp`` at its data. ValueError (or EOFError) if it is not one."""
    version = np.lib.format.read_magic(fp)
    if version not in _VERSIONS:
        raise ValueError(f"{name} is an .npy array of unknown version {version}")
    # Version 3 differs from 2 only in the header's text encoding (utf-8 field names of
    # structured dtypes); the shape and an unstructured dtype read the same.
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read(fp)
    return shape, dtype


def _check_room(path: Path, total: int) -> None:
    ram = available_ram_bytes()
    if ram is not None and total > ram:
        raise NpzError(
            path,
            f"its arrays need {human_bytes(total)}, more than the {human_bytes(ram)} of "
            "memory available",
        )


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as fp:
        array = np.lib.format.read_array(fp, allow_pickle=False)
        # Read to the member's end: zipfile checks the CRC only there, and bytes after
        # the array would otherwise go unchecked.
        while fp.read(_DRAIN):
            pass
    return array
