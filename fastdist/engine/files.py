"""Files someone else may have made: what a path names before it is opened, and
writing atomically in a directory someone else may control.

Reading: a path the user (or a run directory) names may be a FIFO (opening it blocks
until a writer comes: forever, for a mistyped path), a device (``/dev/zero`` never
ends), a directory or a socket. :func:`regular_file` refuses all of them by ``stat``,
before anything is opened.

Writing: a run directory can come from anywhere (copied, unpacked, shared), so whoever made it
may have planted symbolic links where fastdist writes: at the output's name, or at the
temporary name it writes first (``.NAME.PID.tmp``, easy to guess). Opening either with
a plain ``open(path, "w")`` follows the link and writes wherever it points. Here the
temporary file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so it is always a
new file of our own, and the output's name is refused if it is a link; the rename
then replaces a directory entry and never follows anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fastdist.errors import ConfigError

__all__ = ["NotARegularFile", "refuse_link", "regular_file", "replacing"]

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotARegularFile(ConfigError):
    """``path`` is ``kind`` (a FIFO, a device, ...), not a regular file."""

    def __init__(self, path, kind: str, setting: str = "") -> None:
        self.path, self.kind = path, kind
        super().__init__(f"{setting}{path} is not a regular file ({kind})")


def regular_file(path, setting: str = "") -> Path:
    """``path`` (a Path), unless something other than a regular file is there: then
    :class:`NotARegularFile` (``setting`` prefixes its message). Checked with
    ``os.stat``, so nothing is opened (a link to a regular file is fine). A path that
    cannot be stat-ed (absent, unreadable directory) is returned: the caller's own open
    says what is wrong in its own words."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return Path(path)
    if stat.S_ISREG(mode):
        return Path(path)
    kind = next((name for is_kind, name in _KINDS if is_kind(mode)), "an unknown kind of file")
    raise NotARegularFile(path, kind, setting)


def refuse_link(path: str | Path) -> None:
    """A ConfigError if ``path`` is a symbolic link (dangling or not)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise ConfigError(f"{path} is a symbolic link; refusing to write through it")


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = ".tmp", lock: bool = False) -> Iterator[BinaryIO]:
    """A new binary file that becomes ``path`` when the block ends without an error.

    It is written at ``.NAME.PID<suffix>`` beside ``path`` (created, never opened
    through a link) and renamed over ``path``; on any failure (an exception, a full
    disk, Ctrl-C) it is removed and ``path`` is left as it was. ``lock`` holds an
    ``flock`` on it until the rename, so a cleaner can tell a file being written from
    one a killed writer left behind.
    """
    path = Path(path)
    refuse_link(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        fd = os.open(tmp, _NEW_FILE, 0o644)
    except FileExistsError:
        raise ConfigError(
            f"{tmp} already exists (a file or link left there); refusing to write through it"
        ) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if lock:
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield fh
            fh.flush()
            os.replace(tmp, path)  # still locked: no cleaner can take it for abandoned
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
