"""Local-update combiners (FedAvg family, FedProx, SCAFFOLD, outer optimizers, partial
participation), checked against equivalences and a NumPy re-implementation."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import small_run

import fastdist
from fastdist.combiners.federated import federated
from fastdist.data.datasets import load_dataset
from fastdist.errors import ConfigError
from fastdist.models.kernels.reference_mlp import loss_and_grad
from fastdist.models.mlp import MLP
from fastdist.optim.server import nesterov_sgd, server_adaptive
from fastdist.run.records import build_combiner
from fastdist.run.worker import epoch_order

PLAIN_SGD = ["optimizer.momentum=0.0", "optimizer.lr=0.1"]
TINY = small_run("workers=2", *PLAIN_SGD)


@functools.cache
def _run(overrides: tuple[str, ...]):
    return fastdist.train(fastdist.compose([*TINY, *overrides]))


def _train(*overrides):
    """Runs are deterministic: tests that need the same run share it."""
    return _run(tuple(overrides))


FEDAVG = ("combiner=fedavg", "combiner.period=4", "steps=10")


def test_fedavg_with_one_local_step_is_grad_avg():
    fed = _train("combiner=fedavg", "combiner.period=1", "steps=12")
    sync = _train("combiner=grad_avg", "steps=12")
    np.testing.assert_allclose(fed.worker_params[0], sync.worker_params[0], rtol=1e-5, atol=1e-6)


def test_outer_sgd_with_lr_one_and_no_momentum_is_plain_averaging():
    avg = _train(*FEDAVG)
    sgd = _train(*FEDAVG, "combiner.outer=sgd", "combiner.outer_lr=1.0")
    np.testing.assert_allclose(sgd.worker_params, avg.worker_params, rtol=1e-5, atol=1e-6)
    # ... and the outer optimizer is really in the loop: momentum changes the result.
    mom = _train(*FEDAVG, "combiner.outer=sgd", "combiner.outer_momentum=0.5")
    assert not np.allclose(mom.worker_params, avg.worker_params, atol=1e-4)


def test_fedprox_with_mu_zero_is_fedavg_and_mu_pulls_toward_the_round_start():
    avg = _train(*FEDAVG)
    prox0 = _train(*FEDAVG, "combiner.prox_mu=0.0", "combiner.name=fedprox")
    np.testing.assert_array_equal(prox0.worker_params, avg.worker_params)
    prox = _train(*FEDAVG, "combiner.prox_mu=0.5", "combiner.name=fedprox")
    assert not np.array_equal(prox.worker_params, avg.worker_params)


def _replay_scaffold(cfg, workers: int, period: int, steps: int):
    """SCAFFOLD option II (Karimireddy et al. 2020, Algorithm 1) with plain SGD, in
    NumPy, over exactly the batches the workers visit."""
    data = load_dataset(cfg.dataset)
    seed, batch, lr = int(cfg.seed), int(cfg.batch_size), np.float32(cfg.optimizer.lr)
    order = np.random.default_rng(seed).permutation(len(data.y_train))
    x, y = data.x_train[order], data.y_train[order]
    size = len(y) // workers
    layout = MLP((data.n_features, *cfg.model.hidden, data.n_classes))
    server = layout.init(seed)
    c = np.zeros_like(server)
    ci = np.zeros((workers, server.size), np.float32)
    rows = np.stack([server] * workers)
    for start in range(0, steps, period):
        k_steps = min(period, steps - start)
        for rank in range(workers):
            for step in range(start, start + k_steps):
                epoch, b = divmod(step, size // batch)
                idx = (
                    rank * size + epoch_order(seed, rank, epoch, size)[b * batch : (b + 1) * batch]
                )
                _, grad, _ = loss_and_grad(layout, rows[rank], x[idx], y[idx])
                rows[rank] -= lr * (grad - ci[rank] + c)
        new_ci = ci - c + (server - rows) / (k_steps * lr)
        c = c + (new_ci - ci).mean(axis=0)
        ci = new_ci
        server = rows.mean(axis=0)
        rows[:] = server
    return server, c, ci


def test_scaffold_control_variates_match_a_numpy_reimplementation(tmp_path):
    workers, period, steps = 2, 3, 8  # the last round is shorter (2 steps)
    ckpt = tmp_path / "ckpt.npz"
    overrides = [
        "combiner=scaffold",
        f"combiner.period={period}",
        f"steps={steps}",
        f"checkpoint.every={steps}",
        f"checkpoint.path={ckpt}",
        "backend=reference",
    ]
    result = _train(*overrides)
    cfg = fastdist.compose([*TINY, *overrides])
    server, c, ci = _replay_scaffold(cfg, workers, period, steps)
    saved = np.load(ckpt)
    tol = {"rtol": 1e-4, "atol": 1e-5}
    np.testing.assert_allclose(result.worker_params[0], server, **tol)
    np.testing.assert_allclose(saved["extra_controls"][workers], c, **tol)
    np.testing.assert_allclose(saved["extra_controls"][:workers], ci, **tol)
    assert np.abs(c).max() > 1e-3  # the controls moved: the comparison is not vacuous
    assert result.metrics["comm_syncs"] == 3  # after steps 3, 6 and the run's end
    assert result.metrics["comm_vectors_per_sync"] == 2  # parameters + control change


def test_participation_picks_the_same_workers_for_the_same_seed():
    plan = federated(participation=0.5).exchange
    first = [plan.members(7, r, 8).tolist() for r in range(20)]
    again = [plan.members(7, r, 8).tolist() for r in range(20)]
    other = [plan.members(8, r, 8).tolist() for r in range(20)]
    assert first == again
    assert first != other
    assert all(len(p) == 4 and p == sorted(set(p)) for p in first)
    assert len({tuple(p) for p in first}) > 1  # a new sample each round
    assert plan.members(7, 3, 1).tolist() == [0]  # at least one worker


def test_partial_participation_is_deterministic_and_idle_workers_compute_nothing():
    overrides = ["workers=4", "combiner=fedavg", "combiner.period=2", "steps=8"]
    overrides += ["combiner.participation=0.5"]
    a, b = _train(*overrides), _train(*overrides)
    np.testing.assert_array_equal(a.worker_params, b.worker_params)
    assert a.metrics["samples_seen"] == 4 * 8 * 16 // 2  # half the workers each round
    assert a.metrics["comm_participants_per_sync"] == 2


PRESETS = ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "slowmo", "diloco"]


def test_presets_build_with_their_outer_optimizers():
    outers = {}
    for preset in [*PRESETS, "fedprox", "scaffold"]:
        combiner = build_combiner(fastdist.compose([f"combiner={preset}"]).combiner)
        assert combiner.name == preset
        outer = combiner.exchange.outer
        outers[preset] = None if outer is None else outer.name
    assert outers["fedavg"] is None and outers["fedavgm"] == "sgd" == outers["slowmo"]
    assert outers["fedadam"] == "fedadam" and outers["diloco"] == "nesterov"


def test_diloco_trains_and_ends_on_a_sync():
    run = _train("combiner=diloco", "combiner.period=4", "steps=10")
    assert run.metrics["combiner"] == "diloco"
    assert np.isfinite(run.worker_params).all()
    np.testing.assert_array_equal(run.worker_params[0], run.worker_params[1])


def test_a_resumed_round_ends_bitwise_identical_to_an_uninterrupted_one(tmp_path):
    common = ["workers=3", "combiner=fedadam", "combiner.period=4", "combiner.scaffold=true"]
    common += ["combiner.participation=0.67"]
    ckpt = tmp_path / "ckpt.npz"
    whole = _train(*common, "steps=21")
    # Checkpoint at step 10: mid-round (rounds end after steps 4, 8, 12, ...).
    _train(*common, "steps=12", "checkpoint.every=10", f"checkpoint.path={ckpt}")
    resumed = _train(*common, "steps=21", f"resume={ckpt}")
    assert resumed.metrics["resumed_from_step"] == 10
    np.testing.assert_array_equal(resumed.worker_params, whole.worker_params)


def test_server_rules_match_their_formulas():
    rng = np.random.default_rng(0)
    p0, g = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    for rule in ("adam", "yogi", "adagrad"):
        opt = server_adaptive(rule, lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
        p, m, v = p0.copy(), np.zeros(50, np.float32), np.full(50, 0.5, np.float32)
        opt.update(p, [m, v], g, 0, 50, 0)
        v0 = np.float32(0.5)
        want_v = {
            "adam": 0.99 * v0 + 0.01 * g**2,
            "yogi": v0 - 0.01 * g**2 * np.sign(v0 - g**2),
            "adagrad": v0 + g**2,
        }[rule]
        np.testing.assert_allclose(m, 0.1 * g, rtol=1e-6)
        np.testing.assert_allclose(v, want_v, rtol=1e-5)
        np.testing.assert_allclose(p, p0 - 0.1 * m / (np.sqrt(want_v) + 1e-3), rtol=1e-5)
    p, mom = p0.copy(), np.ones(50, np.float32)
    nesterov_sgd(lr=0.7, momentum=0.9).update(p, [mom], g, 0, 50, 0)
    np.testing.assert_allclose(p, p0 - 0.7 * (g + 0.9 * (0.9 + g)), rtol=1e-5)


def test_communication_is_counted_from_the_schedule():
    fed = _train(*FEDAVG)
    assert fed.metrics["comm_syncs"] == 3  # after steps 4, 8 and the run's end
    n_params = fed.metrics["n_params"]
    assert fed.metrics["comm_bytes_per_sync"] == 4 * n_params
    assert fed.metrics["comm_bytes_per_worker"] == 3 * 4 * n_params
    sync = _train("combiner=grad_avg", "steps=12")
    assert sync.metrics["comm_syncs"] == 12
    assert 0 <= sync.metrics["time_sync_fraction"] <= 1


def test_periodic_evaluations_and_time_to_accuracy():
    run = _train(
        "combiner=fedavg",
        "combiner.period=3",
        "steps=30",
        "eval.every=5",
        "eval.at_sync=true",
        "eval.target_accuracy=0.0",
        "validation_fraction=0.25",
        "history.every=1",
    )
    evals = run.metrics["evaluations"]
    # the first sync at or past 5, 10, ...: steps 6, 12, 15, 21, 27, 30
    assert [e["step"] for e in evals] == [6, 12, 15, 21, 27, 30]
    assert run.metrics["eval_split"] == "validation"
    assert run.metrics["time_to_accuracy_step"] == 6
    assert evals[-1]["bytes_per_worker"] == run.metrics["comm_bytes_per_worker"]
    # metrics.json's evaluations are history.csv's scored rows: one pipeline
    scored = {row["step"]: row for row in run.history if row["val_accuracy"] is not None}
    assert sorted(scored) == [0, *[e["step"] for e in evals]]  # and the starting point
    assert all(e["accuracy"] == scored[e["step"]]["val_accuracy"] for e in evals)


def test_a_mid_round_row_scores_the_server_model_not_a_workers_own():
    """Between syncs every worker holds a local model; the run's model is the server's
    (the anchor), which is what a history row mid-round must score."""
    overrides = ("combiner=fedavg", "combiner.period=4", "steps=8", "eval.every=2")
    run = _train(*overrides, "history.every=2", "validation_fraction=0.25")
    mid = next(row for row in run.history if row["step"] == 2)  # half-way through round 1
    start = next(row for row in run.history if row["step"] == 0)
    # No sync yet: the server model is still the starting point, whatever the workers
    # learnt locally (worker 0's local model after 2 steps scores differently).
    assert (mid["val_loss"], mid["test_loss"]) == (start["val_loss"], start["test_loss"])
    after = next(row for row in run.history if row["step"] == 4)  # the first sync
    assert after["val_loss"] != start["val_loss"]


def test_bad_federated_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="participation"):
        federated(participation=0.0)
    with pytest.raises(ConfigError, match="combiner.outer must be one of"):
        federated(outer="nope")
    with pytest.raises(ConfigError, match="nesterov"):
        federated(outer="adamw", outer_nesterov=True)  # AdamW has no nesterov option
    assert federated(outer="sgd", outer_nesterov=True)  # SGD has one (issue 12's record)
    with pytest.raises(ConfigError, match="uniform"):
        federated(scaffold=True, weighting="samples")
