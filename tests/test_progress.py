"""What a person watching a run sees: a live bar on a terminal, plain lines on a pipe,
whole lines from parallel multirun jobs, and the verbose/quiet settings."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from conftest import small_run

from fastdist.run.progress import LineDisplay


def _on_a_terminal(args: list[str], cwd) -> tuple[int, str]:
    """Run ``python -m fastdist args`` with stdout and stderr on a pseudo-terminal."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastdist", *args],
        cwd=cwd,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return proc.wait(timeout=120), out.decode(errors="replace")


def _on_a_pipe(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastdist", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_terminal_gets_a_live_bar(tmp_path):
    code, out = _on_a_terminal(small_run("epochs=3", f"hydra.run.dir={tmp_path}/run"), tmp_path)
    assert code == 0, out[-2000:]
    assert "starting workers" in out
    # tqdm redraws in place: steps done/total, rate and ETA, then loss and samples/s
    bars = re.findall(r"\rtraining:\s+\d+%\|[^\r]*\| (\d+)/(\d+) \[[^\]]*\]", out)
    assert bars and bars[-1][0] == bars[-1][1]
    assert "loss=" in out and "samples_s=" in out
    assert "epoch 3" in out  # log lines still appear, above the bar


def test_a_pipe_gets_plain_periodic_lines(tmp_path):
    proc = _on_a_pipe(small_run("epochs=2", f"hydra.run.dir={tmp_path}/run"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "\r" not in out
    assert "starting workers" in out and "workers ready after" in out
    lines = re.findall(r"step (\d+)/(\d+) \(\d+%\)  loss [\d.]+  samples/s \d+  elapsed", out)
    assert 2 <= len(lines) <= 11 and lines[-1][0] == lines[-1][1]
    assert "eta " in out


def test_quiet_and_verbose(tmp_path):
    quiet = _on_a_pipe(small_run("quiet=true", f"hydra.run.dir={tmp_path}/q"), tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "[INFO]" not in quiet.stdout + quiet.stderr
    assert (tmp_path / "q" / "metrics.json").is_file()
    loud = _on_a_pipe(
        small_run("verbose=true", "progress=off", f"hydra.run.dir={tmp_path}/v"), tmp_path
    )
    assert loud.returncode == 0, loud.stderr
    assert re.search(r"step \d+  epoch [\d.]+  wall_time", loud.stdout)
    assert "starting workers" not in loud.stdout  # progress=off


def test_parallel_multirun_jobs_print_whole_prefixed_lines(tmp_path):
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *small_run("workers=1", "epochs=4", "seed=0,1"),
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    proc = _on_a_pipe(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    progress = [line for line in proc.stdout.splitlines() if "step " in line and "/" in line]
    jobs = {re.search(r"\[job (\d+)\] step", line).group(1) for line in progress}
    assert jobs == {"0", "1"}
    pattern = re.compile(r".*\[job \d\] step \d+/\d+ \(\d+%\)  loss [\d.]+  samples/s \d+  .*")
    assert all(pattern.fullmatch(line) for line in progress)


def test_line_display_reports_each_tenth_once(caplog):
    display = LineDisplay(total_steps=100)
    with caplog.at_level("INFO", logger="fastdist"):
        display.start(0)
        display.ready()
        for step in range(5, 101, 5):
            display({"step": step, "train_loss": 1.0, "samples_per_second": 10.0})
    steps = [int(m) for m in re.findall(r"step (\d+)/100", caplog.text)]
    assert steps == list(range(10, 101, 10))
