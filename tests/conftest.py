"""Shared fixtures. Every test is checked for leaks: no ``fastdist-`` segment left in
/dev/shm and no worker process alive once it ends."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from fastdist.engine.shm import list_segments

TOKEN_VAR = "FASTDIST_TEST_TOKEN"
# Every process started from the test session (workers, CLI subprocesses and their
# workers) inherits this variable, which is how survivors are found in /proc.
os.environ.setdefault(TOKEN_VAR, f"pytest-{os.getpid()}")


def _environ_has_token(pid: int, token: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return token in fh.read()
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def surviving_processes() -> list[tuple[int, str]]:
    """Processes started under this test session that are still alive, other than the
    session itself and multiprocessing's long-lived resource tracker."""
    token = f"{TOKEN_VAR}={os.environ[TOKEN_VAR]}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        if _environ_has_token(pid, token):
            cmd = _cmdline(pid)
            if "resource_tracker" in cmd or not cmd:
                continue  # helper of the session itself, or a zombie being reaped
            found.append((pid, cmd))
    return found


_SMALL_RUN = {
    "dataset": "synthetic",
    "dataset.n_train": "512",
    "dataset.n_test": "128",
    "dataset.n_features": "10",
    "dataset.n_classes": "3",
    "model.hidden": "[12]",
    "batch_size": "16",
    "diagnostics": "false",
}


def small_run(*extra: str) -> list[str]:
    """Overrides for a run of a few hundred milliseconds (synthetic data, a 10-12-3 MLP),
    with ``extra`` overrides replacing the defaults they name."""
    changed = dict(item.split("=", 1) for item in extra)
    merged = {**_SMALL_RUN, **changed}
    return [f"{key}={value}" for key, value in merged.items()]


def _someone_elses(segment: str) -> bool:
    """A segment created by a live process outside this test session (another run on
    the same machine), which this session must neither blame nor touch. Segments of
    dead owners count as ours: the check stays conservative."""
    from fastdist.engine.cleanup import owner_pid

    pid = owner_pid(segment)
    if pid is None or pid == os.getpid():
        return False
    token = f"{TOKEN_VAR}={os.environ[TOKEN_VAR]}".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return token not in fh.read()
    except OSError:
        return False  # gone: it was ours or nobody's


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a shared-memory segment or a live child behind."""
    before = set(list_segments(with_locks=True))
    yield
    assert wait_until(lambda: not multiprocessing.active_children(), 5.0), (
        f"child processes survived: {multiprocessing.active_children()}"
    )
    assert wait_until(lambda: not surviving_processes(), 5.0), (
        f"processes survived: {surviving_processes()}"
    )
    now = set(list_segments(with_locks=True))  # lock files too
    leaked = {name for name in now - before if not _someone_elses(name)}
    assert not leaked, f"leaked shared-memory segments: {sorted(leaked)}"


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """The file a payload would create, and a module on sys.path whose ``make`` creates
    it (what a hostile ``factory`` would name)."""
    path = tmp_path / "pwned"
    (tmp_path / "payload_module.py").write_text(
        f"def make(*args, **kwargs):\n    open({str(path)!r}, 'w').close()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    import sys

    sys.modules.pop("payload_module", None)


@pytest.fixture
def deadline():
    """A regression that blocks (a FIFO's open) fails the test instead of hanging it."""
    import signal

    def expired(signum, frame):
        raise TimeoutError("blocked: a file was opened that should have been refused")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def tiny_overrides():
    """A run that takes well under a second: synthetic data, a small MLP."""
    return [
        "dataset=synthetic",
        "dataset.n_train=512",
        "dataset.n_test=256",
        "dataset.n_features=12",
        "dataset.n_classes=4",
        "model.hidden=[16]",
        "batch_size=16",
        "epochs=2",
    ]


def edited_npz(path, **changes) -> dict:
    """The arrays of the .npz file at ``path`` with ``changes`` applied (a value
    replaces an array, None drops it): what someone editing the file would write."""
    import numpy as np

    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return arrays


def saved_run_dir(root, overrides: list[str]):
    """``root`` made into a run directory as ``fastdist save_states=true`` leaves it:
    the run trained in-process, its overrides and its saved worker states."""
    import yaml

    import fastdist
    from fastdist.run.states import save_states, split_hash

    cfg = fastdist.compose(overrides)
    result = fastdist.train(cfg)
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    save_states(
        root,
        result.worker_params,
        result.samples_seen,
        result.validation_fraction,
        result.sync,
        split_hash(cfg),
        result.base,
    )
    return root
