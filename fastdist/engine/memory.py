"""The memory plan: does a run fit before anything is allocated?

The arena lives in /dev/shm, a tmpfs whose size is often far below the machine's RAM
(Docker gives containers 64 MB unless told ``--shm-size``). Touching a page a full tmpfs
cannot provide kills the process with SIGBUS, and an allocation larger than the RAM ends
in the OOM killer or a MemoryError after minutes of work. So the coordinator asks first,
and a run that cannot fit is refused in one line that names the numbers and the fix.
"""

from __future__ import annotations

import os

from fastdist.engine.shm import SHM_DIR
from fastdist.errors import ConfigError

__all__ = ["check_memory_plan", "shm_free_bytes", "available_ram_bytes", "human_bytes"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def shm_free_bytes(path: str = SHM_DIR) -> tuple[int, int] | None:
    """(free, total) bytes of the shared-memory filesystem, or None if there is none."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit (a container's), if any."""
    try:
        with open("/proc/self/cgroup") as fh:
            rel = next(
                (line.strip().split("::", 1)[1] for line in fh if line.startswith("0::")), None
            )
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as fh:
            limit = fh.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as fh:
            return max(0, int(limit) - int(fh.read().strip()))
    except (OSError, ValueError):
        return None


def available_ram_bytes() -> int | None:
    """MemAvailable, or the room under the cgroup limit when that is smaller."""
    ram = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    ram = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    room = _cgroup_room()
    if room is not None:
        ram = room if ram is None else min(ram, room)
    return ram


def _suggested_size(needed: int) -> str:
    """A /dev/shm size holding ``needed`` bytes with a quarter to spare ("512m", "3g")."""
    mib = -(-int(needed * 1.25) // 2**20)
    if mib < 1024:
        return f"{-(-mib // 64) * 64}m"
    return f"{-(-mib // 1024)}g"


def check_memory_plan(shared_bytes: int, private_bytes: int = 0, what: str = "the run") -> None:
    """Refuse (ConfigError, one line) a run whose arena (``shared_bytes``, in /dev/shm)
    or whose total (arena plus ``private_bytes`` of the coordinator's own arrays) cannot
    fit in what is free now."""
    ram = available_ram_bytes()
    total = shared_bytes + private_bytes
    if ram is not None and total > ram:
        raise ConfigError(
            f"{what} needs about {human_bytes(total)} of memory (shared arena "
            f"{human_bytes(shared_bytes)} + coordinator {human_bytes(private_bytes)}) but "
            f"only {human_bytes(ram)} is available; make the data or model smaller"
        )
    shm = shm_free_bytes()
    if shm is not None and shared_bytes > shm[0]:
        free, total = shm
        size = _suggested_size(shared_bytes + (total - free))
        raise ConfigError(
            f"{what} needs {human_bytes(shared_bytes)} of shared memory but {SHM_DIR} has "
            f"{human_bytes(free)} free (of {human_bytes(total)}); give it more room "
            f"(docker run --shm-size={size}, or mount -o remount,size={size} {SHM_DIR}) "
            "or make the data or model smaller"
        )
