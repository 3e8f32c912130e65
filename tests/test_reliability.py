"""Checkpoint/resume, determinism, divergence: runs that stop must continue exactly."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_run

import fastdist
from fastdist.errors import ConfigError, DivergenceError

TINY = small_run()


@pytest.mark.parametrize("combiner", ["grad_avg", "local_sgd", "weight_avg", "ensemble"])
def test_same_seed_and_workers_give_bitwise_identical_results(combiner):
    overrides = [*TINY, "workers=2", f"combiner={combiner}", "steps=20"]
    a = fastdist.train(fastdist.compose(overrides))
    b = fastdist.train(fastdist.compose(overrides))
    np.testing.assert_array_equal(a.worker_params, b.worker_params)
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]


@pytest.mark.parametrize(
    ("combiner", "extra"),
    [
        ("grad_avg", []),
        ("local_sgd", ["combiner.period=3", "combiner.average_momentum=true"]),
        # AdamW's two moments and its bias correction (a function of the step) carry over;
        # the schedule's horizon is pinned so the 20-step run is on the 37-step curve.
        ("grad_avg", ["optimizer=adamw", "schedule=warmup_cosine", "schedule.steps=37"]),
        (
            "local_sgd",
            ["combiner.period=3", "combiner.average_state=true", "optimizer=adamw"],
        ),
    ],
)
def test_a_resumed_run_ends_bitwise_identical_to_an_uninterrupted_one(tmp_path, combiner, extra):
    common = [*TINY, "workers=2", f"combiner={combiner}", *extra]
    ckpt = tmp_path / "ckpt.npz"
    whole = fastdist.train(fastdist.compose([*common, "steps=37"]))
    # Stop at step 20 (mid-epoch: 16 steps per epoch), then continue to 37.
    first = fastdist.train(
        fastdist.compose([*common, "steps=20", "checkpoint.every=10", f"checkpoint.path={ckpt}"])
    )
    assert first.metrics["checkpoint"] == str(ckpt)
    resumed = fastdist.train(fastdist.compose([*common, "steps=37", f"resume={ckpt}"]))
    assert resumed.metrics["resumed_from_step"] == 20
    assert resumed.metrics["samples_seen"] == 2 * 17 * 16
    np.testing.assert_array_equal(resumed.worker_params, whole.worker_params)


def test_resuming_with_another_configuration_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    fastdist.train(
        fastdist.compose(
            [*TINY, "workers=2", "steps=10", "checkpoint.every=5", f"checkpoint.path={ckpt}"]
        )
    )
    with pytest.raises(ConfigError, match="different configuration"):
        fastdist.train(
            fastdist.compose([*TINY, "workers=2", "steps=20", "optimizer.lr=0.5", f"resume={ckpt}"])
        )
    with pytest.raises(ConfigError, match="no such checkpoint"):
        fastdist.train(fastdist.compose([*TINY, "steps=20", f"resume={tmp_path}/nope.npz"]))
    with pytest.raises(ConfigError, match="ask for more steps"):
        fastdist.train(fastdist.compose([*TINY, "workers=2", "steps=10", f"resume={ckpt}"]))


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(DivergenceError, match="loss became|not finite"):
        fastdist.train(
            fastdist.compose(
                [
                    *TINY,
                    "workers=2",
                    "optimizer.lr=1e4",
                    "steps=200",
                    "checkpoint.every=1",
                    f"checkpoint.path={ckpt}",
                ]
            )
        )
    with np.load(ckpt) as state:
        assert np.isfinite(state["params"]).all()
        assert 1 <= int(state["step"]) < 200
    assert not list(tmp_path.glob("*.tmp.npz"))  # atomic writes leave no debris
