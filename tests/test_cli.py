"""The command line as a user meets it: runs, sweeps, bad input and interruptions,
each through a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_until

from fastdist.engine.shm import list_segments

TINY = [
    "dataset=synthetic",
    "dataset.n_train=512",
    "dataset.n_test=128",
    "dataset.n_features=8",
    "dataset.n_classes=3",
    "model.hidden=[8]",
    "batch_size=16",
    "epochs=2",
]
REQUIRED_METRICS = {
    "test_accuracy",
    "test_loss",
    "train_seconds",
    "samples_per_second",
    "workers",
    "combiner",
    "backend",
    "dataset",
    "seed",
}


def fastdist(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastdist", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_run_writes_metrics(tmp_path):
    proc = fastdist(*TINY, "workers=2", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics.keys() >= REQUIRED_METRICS
    assert metrics["workers"] == 2 and metrics["combiner"] == "grad_avg"
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert "epoch 2" in proc.stdout


def test_console_script_and_module_are_the_same_app(tmp_path):
    script = Path(sys.executable).with_name("fastdist")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("fastdist: ")
    assert all(name in out.stdout for name in ("grad_avg", "weight_avg", "local_sgd"))
    cfg = fastdist("--cfg", "job", "workers=3", cwd=tmp_path)
    assert cfg.returncode == 0 and "workers: 3" in cfg.stdout


def test_a_two_by_two_multirun_writes_one_metrics_file_per_job(tmp_path):
    proc = fastdist(
        "-m",
        *TINY,
        "combiner=grad_avg,weight_avg",
        "workers=1,2",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/metrics.json"))]
    assert {(m["combiner"], m["workers"]) for m in runs} == {
        ("grad_avg", 1),
        ("grad_avg", 2),
        ("weight_avg", 1),
        ("weight_avg", 2),
    }


@pytest.mark.parametrize(
    ("overrides", "code", "cause"),
    [
        (
            ["combiner=nope"],
            2,
            "Could not find 'combiner/nope' (available: aligned_avg, best_member, dare, "
            "dare_ties, diloco, ensemble,",
        ),
        (["workers=0"], 2, "workers must be >= 1, got 0"),
        (["batch_size=4096"], 2, "batch_size=4096 is larger than a shard"),
        (["workers=two"], 2, "could not be converted to Integer (key: workers)"),
        (["wrkers=2"], 2, "Key 'wrkers' not in 'FastdistConfig'"),
        (["optimizer.lr=-1"], 2, "optimizer.lr must be > 0"),
        (
            ["optimizer=adam"],
            2,
            "Could not find 'optimizer/adam' (available: adagrad, adamw, lion, sgd)",
        ),
        (["optimizer=adamw", "optimizer.momentum=0.9"], 2, "Key 'momentum' not in 'adamw_schema'"),
        (["schedule=cosinus"], 2, "Could not find 'schedule/cosinus' (available: constant,"),
        (["schedule=cosine", "schedule.warmup=5"], 2, "Key 'warmup' not in 'cosine_schema'"),
        (["lr_scaling=cubic"], 2, "Invalid value 'cubic'"),
        (["optimizer.lr=1e4", "workers=1", "epochs=50"], 1, "loss became nan"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, overrides, code, cause):
    proc = fastdist(*TINY, *overrides, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fastdist: error: ") and cause in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


# --- interruptions: a long run, stopped from outside -------------------------------------

LONG = [
    "dataset=synthetic",
    "dataset.n_train=2048",
    "dataset.n_features=16",
    "model.hidden=[32]",
    "batch_size=16",
    "steps=10000000",
    "workers=2",
]


class LongRun:
    """A run started in its own session (like a shell job), watched until it trains."""

    def __init__(self, tmp_path: Path) -> None:
        self.run_dir = tmp_path / "run"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastdist", *LONG, f"hydra.run.dir={tmp_path}/run"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.stdout.append(line)

    def wait_training(self) -> None:
        # Inside the step loop: history.csv has a row past the starting point's (a fixed
        # sleep after start-up was not enough on a loaded machine: a worker could still
        # be taking the job).
        assert wait_until(lambda: self.workers() and self._history_rows() >= 2, 60), "never trained"

    def _history_rows(self) -> int:
        try:
            return len((self.run_dir / "history.csv").read_text().splitlines()) - 1
        except OSError:
            return 0

    def workers(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid and "resource_tracker" not in _cmd(entry):
                pids.append(int(entry))
        return pids

    def finish(self, timeout: float) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode, err


def _cmd(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def test_ctrl_c_stops_cleanly(tmp_path):
    run = LongRun(tmp_path)
    run.wait_training()
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    code, err = run.finish(timeout=10)
    assert code == 130, err
    assert err.strip() == "fastdist: error: interrupted; workers stopped and shared memory released"


def test_sigterm_stops_cleanly(tmp_path):
    run = LongRun(tmp_path)
    run.wait_training()
    run.proc.send_signal(signal.SIGTERM)
    code, err = run.finish(timeout=10)
    assert code == 143, err


def test_a_worker_killed_mid_run_fails_the_run_within_two_seconds(tmp_path):
    run = LongRun(tmp_path)
    run.wait_training()
    victim = run.workers()[-1]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    code, err = run.finish(timeout=10)
    assert time.monotonic() - killed < 2.0
    assert code == 1
    assert "was killed by SIGKILL before finishing" in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_killed_coordinator_leaves_a_segment_that_the_next_run_removes(tmp_path):
    run = LongRun(tmp_path)
    run.wait_training()
    before = set(list_segments())
    # Kill the whole process group at once: coordinator, workers and the resource
    # tracker that would otherwise clean up after the coordinator.
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.proc.wait()
    leftover = {n for n in before if n.startswith(f"fastdist-{run.proc.pid}-")}
    assert leftover and leftover <= set(list_segments())

    from fastdist.engine.shm import SharedArena

    with SharedArena.create({"a": ((4,), "float32")}) as live:  # a live run's segment
        script = Path(sys.executable).with_name("fastdist-clean")
        out = subprocess.run([script], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0
        assert not leftover & set(list_segments())
        assert live.name in list_segments()  # never touches a live run's segment
        assert f"removed {len(leftover)} stale segment(s)" in out.stdout


# --- the typed config and the app's identity --------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "cause"),
    [
        (["optimizer=adam"], "Could not find 'optimizer/adam'"),
        (["optimizer.name=sgd"], "Key 'name' not in 'sgd_schema'"),
        (["combiner=local_sgd", "combiner.perod=3"], "Key 'perod' not in 'local_sgd_schema'"),
        (["dataset=digits", "dataset.n_train=100"], "Key 'n_train' not in 'DigitsConfig'"),
        (["combiner.init=maybe"], "combiner.init must be 'shared' or 'independent'"),
        (["on_worker_failure=sometimes"], "on_worker_failure"),
        (["backend=cuda"], "Could not find 'backend/cuda'"),
    ],
)
def test_unknown_records_and_misspelt_keys_are_refused_in_one_line(tmp_path, overrides, cause):
    proc = fastdist(*TINY, *overrides, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and cause in lines[0], proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_version_help_banner_log_name_and_experiment_presets(tmp_path):
    from fastdist import __version__

    version = fastdist("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"fastdist {__version__}"
    assert fastdist("--help", cwd=tmp_path).stdout.startswith("fastdist: data-parallel")
    cfg = fastdist("--cfg", "job", "experiment=w1", cwd=tmp_path)
    assert cfg.returncode == 0, cfg.stderr
    assert "- 1024" in cfg.stdout and "batch_size: 256" in cfg.stdout
    proc = fastdist(*TINY, "epochs=1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "fastdist.log").exists()


def test_a_worker_traceback_becomes_the_cause_of_its_error(monkeypatch):
    import fastdist as api
    from fastdist.engine.faults import ENV_VAR
    from fastdist.engine.worker_errors import RemoteTraceback
    from fastdist.errors import WorkerError

    monkeypatch.setenv(ENV_VAR, "worker=1,step=2,kind=raise")
    with pytest.raises(WorkerError, match="worker 1 failed: RuntimeError") as info:
        api.train(api.compose([*TINY, "workers=2"]))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "maybe_fire" in str(cause)


def test_the_barrier_refuses_cpus_without_x86_store_order():
    from fastdist.engine.barrier import check_memory_order
    from fastdist.errors import ConfigError

    check_memory_order("x86_64")
    with pytest.raises(ConfigError, match="needs x86-64 store ordering; this CPU is aarch64"):
        check_memory_order("aarch64")
