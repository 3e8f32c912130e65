"""Ctrl-C and SIGTERM at any moment of a run: during the imports, the start-up, the
training, the final evaluation and the shutdown. Always one line, exit 130 (SIGINT) or
143 (SIGTERM) unless the run had already finished, no traceback, no leaked segment
(the autouse leak check) and no "leaked shared_memory" warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import small_run

RUN = small_run("workers=2", "steps=300", "diagnostics=true")
# Spread over a run of a few seconds: imports (< ~1.5 s), spawn and compile, training,
# evaluation, shutdown. Launched side by side so the whole sweep costs one run's time.
MOMENTS = [
    (signal.SIGINT, 0.25),  # before this, the interpreter itself is starting
    (signal.SIGINT, 0.4),
    (signal.SIGINT, 1.2),
    (signal.SIGINT, 2.0),
    (signal.SIGINT, 3.0),
    (signal.SIGINT, 4.5),
    (signal.SIGTERM, 0.2),
    (signal.SIGTERM, 1.6),
    (signal.SIGTERM, 3.5),
]


def _start(tmp_path, k: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fastdist", *RUN, f"hydra.run.dir={tmp_path}/run{k}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_a_signal_at_any_moment_is_one_line_and_its_exit_code(tmp_path):
    moments = MOMENTS
    procs = [_start(tmp_path, k) for k in range(len(moments))]
    started = time.monotonic()
    try:
        for proc, (sig, delay) in sorted(zip(procs, moments), key=lambda pm: pm[1][1]):
            time.sleep(max(0.0, started + delay - time.monotonic()))
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole process group
            else:
                os.kill(proc.pid, sig)  # `kill PID`, `docker stop`: the coordinator only
        outcomes = [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stderr.close()
    for (sig, delay), (code, err) in zip(moments, outcomes):
        where = f"{sig.name} after {delay} s"
        assert "Traceback" not in err and "leaked" not in err, f"{where}: {err}"
        if code == 0:
            continue  # finished before the signal arrived
        assert code == 128 + sig, f"{where}: exit {code}: {err}"
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1, f"{where}: {err}"
        assert ("interrupted" if sig == signal.SIGINT else "terminated") in errors[0]


def test_a_swallowed_ctrl_c_still_ends_the_run_with_130(monkeypatch, tmp_path):
    # A library that catches KeyboardInterrupt (seen once inside llvmlite during the
    # final evaluation) must not turn Ctrl-C into success: the run "finishes" here with
    # the signal recorded, as if its KeyboardInterrupt had been swallowed.
    import fastdist.run.coordinator as coordinator
    from fastdist.cli import main as cli

    class Finished:
        metrics = {"test_accuracy": 1.0, "combiner": "grad_avg"}

    def train_and_swallow(cfg):
        cli._received.append(signal.SIGINT)
        return Finished()

    monkeypatch.setattr(cli, "_received", [])
    monkeypatch.setattr(coordinator, "train", train_and_swallow)
    monkeypatch.setattr(sys, "argv", ["fastdist", *small_run(), f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 130
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_right_after_the_last_epoch_line_releases_everything(tmp_path, sig):
    # The window the issue found: the pool's shutdown, on a coordinator with threads.
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastdist", *small_run("workers=2", "epochs=2")]
        + [f"hydra.run.dir={tmp_path}/run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for line in proc.stdout:
            if "epoch 2 " in line:
                os.kill(proc.pid, sig)
                break
        rest = proc.stdout.read()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    assert "Traceback" not in rest and "leaked" not in rest, rest
    assert code in (0, 128 + sig), rest
