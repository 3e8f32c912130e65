"""Per-worker hyperparameters (worker_overrides) and partition=replicate: the soup
ingredient setting. An override changes exactly the worker it names; ragged step counts
work where nothing syncs and are refused in one line where something would wait; the
workers' common start reaches the combiner and the saved states."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import saved_run_dir, small_run

import fastdist
from fastdist.errors import ConfigError
from fastdist.run.states import load_states

RUN = small_run("workers=2", "steps=10", "combiner=soup_uniform")


def _train(*extra):
    return fastdist.train(fastdist.compose([*RUN, *extra]))


def test_an_override_changes_only_the_worker_it_names():
    mixed = _train("worker_overrides.optimizer.lr=[0.05,0.2]")
    low = _train("optimizer.lr=0.05")
    high = _train("optimizer.lr=0.2")
    np.testing.assert_array_equal(mixed.worker_params[0], low.worker_params[0])
    np.testing.assert_array_equal(mixed.worker_params[1], high.worker_params[1])
    assert mixed.metrics["worker_lr"] == [0.05, 0.2]
    assert [o["lr"] for o in mixed.metrics["worker_optimizer"]] == [0.05, 0.2]


def test_data_seed_and_schedule_per_worker():
    result = _train(
        "worker_overrides.data_seed=[3,3]",
        "worker_overrides.schedule=[cosine,constant]",
        "worker_overrides.optimizer.weight_decay=[0.0,0.01]",
    )
    assert result.metrics["worker_schedule"] == ["cosine", "constant"]
    assert result.metrics["worker_data_seed"] == [3, 3]
    assert result.metrics["worker_optimizer"][1]["weight_decay"] == 0.01
    plain = _train()
    assert not np.array_equal(result.worker_params[0], plain.worker_params[0])


def test_ragged_steps_end_each_worker_at_its_own_step_and_score_every_evaluation():
    result = _train("worker_overrides.steps=[4,10]", "eval.every=5")
    assert result.metrics["worker_steps"] == [4, 10]
    assert result.metrics["steps"] == 10
    assert result.samples_seen.tolist() == [4 * 16, 10 * 16]
    scored = [r["step"] for r in result.history if r.get("test_accuracy") is not None]
    assert scored == [0, 5, 10]  # past worker 0's last step, its final row is used
    steps = [r["step"] for r in result.history]
    assert steps == sorted(set(steps))  # rows in order: none waits for a finished worker
    assert all(r["lr"] is None for r in result.history)  # the workers' rates differ
    short = _train("steps=4")
    np.testing.assert_array_equal(result.worker_params[0], short.worker_params[0])
    # The run's last evaluation is the combined model that metrics.json scores.
    assert result.history[-1]["test_accuracy"] == result.metrics["test_accuracy"]


def test_epochs_per_worker_count_the_run_s_epochs():
    result = _train("steps=null", "epochs=2", "worker_overrides.epochs=[1,2]")
    per_epoch = 512 // 2 // 16
    assert result.metrics["worker_steps"] == [per_epoch, 2 * per_epoch]
    # With uneven shards too: an epoch is the run's, the same on every node.
    skewed = ["steps=null", "epochs=2", "partition=dirichlet", "partition.alpha=0.5"]
    run = _train(*skewed, "combiner=weight_avg")
    same = _train(*skewed, "combiner=weight_avg", "worker_overrides.epochs=[2,2]")
    assert same.metrics["worker_steps"] == [run.metrics["steps"]] * 2


def test_one_data_seed_gives_two_workers_one_data_order():
    result = _train("partition=replicate", "worker_overrides.data_seed=[3,3]")
    np.testing.assert_array_equal(result.worker_params[0], result.worker_params[1])
    assert result.metrics["worker_data_seed"] == [3, 3]


def test_different_lengths_are_a_choice_not_a_failure_in_the_merge():
    result = _train("combiner=weight_avg", "worker_overrides.steps=[0,10]")
    expected = (result.worker_params.astype(np.float64).sum(axis=0) / 2).astype(np.float32)
    np.testing.assert_allclose(result.combined.members[0], expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(result.worker_params[0], result.base)
    assert result.history[-1]["test_accuracy"] == result.metrics["test_accuracy"]


def test_zero_steps_from_a_saved_model_returns_it_exactly(tmp_path):
    base = _train("combiner=weight_avg")
    base.save(tmp_path)
    again = _train(f"init_from={tmp_path}", "worker_overrides.steps=[0,0]")
    for row in again.worker_params:
        np.testing.assert_array_equal(row, base.combined.members[0])
    assert again.metrics["test_accuracy"] == base.metrics["test_accuracy"]
    np.testing.assert_array_equal(again.base, base.combined.members[0])


def test_replicate_gives_every_worker_the_whole_training_set():
    result = _train("partition=replicate", "steps=null", "epochs=1")
    assert result.metrics["shard_sizes"] == [512, 512]
    assert result.metrics["steps"] == 512 // 16  # one pass over the whole set each
    # Each worker visits the rows in its own order, so the two fine-tunes differ.
    assert not np.array_equal(result.worker_params[0], result.worker_params[1])


def test_the_common_start_reaches_the_saved_states(tmp_path):
    run = saved_run_dir(tmp_path, [*RUN, "worker_overrides.optimizer.lr=[0.05,0.2]"])
    start = _train("worker_overrides.steps=[0,0]")
    states = load_states(run, 2, start.worker_params.shape[1])
    np.testing.assert_array_equal(states["base"], start.worker_params[0])


def test_independent_workers_have_no_common_start():
    result = _train("combiner=weight_avg", "combiner.init=independent")
    assert result.base is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["worker_overrides.optimizer.lr=[0.1]"], "has 1 values for 2 workers"),
        (
            ["combiner=grad_avg", "worker_overrides.optimizer.lr=[0.1,0.2]"],
            "grad_avg trains one shared vector",
        ),
        (
            ["combiner=local_sgd", "worker_overrides.steps=[4,8]"],
            "local_sgd meets during training",
        ),
        (["worker_overrides.steps=[4,8]", "checkpoint.every=2"], "checkpoint.every needs"),
        (["worker_overrides.steps=[4,8]", "worker_overrides.epochs=[1,2]"], "not both"),
        (["worker_overrides.steps=[-1,8]"], "must be >= 0"),
        (["worker_overrides.data_seed=[-1,2]"], r"data_seed must be in \[0, 2\*\*32\)"),
        (["combiner=local_sgd", "worker_overrides.epochs=[1,2]"], "local_sgd meets"),
        (["worker_overrides.optimizer.momentum=[0.1,0.2]", "optimizer=adamw"], "no option"),
        (["worker_overrides.schedule=[cosine,nope]"], "unknown schedule 'nope'"),
        (["worker_overrides.optimizer.lr=[0.1,-1.0]"], "worker 1: optimizer.lr must be > 0"),
    ],
)
def test_what_cannot_work_is_one_line_before_start_up(extra, message, monkeypatch):
    from fastdist.engine.pool import WorkerPool

    monkeypatch.setattr(WorkerPool, "start", lambda self: 1 / 0)
    with pytest.raises(ConfigError, match=message) as info:
        _train(*extra)
    assert "\n" not in str(info.value)


def test_equal_step_overrides_still_sync():
    result = _train("combiner=local_sgd", "worker_overrides.steps=[6,6]")
    assert result.metrics["steps"] == 6


def test_best_member_is_the_worker_with_the_best_validation_accuracy():
    from fastdist.combiners import best_member
    from fastdist.combiners.base import CombinedModel, FinalizeInputs
    from fastdist.combiners.evaluate import evaluate

    result = _train(
        "validation_fraction=0.2", "worker_overrides.optimizer.lr=[0.001,0.2]", "steps=20"
    )
    data = fastdist.load_dataset(fastdist.compose(RUN).dataset)
    x, y = data.x_train[:100], data.y_train[:100]
    inputs = FinalizeInputs(result.worker_params, result.model, result.samples_seen, (), (x, y))
    combined = best_member().finalize(inputs)
    scores = [
        evaluate(CombinedModel((r,)), result.model, x, y)["accuracy"] for r in result.worker_params
    ]
    assert combined.info["best"] == int(np.argmax(scores))
    np.testing.assert_array_equal(combined.members[0], result.worker_params[combined.info["best"]])
