"""Help that is about fastdist: the help text, usage errors, extras hints, pipes."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from fastdist import __version__
from fastdist.run.config_schema import FastdistConfig

ROOT = Path(__file__).resolve().parents[1]


def fastdist(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastdist", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def test_help_describes_every_group_and_key():
    out = fastdist("--help")
    assert out.returncode == 0
    text = out.stdout
    assert text.startswith("fastdist: data-parallel") and "Hydra" not in text.split("\n")[0]
    groups = [p.name for p in files("fastdist.conf").iterdir() if p.is_dir() and p.name != "hydra"]
    for group in [g for g in groups if not g.startswith("_")]:
        assert f"\n{group} " in text, group
        for option in files("fastdist.conf").joinpath(group).iterdir():
            if option.name.endswith(".yaml"):
                assert option.name[:-5] in text, (group, option.name)
    for field in dataclasses.fields(FastdistConfig):
        if field.name not in ("combiner", "dataset", "model", "optimizer", "logger"):
            assert f"\n{field.name}" in text or f"{field.name}." in text, field.name


def test_version_is_fastdists():
    out = fastdist("--version")
    assert out.stdout.strip() == f"fastdist {__version__}"


def test_multirun_with_cfg_is_a_one_line_usage_error():
    out = fastdist("-m", "seed=0,1", "--cfg", "job")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "unexpected" not in out.stderr
    assert out.stderr.startswith("fastdist: error: Only one of --run, --multirun, --cfg")


@pytest.mark.parametrize("launcher", ["joblib", "slurm"])
def test_a_launcher_without_its_extra_names_it(tmp_path, launcher):
    # A regular package named hydra_plugins hides the installed plugins' namespace;
    # it holds only fastdist's own sweeper (what an install without extras has).
    shutil.copytree(ROOT / "hydra_plugins", tmp_path / "hydra_plugins")
    (tmp_path / "hydra_plugins" / "__init__.py").write_text("")
    out = fastdist("-m", f"hydra/launcher={launcher}", env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 2
    assert out.stderr == (
        f"fastdist: error: hydra/launcher={launcher} needs the launcher plugins: "
        "pip install 'fastdist[sweep]'\n"
    )


def test_a_closed_pipe_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before fastdist writes (`fastdist ... | head`)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "fastdist", "-sc", "install=bash"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert out.stderr == "" and out.returncode == 141


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("fastdist-summarize", "(default: grad_avg)"),
        ("fastdist-combine", "combiner names"),
        ("fastdist-clean", "--dry-run"),
    ],
)
def test_subcommand_help_is_plain_text_with_defaults(command, expected):
    script = os.path.join(os.path.dirname(sys.executable), command)
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert expected in out.stdout and "``" not in out.stdout and ":func:" not in out.stdout
