"""Containers: PID 1, a small /dev/shm, and PID namespaces sharing one /dev/shm.

The namespace tests need ``unshare`` and the right to use it (root, or user
namespaces); they are skipped where it is not available."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import small_run, wait_until

from fastdist.engine.memory import check_memory_plan
from fastdist.engine.shm import LOCK_SUFFIX, SharedArena, list_segments
from fastdist.errors import ConfigError

PY = sys.executable


def _can_unshare(*flags: str) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", *flags, "true"], capture_output=True)
    return probe.returncode == 0


needs_pid_ns = pytest.mark.skipif(
    not _can_unshare("--pid", "--fork", "--mount-proc"), reason="no PID namespaces here"
)
needs_mount_ns = pytest.mark.skipif(not _can_unshare("-m"), reason="no mount namespaces here")


@needs_pid_ns
def test_a_run_works_as_pid_1(tmp_path):
    # docker run image fastdist: the coordinator is PID 1, so its workers' parent is 1.
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", PY, "-m", "fastdist"]
        + small_run("steps=6", "workers=2")
        + [f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "metrics.json").exists()


@needs_mount_ns
def test_a_small_dev_shm_is_refused_before_anything_is_allocated(tmp_path):
    # Docker's default 64 MB, here 8 MB: 20000 x 256 float32 rows do not fit.
    script = (
        "mount -t tmpfs -o size=8m tmpfs /dev/shm && exec "
        f"{PY} -m fastdist "
        + " ".join(small_run("dataset.n_train=20000", "dataset.n_features=256"))
        + f" hydra.run.dir={tmp_path}/run"
    )
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "shared memory" in lines[0] and "--shm-size=" in lines[0]
    assert "Bus error" not in out.stderr


@needs_mount_ns
def test_a_segment_that_does_not_fit_fails_at_creation_not_with_sigbus():
    # Past the plan (another process may fill /dev/shm in between): the pages are
    # reserved at creation, so a full tmpfs is a ConfigError, never a SIGBUS on write.
    code = (
        "import os\n"
        "from fastdist.engine.shm import SharedArena\n"
        "from fastdist.errors import ConfigError\n"
        "try:\n"
        "    a = SharedArena.create({'x': ((4 * 2**20,), 'float32')})\n"
        "    a['x'][:] = 1\n"
        "except ConfigError as exc:\n"
        "    print('refused:', exc)\n"
        "print('left:', sorted(os.listdir('/dev/shm')))\n"
    )
    script = f'mount -t tmpfs -o size=8m tmpfs /dev/shm && exec {PY} -c "$0"'
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "refused: shared memory is full" in out.stdout
    assert "left: []" in out.stdout


def test_the_memory_plan_names_the_numbers_and_the_fix(monkeypatch):
    from fastdist.engine import memory

    monkeypatch.setattr(memory, "shm_free_bytes", lambda: (60 * 2**20, 64 * 2**20))
    monkeypatch.setattr(memory, "available_ram_bytes", lambda: 8 * 2**30)
    check_memory_plan(50 * 2**20)
    with pytest.raises(
        ConfigError, match=r"100.0 MiB of shared memory .* 60.0 MiB free .*--shm-size="
    ):
        check_memory_plan(100 * 2**20)
    with pytest.raises(ConfigError, match="only 8.0 GiB is available"):
        check_memory_plan(10 * 2**20, 9 * 2**30)


def _dead_owner_segment() -> str:
    """A segment whose owner was SIGKILLed together with its resource tracker."""
    proc = subprocess.Popen(
        [
            PY,
            "-c",
            "import time; from fastdist.engine.shm import SharedArena;"
            "a = SharedArena.create({'x': ((4,), 'float32')}); print(a.name, flush=True);"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    name = proc.stdout.readline().strip()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    return name


@needs_pid_ns
def test_clean_in_another_pid_namespace_never_touches_a_live_run():
    # The cleaner's PID namespace cannot see our PID: the name's PID means nothing there.
    dead = _dead_owner_segment()
    assert dead in list_segments()
    with SharedArena.create({"a": ((4,), "float32")}) as live:
        out = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", PY, "-m", "fastdist.cli.clean"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert live.name in list_segments()
        assert dead not in list_segments()
        assert dead + LOCK_SUFFIX not in list_segments(with_locks=True)
        assert f"removed /dev/shm/{dead}" in out.stdout


def test_a_lock_held_by_a_live_owner_keeps_its_segment_whatever_the_pid_says(monkeypatch):
    from fastdist.engine import cleanup

    monkeypatch.setattr(cleanup, "_alive", lambda pid: False)  # as seen from another namespace
    with SharedArena.create({"a": ((4,), "float32")}) as live:
        assert live.name not in cleanup.stale_segments()
        assert live.name not in cleanup.remove_stale_segments()
        assert live.name in list_segments()
    assert wait_until(lambda: live.name + LOCK_SUFFIX not in list_segments(with_locks=True), 1)


def test_a_segment_without_a_lock_file_is_left_alone_unless_asked():
    # An older fastdist's segment: its PID may belong to another namespace.
    name = "fastdist-999999999-0ldf0rm4"
    with open(f"/dev/shm/{name}", "wb") as fh:
        fh.write(b"\0" * 64)
    try:
        from fastdist.engine.cleanup import remove_stale_segments, stale_segments

        assert name not in stale_segments()
        assert name in stale_segments(legacy=True)
        assert name in remove_stale_segments(legacy=True)
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")
