"""fastdist's sweeper: Hydra's basic sweeper that composes each job's config once (the
up-front validation's config is the one the job runs with), with Hydra's semantics
otherwise: the same configs, and a bad override still fails before any job runs."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from hydra_plugins.fastdist_hydra.compose_once import _ComposedOnce
from tests.conftest import small_run


class _CountingLoader:
    def __init__(self) -> None:
        self.calls = 0

    def load_sweep_config(self, master_config, overrides):
        self.calls += 1
        return {"overrides": list(overrides), "n": self.calls}

    def some_other_method(self) -> str:
        return "delegated"


def test_a_config_composed_for_validation_is_handed_to_its_job_once():
    inner, master = _CountingLoader(), object()
    loader = _ComposedOnce(inner)
    loader.compose_ahead(master, ["seed=0"])
    loader.compose_ahead(master, ["seed=1"])
    assert inner.calls == 2
    first = loader.load_sweep_config(master, ["seed=0"])
    assert first == {"overrides": ["seed=0"], "n": 1} and inner.calls == 2
    assert loader.load_sweep_config(master, ["seed=0"])["n"] == 3  # asked again: composed
    assert loader.load_sweep_config(object(), ["seed=1"])["n"] == 4  # another master config
    assert loader.some_other_method() == "delegated"


def test_a_loader_sent_to_other_processes_is_hydras_own():
    loader = _ComposedOnce(_CountingLoader())
    loader.compose_ahead(object(), ["seed=0"])
    assert type(pickle.loads(pickle.dumps(loader))) is _CountingLoader


def _multirun(tmp_path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fastdist",
            "-m",
            *small_run("steps=3", "seed=0,1"),
            f"hydra.sweep.dir={tmp_path / name}",
            *extra,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_jobs_get_the_configs_and_results_of_hydras_basic_sweeper(tmp_path):
    ours = _multirun(tmp_path, "ours")
    hydras = _multirun(tmp_path, "basic", "hydra/sweeper=basic")
    assert ours.returncode == 0 and hydras.returncode == 0, ours.stderr + hydras.stderr
    assert "ComposeOnceSweeper" in (tmp_path / "ours" / "multirun.yaml").read_text()
    for job in ("0", "1"):
        for name in ("config.yaml", "overrides.yaml"):
            mine = (tmp_path / "ours" / job / ".hydra" / name).read_text()
            assert mine == (tmp_path / "basic" / job / ".hydra" / name).read_text()
        a, b = (
            json.loads((tmp_path / d / job / "metrics.json").read_text()) for d in ("ours", "basic")
        )
        assert (a["test_accuracy"], a["test_loss"]) == (b["test_accuracy"], b["test_loss"])


def test_a_bad_override_in_a_late_job_fails_before_the_first_job_runs(tmp_path):
    proc = _multirun(tmp_path, "bad", "combiner.period=1,not_a_number", "combiner=local_sgd")
    assert proc.returncode != 0
    assert "not_a_number" in proc.stdout + proc.stderr
    assert not list((tmp_path / "bad").rglob("metrics.json"))


def _loader_and_master(*task: str):
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    GlobalHydra.instance().clear()
    initialize_config_module("fastdist.conf", version_base="1.3").__enter__()
    loader = GlobalHydra.instance().config_loader()
    return loader, loader.load_configuration("config", list(task), RunMode.MULTIRUN)


_VALUES_ONLY = [  # one composition, the rest made from it
    ["seed=0", "optimizer.lr=0.1"],
    ["seed=1", "optimizer.lr=0.1"],
    ["seed=0", "optimizer.lr=0.05"],
    ["seed=1", "optimizer.lr=0.05"],
]
_GROUPS_AND_VALUES = [  # one composition per combiner, one for the longer override list
    ["combiner=grad_avg", "seed=0"],
    ["combiner=grad_avg", "seed=1"],
    ["combiner=local_sgd", "seed=0"],
    ["combiner=local_sgd", "seed=1"],
    ["combiner=local_sgd", "combiner.period=3", "seed=0"],
]
_PRESET_LISTS_AND_ADD = [  # an experiment preset, list values; a + override: Hydra's
    ["experiment=w2", "model.hidden=[8,8]", "steps=3"],
    ["experiment=w2", "model.hidden=[16]", "steps=4"],
    ["+extra_key=1", "seed=2"],
]


@pytest.mark.parametrize(
    ("jobs", "composed"),
    [(_VALUES_ONLY, 1), (_GROUPS_AND_VALUES, 3), (_PRESET_LISTS_AND_ADD, 2)],
)
def test_configs_made_from_a_composed_job_equal_hydras(jobs, composed, monkeypatch):
    from hydra.core.global_hydra import GlobalHydra

    loader, master = _loader_and_master("dataset=digits")
    calls = []
    hydra_compose = loader.load_sweep_config

    def counted(*args):
        calls.append(args)
        return hydra_compose(*args)

    try:
        ours = _ComposedOnce(loader)
        monkeypatch.setattr(loader, "load_sweep_config", counted)
        for job in jobs:
            ours.compose_ahead(master, job)
        assert len(calls) == composed  # Hydra composed these; the others were made
        monkeypatch.undo()
        for job in jobs:
            hydras = loader.load_sweep_config(master, list(job))
            mine = ours.load_sweep_config(master, list(job))
            assert OmegaConf.to_yaml(mine) == OmegaConf.to_yaml(hydras), job
            assert OmegaConf.is_struct(mine) and not OmegaConf.is_readonly(mine.hydra)
    finally:
        GlobalHydra.instance().clear()


def test_a_bad_value_in_a_job_made_from_another_is_hydras_error():
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    loader, master = _loader_and_master()
    try:
        ours = _ComposedOnce(loader)
        ours.compose_ahead(master, ["combiner=local_sgd", "combiner.period=2"])
        with pytest.raises(ConfigCompositionException, match="combiner.period=abc"):
            ours.compose_ahead(master, ["combiner=local_sgd", "combiner.period=abc"])
        with pytest.raises(ConfigCompositionException, match="perod"):
            ours.compose_ahead(master, ["combiner=local_sgd", "combiner.perod=2"])
    finally:
        GlobalHydra.instance().clear()
