"""A run directory from someone else executes nothing and cannot make fastdist-combine
write elsewhere or inflate more than the run needs. Each attack is one that worked
against an earlier fastdist, with a harmless payload: it would create a marker file.
Every one must end in one line, exit 2, and the marker must not exist."""

from __future__ import annotations

import os
import resource
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import saved_run_dir, small_run

from fastdist.cli import combine as combine_cli
from fastdist.run.states import STATES_FILE

TRAIN = small_run("workers=2", "steps=8", "combiner=weight_avg")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return saved_run_dir(tmp_path_factory.mktemp("run"), TRAIN)


@pytest.fixture
def run(trained, tmp_path):
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _combine(run_dir, capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        combine_cli.main([str(run_dir), *(args or ("weight_avg",))])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def _one_line_exit_2(code, err, *words):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def _add_override(run: Path, line: str) -> None:
    path = run / ".hydra" / "overrides.yaml"
    path.write_text(yaml.safe_dump([*yaml.safe_load(path.read_text()), line]))


def _yaml_outside(tmp_path: Path, name: str, node: dict) -> str:
    """A YAML file outside fastdist's configs, as a group option reaching it by ``..``."""
    folder = tmp_path / "elsewhere"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(node))
    return "../" * 12 + str(folder / name).lstrip("/")


def test_a_group_option_cannot_load_a_yaml_from_elsewhere(run, tmp_path, marker, capsys):
    evil = _yaml_outside(
        tmp_path, "evil", {"_target_": "subprocess.run", "args": ["touch", str(marker)]}
    )
    _add_override(run, f"partition={evil}")
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err, "not allowed here", "partition must be one of")
    assert not marker.exists()


def test_a_model_option_from_elsewhere_cannot_name_a_factory(run, tmp_path, marker, capsys):
    evil = _yaml_outside(
        tmp_path,
        "evil_model",
        {"_target_": "fastdist.models.jax_model.jax_model", "factory": "payload_module:make"},
    )
    _add_override(run, f"model={evil}")
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err, "model must be one of")
    assert not marker.exists()


@pytest.mark.parametrize(
    "line",
    [
        "model.factory=payload_module:make",
        "combiner._target_=payload_module.make",
        "+hydra.callbacks.x._target_=payload_module.make",
        "hydra.searchpath=[file:///tmp]",
        "~model",
        "seed=0,1",
        "model@x=mlp",
        "seed=${oc.env:HOME}",
        "dataset.path='${oc.env:HOME}'",
        "a/b=c",
        "workers=[[",
    ],
)
def test_overrides_that_could_run_code_or_resolve_are_refused(run, marker, capsys, line):
    _add_override(run, line)
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err, "not allowed here")
    assert not marker.exists()
    assert os.environ["HOME"] not in err  # an interpolation was never resolved


def test_a_jax_models_factory_is_taken_only_from_the_command_line(run, marker, capsys):
    # What a run with model=jax saves; combine refuses the saved factory...
    _add_override(run, "model=jax")
    _add_override(run, "model.factory=payload_module:make")
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err, "name it on the command line yourself")
    assert not marker.exists()


def test_a_jax_model_whose_factory_nobody_named_is_refused(run, capsys, monkeypatch):
    # ...and a JAX model that reaches the config without a factory named on the command
    # line (here through a patched option list) is refused before anything is built.
    from fastdist.cli import combine

    monkeypatch.setattr(
        combine, "_compose_untrusted", lambda o, s: _with_factory(o, "payload_module:make")
    )
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err, "name it yourself: model.factory=")


def _with_factory(overrides, factory):
    import fastdist

    cfg = fastdist.compose([*(o for o in overrides if not o.startswith("model")), "model=jax"])
    cfg.model.factory = factory  # as if a preset had set it
    return cfg


def test_the_states_hash_alone_does_not_let_an_edit_through(run, capsys):
    # Recomputing split_hash is easy; an edit that names code is refused regardless.
    _add_override(run, "partition=../../evil")
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err, "partition must be one of")


# ------------------------------------------------------------------ writing


@pytest.mark.parametrize("where", ["output", "temporary file"])
def test_no_write_through_a_planted_link(run, tmp_path, capsys, where):
    outside = tmp_path / "outside.json"
    name = "combine_metrics.json"
    if where == "temporary file":
        name = f".combine_metrics.json.{os.getpid()}.tmp"  # what the writer would open
    (run / name).symlink_to(outside)
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err, "refusing to write through it")
    assert not outside.exists()
    assert (run / name).is_symlink()  # left as found


# ------------------------------------------------------------------ inflating


def _forged_states(run: Path, rows: int, cols: int) -> None:
    """``worker_params`` of (rows, cols) float32 zeros, deflated to a thousandth."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = (rows, cols)
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with np.load(run / STATES_FILE) as data:
        others = {k: data[k] for k in data.files if k != "worker_params"}
    path = run / STATES_FILE
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in others.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(value))
            zf.writestr(f"{key}.npy", member.getvalue())
        with zf.open("worker_params.npy", "w", force_zip64=True) as fh:
            fh.write(buf.getvalue())
            chunk = b"\0" * (1 << 20)
            for _ in range(rows * cols * 4 // len(chunk)):
                fh.write(chunk)


def test_a_member_declaring_more_than_the_run_needs_is_refused_before_inflating(run, capsys):
    # 2 x 2**25 float32 = 256 MiB of zeros, deflated to 256 KiB: a member that holds
    # all it declares. The run's model has 171 parameters.
    _forged_states(run, 2, 2**25)
    assert (run / STATES_FILE).stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err, "worker_params has shape (2, 33554432), expected (2, 171)")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 32 << 10, f"peak memory grew by {grown} KiB"


@pytest.mark.parametrize("name", [".hydra/overrides.yaml", STATES_FILE])
def test_a_fifo_in_the_run_directory_is_refused_without_blocking(run, capsys, name):
    (run / name).unlink()
    os.mkfifo(run / name)  # opening it would wait for a writer forever
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err)


def test_overrides_too_large_to_be_a_runs_are_refused_unread(run, capsys):
    path = run / ".hydra" / "overrides.yaml"
    path.write_text("- seed=0\n" * 200_000)
    code, err = _combine(run, capsys)
    _one_line_exit_2(code, err, "over the limit of 65536")
