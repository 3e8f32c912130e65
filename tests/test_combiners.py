"""The combiner suite: every registered combiner end to end, and the equivalences and
guarantees the research relies on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import fastdist
from fastdist.combiners import REGISTRY, FinalizeInputs, soup_greedy
from fastdist.combiners.soups import greedy_soup_members
from fastdist.models.mlp import MLP

TINY = [
    "dataset=synthetic",
    "dataset.n_train=480",
    "dataset.n_test=200",
    "dataset.n_features=10",
    "dataset.n_classes=3",
    "model.hidden=[12]",
    "batch_size=16",
    "epochs=3",
]


def _config_names() -> set[str]:
    from importlib.resources import files

    return {
        p.name[:-5]
        for p in (files("fastdist") / "conf" / "combiner").iterdir()
        if p.name.endswith(".yaml")
    }


def test_every_combiner_has_a_config_and_every_config_a_combiner():
    # aligned_avg/fisher_avg live in their own modules; the registry is the source of truth
    assert set(REGISTRY) <= _config_names()


def test_every_combiner_runs_through_the_cli(tmp_path):
    names = ",".join(sorted(_config_names()))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastdist",
            "-m",
            *TINY,
            "workers=2",
            f"combiner={names}",
            f"hydra.sweep.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {}
    for path in tmp_path.glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        runs[metrics["combiner"]] = metrics
    assert set(runs) == _config_names()
    for name, metrics in runs.items():
        assert metrics["test_accuracy"] > 0.5, (name, metrics["test_accuracy"])  # chance: 1/3


@pytest.mark.parametrize("workers", [2, 3])
def test_local_sgd_with_period_1_is_grad_avg_for_plain_sgd(workers):
    common = [*TINY, f"workers={workers}", "optimizer.momentum=0.0", "steps=20"]
    a = fastdist.train(fastdist.compose([*common, "combiner=grad_avg"])).worker_params[0]
    rows = fastdist.train(
        fastdist.compose([*common, "combiner=local_sgd", "combiner.period=1"])
    ).worker_params
    for row in rows:  # every worker holds the average after each step
        np.testing.assert_allclose(row, a, rtol=1e-5, atol=1e-6)


def test_local_sgd_without_period_is_one_shot_averaging():
    common = [*TINY, "workers=2"]
    a = fastdist.train(fastdist.compose([*common, "combiner=weight_avg"]))
    b = fastdist.train(fastdist.compose([*common, "combiner=local_sgd", "combiner.period=null"]))
    np.testing.assert_array_equal(a.worker_params, b.worker_params)
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]


def test_local_sgd_rows_agree_after_an_averaging_step():
    rows = fastdist.train(
        fastdist.compose([*TINY, "workers=3", "combiner=local_sgd", "combiner.period=4", "steps=8"])
    ).worker_params
    np.testing.assert_array_equal(rows[0], rows[1])
    np.testing.assert_array_equal(rows[0], rows[2])


def test_ensemble_reports_members_and_is_no_worse_than_the_mean_member_in_loss():
    m = fastdist.train(fastdist.compose([*TINY, "workers=3", "combiner=ensemble"])).metrics
    assert m["members"] == 3 and len(m["member_test_accuracy"]) == 3
    assert m["ensemble_gain_over_best_member"] == pytest.approx(
        m["test_accuracy"] - max(m["member_test_accuracy"])
    )
    # The NLL of averaged probabilities is at most the members' mean NLL (Jensen), so an
    # ensemble's test loss can never exceed that of its members on average.
    member_losses = m["interpolation"]["test_loss"][0], m["interpolation"]["test_loss"][-1]
    assert m["test_loss"] <= max(member_losses) + 1e-12


def test_diagnostics_describe_the_path_between_two_workers():
    m = fastdist.train(fastdist.compose([*TINY, "workers=2", "combiner=weight_avg"])).metrics
    path = m["interpolation"]
    assert len(path["alpha"]) == len(path["test_accuracy"]) == 11
    assert path["test_accuracy"][0] == pytest.approx(m["member_test_accuracy"][0])
    assert path["test_accuracy"][-1] == pytest.approx(m["member_test_accuracy"][1])
    assert m["test_accuracy"] == pytest.approx(m["weight_avg_test_accuracy"])
    assert len(m["worker_divergence"]) == 2 and min(m["worker_divergence"]) > 0


def test_hogwild_trains_and_says_it_is_not_deterministic():
    m = fastdist.train(fastdist.compose([*TINY, "workers=2", "combiner=hogwild"])).metrics
    assert m["deterministic"] is False
    assert m["test_accuracy"] > 0.6


def _soup_inputs(rows, validation):
    layout = MLP((4, 6, 3))
    return FinalizeInputs(np.stack(rows), layout, np.ones(len(rows)), (), validation)


def test_greedy_soup_keeps_a_model_only_if_validation_accuracy_does_not_drop():
    layout = MLP((4, 6, 3))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    good = layout.init(1)
    from fastdist.models.kernels.reference_mlp import forward_logits

    y = forward_logits(layout, good, x).argmax(axis=1).astype(np.int32)  # good is perfect
    garbage = (100 * rng.standard_normal(layout.size)).astype(np.float32)
    inputs = _soup_inputs([garbage, good, good.copy()], (x, y))
    assert greedy_soup_members(inputs) == [1, 2]
    model = soup_greedy().finalize(inputs)
    np.testing.assert_allclose(model.members[0], good, rtol=1e-6)
    assert model.info == {"soup": [1, 2]}


def test_greedy_soup_only_ever_sees_the_validation_split(monkeypatch):
    """The finalize inputs carry no test data; and every evaluation it makes is on the
    validation arrays (checked by identity)."""
    layout = MLP((4, 6, 3))
    rng = np.random.default_rng(1)
    x_val = rng.standard_normal((50, 4)).astype(np.float32)
    y_val = rng.integers(0, 3, 50).astype(np.int32)
    seen = []
    ev = sys.modules["fastdist.combiners.soups"]  # where soup_greedy looks evaluate up
    real = ev.evaluate

    def spy(model, lay, x, y):
        seen.append((x is x_val, y is y_val))
        return real(model, lay, x, y)

    monkeypatch.setattr(ev, "evaluate", spy)
    rows = [layout.init(s) for s in range(3)]
    soup_greedy().finalize(_soup_inputs(rows, (x_val, y_val)))
    assert seen and all(a and b for a, b in seen)


def test_train_once_combine_many_matches_training_with_that_combiner(tmp_path):
    run = tmp_path / "run"
    common = [*TINY, "workers=3", "validation_fraction=0.1"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastdist",
            *common,
            "combiner=weight_avg",
            "save_states=true",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    from fastdist.cli.combine import combine_saved

    results = combine_saved(run, ["weight_avg", "ensemble", "soup_greedy"])
    trained = json.loads((run / "metrics.json").read_text())
    assert results["weight_avg"]["test_accuracy"] == trained["test_accuracy"]
    assert results["ensemble"]["test_accuracy"] == trained["ensemble_test_accuracy"]
    assert set(results["soup_greedy"]["combiner_soup"]) <= {0, 1, 2}


def test_unknown_option_value_is_one_line():
    from fastdist.errors import ConfigError

    with pytest.raises(ConfigError, match="combiner.period must be a positive integer"):
        fastdist.train(fastdist.compose([*TINY, "combiner=local_sgd", "combiner.period=0"]))


@pytest.mark.parametrize(
    "override",
    [
        "combiner._target_=os.system",
        "model.factory=evil:make",
        "hydra.searchpath=[file:///tmp]",
        "+callbacks.x=1",
        "~seed",
    ],
)
def test_a_run_directory_from_elsewhere_executes_nothing(tmp_path, override):
    """fastdist-combine composes the run again from its saved overrides: an edited
    overrides.yaml must not make fastdist import or call anything of its choosing."""
    from fastdist.cli.combine import main as combine_main
    from fastdist.run.states import save_states

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- workers=2\n- '{override}'\n")
    save_states(run, np.zeros((2, 5), np.float32), np.array([1, 1]), 0.0, "none")
    with pytest.raises(SystemExit) as exit_info:
        combine_main([str(run), "weight_avg"])
    assert exit_info.value.code == 2


def test_only_fastdists_own_factories_are_built_from_a_run_directory():
    from fastdist.errors import ConfigError
    from fastdist.run.records import build_combiner

    node = {"_target_": "tests.toy_records.coordinate_median"}
    with pytest.raises(ConfigError, match="not one of fastdist's own combiners"):
        build_combiner(node, trusted=False)
    assert build_combiner({"_target_": "fastdist.combiners.averaging.weight_avg"}, trusted=False)
