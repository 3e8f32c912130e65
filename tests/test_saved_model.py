"""Saved models: save_model=true / RunResult.save, fastdist.load, init_from. A saved
model predicts exactly what the run scored; a run starts exactly from it; a file from
someone else executes nothing and is refused in one line."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import edited_npz, small_run
from test_bad_input_fuzz import run_cli

import fastdist
from fastdist.errors import ConfigError
from fastdist.run.saved_model import MODEL_FILE, _digest

RUN = small_run("workers=2", "steps=12")


def _train(*extra):
    return fastdist.train(fastdist.compose([*RUN, *extra]))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained run and the directory its combined model was saved to."""
    result = _train()
    directory = tmp_path_factory.mktemp("saved")
    result.save(directory)
    return result, directory


def _test_split():
    data = fastdist.load_dataset(fastdist.compose(RUN).dataset)
    return data.x_test, data.y_test


def test_a_loaded_model_predicts_exactly_what_the_run_scored(saved):
    result, directory = saved
    model = fastdist.load(directory)
    x, y = _test_split()
    scores = model.evaluate(x, y)
    assert scores["accuracy"] == result.metrics["test_accuracy"]  # bitwise
    assert scores["loss"] == result.metrics["test_loss"]
    np.testing.assert_array_equal(model.predict(x), result.predict(x))


def test_an_ensemble_saves_its_members(tmp_path):
    result = _train("combiner=ensemble")
    model = fastdist.load(result.save(tmp_path / "ens.npz"))
    assert len(model.combined.members) == 2
    x, y = _test_split()
    assert model.evaluate(x, y)["accuracy"] == result.metrics["test_accuracy"]
    with pytest.raises(ConfigError, match="ensemble of 2 members"):
        _train(f"init_from={tmp_path / 'ens.npz'}")


def test_save_model_writes_model_npz_from_the_command_line(tmp_path):
    code, err = run_cli([*RUN, "save_model=true", f"hydra.run.dir={tmp_path}/run"])
    assert code in (0, None), err
    assert (tmp_path / "run" / MODEL_FILE).is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    x, y = _test_split()
    assert fastdist.load(tmp_path / "run").evaluate(x, y)["accuracy"] == metrics["test_accuracy"]


def test_init_from_starts_every_worker_from_the_saved_model(saved):
    result, directory = saved
    started = _train(f"init_from={directory}", "steps=4")
    first = started.history[0]  # the starting point, scored before any step
    assert first["step"] == 0
    assert (first["test_accuracy"], first["test_loss"]) == (
        result.metrics["test_accuracy"],
        result.metrics["test_loss"],
    )


def test_init_from_another_architecture_is_one_line_before_start_up(saved, monkeypatch):
    from fastdist.engine.pool import WorkerPool

    monkeypatch.setattr(WorkerPool, "start", lambda self: 1 / 0)
    with pytest.raises(
        ConfigError, match=r"another architecture: tensor 0 is \('w0', \(10, 12\)\)"
    ):
        _train(f"init_from={saved[1]}", "model.hidden=[7]")
    with pytest.raises(ConfigError, match="no saved model there"):
        _train(f"init_from={saved[1]}/nowhere")


# ------------------------------------------------------------------ hostile files


def _rewrite(src: Path, dst: Path, rehash: bool = True, **changes) -> Path:
    """A copy of the saved model with ``changes`` (None drops a member), its content
    hash recomputed as anyone who can write the file can."""
    arrays = edited_npz(src / MODEL_FILE, **changes)
    if rehash and "content_hash" in arrays:
        texts = {k: str(arrays[k]) for k in ("format", "model_config", "layout", "average")}
        arrays["content_hash"] = np.str_(
            _digest(
                arrays["members"],
                arrays["weights"],
                texts,
                arrays["input_shape"],
                int(arrays["n_classes"]),
            )  # fmt: skip
        )
    np.savez(dst, **arrays)
    return dst


def _config(directory: Path) -> dict:
    with np.load(directory / MODEL_FILE) as data:
        return json.loads(str(data["model_config"]))


def test_a_saved_model_cannot_name_code(saved, tmp_path, marker):
    config = {**_config(saved[1]), "_target_": "payload_module.make"}
    path = _rewrite(saved[1], tmp_path / "evil.npz", model_config=np.str_(json.dumps(config)))
    with pytest.raises(ConfigError, match="not one of fastdist's own models"):
        fastdist.load(path)
    jax = {"_target_": "fastdist.models.jax_model.jax_model", "factory": "payload_module:make"}
    path = _rewrite(saved[1], tmp_path / "jax.npz", model_config=np.str_(json.dumps(jax)))
    with pytest.raises(ConfigError, match="name it yourself"):
        fastdist.load(path)
    assert not marker.exists()


HOSTILE = {
    "edited, old hash": ({"members": np.zeros((1, 171), np.float32)}, False, "content hash"),
    "NaN": ({"members": np.full((1, 171), np.nan, np.float32)}, True, "not finite"),
    "rows of another size": ({"members": np.zeros((1, 7), np.float32)}, True, "shape"),
    "member count": ({"n_members": np.int64(10**9)}, True, "n_members"),
    "missing": ({"layout": None}, False, "missing layout"),
    "config not JSON": ({"model_config": np.str_("{{")}, True, "not valid JSON"),
    "object array": ({"weights": np.array([object()], dtype=object)}, False, "object array"),
    "format": ({"format": np.str_("other")}, True, "not a saved model of this fastdist"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_damaged_or_forged_model_file_is_one_line(saved, tmp_path, case):
    changes, rehash, message = HOSTILE[case]
    path = _rewrite(saved[1], tmp_path / "bad.npz", rehash=rehash, **changes)
    with pytest.raises(ConfigError, match=message):
        fastdist.load(path)


def test_a_huge_text_field_is_refused_before_it_is_read(saved, tmp_path):
    # A 17 MB string (deflated to a few kB) where the layout, a few hundred bytes, goes.
    path = _rewrite(saved[1], tmp_path / "big.npz", rehash=False, layout=None)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<U4200000", "fortran_order": False, "shape": ()}
    )
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("layout.npy", header.getvalue() + b"\0" * (4 * 4200000))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ConfigError, match="over 16777216"):
        fastdist.load(path)
