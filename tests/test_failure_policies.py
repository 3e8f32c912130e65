"""on_worker_failure: fail, continue, respawn — with faults injected into real training
runs at a chosen step (see fastdist.engine.faults)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import small_run

import fastdist
from fastdist.engine.faults import ENV_VAR
from fastdist.errors import ConfigError, WorkerError

TINY = small_run("steps=24", "workers=2")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("raise", "worker 1 failed: RuntimeError: injected fault at step 6"),
        ("exit", "worker 1 exited with code 3 before finishing"),
        ("sigkill", "worker 1 was killed by SIGKILL before finishing"),
    ],
)
@pytest.mark.parametrize("combiner", ["grad_avg", "weight_avg"])
def test_fail_stops_the_run_at_once_naming_the_worker(monkeypatch, kind, message, combiner):
    monkeypatch.setenv(ENV_VAR, f"worker=1,step=6,kind={kind}")
    started = time.monotonic()
    with pytest.raises(WorkerError, match=message):
        fastdist.train(fastdist.compose([*TINY, f"combiner={combiner}", "steps=100000"]))
    assert time.monotonic() - started < 30  # spawn + compile + a few steps, then at once


@pytest.mark.parametrize("kind", ["raise", "exit", "sigkill"])
@pytest.mark.parametrize("combiner", ["weight_avg", "ensemble", "hogwild"])
def test_continue_lets_the_others_finish(monkeypatch, kind, combiner):
    monkeypatch.setenv(ENV_VAR, f"worker=1,step=6,kind={kind}")
    result = fastdist.train(
        fastdist.compose([*TINY, f"combiner={combiner}", "on_worker_failure=continue"])
    )
    failures = result.metrics["failures"]
    assert len(failures) == 1 and "worker 1" in failures[0]["cause"]
    assert failures[0]["at_step"] == 6
    assert list(result.samples_seen) == [24 * 16, 6 * 16]  # counted as actually seen
    assert result.metrics["test_accuracy"] > 0.5


def test_continue_weights_the_average_by_samples_seen(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "worker=1,step=6,kind=sigkill")
    result = fastdist.train(
        fastdist.compose(
            [*TINY, "combiner=weight_avg", "on_worker_failure=continue", "save_states=true"]
        )
    )
    from fastdist.combiners.averaging import weighted_mean_of_rows

    expected = weighted_mean_of_rows(result.worker_params, result.samples_seen)
    plain = result.worker_params.mean(axis=0)
    assert not np.allclose(expected, plain)  # the weighting matters here
    w = np.array([24.0, 6.0]) / 30.0
    np.testing.assert_allclose(expected, w @ result.worker_params.astype(np.float64), rtol=1e-6)


def test_continue_is_refused_for_synchronous_combiners():
    with pytest.raises(ConfigError, match="use on_worker_failure=respawn"):
        fastdist.train(fastdist.compose([*TINY, "combiner=grad_avg", "on_worker_failure=continue"]))


@pytest.mark.parametrize("checkpoint", [True, False])
@pytest.mark.parametrize("combiner", ["grad_avg", "local_sgd"])
def test_respawn_restarts_from_the_checkpoint_and_ends_identical(
    monkeypatch, tmp_path, checkpoint, combiner
):
    common = [*TINY, f"combiner={combiner}"]
    clean = fastdist.train(fastdist.compose(common))
    monkeypatch.setenv(ENV_VAR, f"worker=1,step=10,kind=sigkill,once={tmp_path}/fired")
    extra = ["checkpoint.every=4", f"checkpoint.path={tmp_path}/ckpt.npz"] if checkpoint else []
    result = fastdist.train(fastdist.compose([*common, *extra, "on_worker_failure=respawn"]))
    (event,) = result.metrics["failures"]
    assert event["at_step"] >= 10
    assert event["restarted_from_step"] == (8 if checkpoint else 0)
    np.testing.assert_array_equal(result.worker_params, clean.worker_params)


def test_respawn_gives_up_after_max_respawns(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "worker=0,step=3,kind=exit")  # fails every time
    with pytest.raises(WorkerError, match="worker 0 exited with code 3"):
        fastdist.train(fastdist.compose([*TINY, "on_worker_failure=respawn", "max_respawns=2"]))
