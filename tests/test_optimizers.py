"""Optimizer records, schedules and clipping against optax (the oracle), on random
vectors: 100 steps each, relative error <= 1e-5."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastdist.combiners.averaging import local_sgd
from fastdist.errors import ConfigError
from fastdist.optim import adagrad, adamw, lion, sgd
from fastdist.optim import schedules as sched
from fastdist.optim.clipping import clip_scale, sum_of_squares, sum_of_squares_of_mean

optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")


def _keep_absl_off_pytests_stream() -> None:
    """optax imports absl.logging, whose handler keeps the sys.stderr of its import
    (pytest's capture stream) and closes it when a later logging.config call (Hydra's,
    in the in-process CLI tests) shuts old handlers down: pytest then loses stderr.
    absl never closes the interpreter's own stderr."""
    import sys

    from absl import logging as absl_logging

    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


_keep_absl_off_pytests_stream()

P = 10_000  # two full 4096-float blocks and a remainder
STEPS = 100


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _optax_params(tx, p0: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    params = jnp.asarray(p0)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params)


CASES = {
    "sgd momentum + coupled decay": (
        sgd(lr=0.05, momentum=0.9, weight_decay=1e-3),
        optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05, momentum=0.9)),
    ),
    "sgd nesterov": (
        sgd(lr=0.05, momentum=0.8, nesterov=True),
        optax.sgd(0.05, momentum=0.8, nesterov=True),
    ),
    "adamw": (
        adamw(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.05),
        optax.adamw(1e-3, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.05),
    ),
    "adam (adamw, weight_decay=0)": (
        adamw(lr=2e-3, weight_decay=0.0),
        optax.adam(2e-3),
    ),
    "lion": (
        lion(lr=3e-4, beta1=0.9, beta2=0.99, weight_decay=0.1),
        optax.lion(3e-4, b1=0.9, b2=0.99, weight_decay=0.1),
    ),
    "adagrad": (
        adagrad(lr=0.05, initial_accumulator=0.1, eps=1e-7),
        optax.adagrad(0.05, initial_accumulator_value=0.1, eps=1e-7),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_optimizer_matches_optax_over_100_steps(case):
    ours, tx = CASES[case]
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(P).astype(np.float32)
    grads = [rng.standard_normal(P).astype(np.float32) for _ in range(STEPS)]
    want = _optax_params(tx, p0, grads)

    # Whole vector, one call per step.
    params = p0.copy()
    state = [np.zeros(P, np.float32) for _ in ours.state_names]
    for step, g in enumerate(grads):
        ours.update(params, state, g, 0, P, step)
    assert _rel(params, want) < 1e-5

    # Sharded like grad_avg: three slices, the gradient as the mean of two rows.
    sharded = p0.copy()
    state = [np.zeros(P, np.float32) for _ in ours.state_names]
    bounds = [0, 3008, 6400, P]
    for step, g in enumerate(grads):
        rows = np.stack([g + 0.5, g - 0.5])  # mean = g, exactly in float32
        for lo, hi in zip(bounds, bounds[1:]):
            ours.update_from_mean(sharded, state, rows, lo, hi, step)
    assert _rel(sharded, want) < 1e-5


def test_adamw_with_a_schedule_and_clipping_matches_optax_chain():
    oracle = optax.chain(
        optax.clip_by_global_norm(20.0),
        optax.adamw(_optax_schedule("warmup_cosine", 2e-3, STEPS), weight_decay=0.01),
    )
    # optax's warm-up schedule above ends at 0.1 * peak; ours at 0: compare like for like.
    rates = sched.LearningRate(
        1e-3, 2.0, sched.warmup_cosine(final_fraction=0.1, warmup_steps=10), STEPS
    )
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(P).astype(np.float32)
    grads = [
        (rng.standard_normal(P) * rng.uniform(0.1, 0.4)).astype(np.float32) for _ in range(STEPS)
    ]
    want = _optax_params(oracle, p0, grads)
    opt = adamw(lr=1e-3, weight_decay=0.01, clip_norm=20.0)
    params, state = p0.copy(), [np.zeros(P, np.float32) for _ in range(2)]
    clipped = 0
    for step, g in enumerate(grads):
        scale = clip_scale(sum_of_squares(g, 0, P), opt.clip_norm)
        clipped += scale < 1
        opt.update(params, state, g, 0, P, step, lr=rates(step), grad_scale=scale)
    assert 0 < clipped < STEPS  # the test exercises both sides of the threshold
    assert _rel(params, want) < 1e-5


def test_update_from_mean_is_bitwise_the_same_whatever_the_slices():
    opt = adamw(lr=1e-2)
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((3, P)).astype(np.float32)
    results = []
    for bounds in ([0, P], [0, 16, 4112, P], [0, 5008, P]):
        params, state = np.ones(P, np.float32), [np.zeros(P, np.float32) for _ in range(2)]
        for step in range(5):
            for lo, hi in zip(bounds, bounds[1:]):
                opt.update_from_mean(params, state, rows, lo, hi, step, lr=0.01, grad_scale=0.5)
        results.append(params)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def _optax_schedule(name: str, peak: float, total: int):
    if name == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, 10), optax.constant_schedule(peak)], [10]
        )
    if name == "step":
        return optax.piecewise_constant_schedule(peak, {50: 0.1, 75: 0.1})
    if name == "cosine":
        return optax.cosine_decay_schedule(peak, total, alpha=0.1)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, 10, total, end_value=0.1 * peak)
    if name == "linear":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, peak, 10),
                optax.linear_schedule(peak, 0.1 * peak, total - 10),
            ],
            [10],
        )
    raise AssertionError(name)


OUR_SCHEDULES = {
    "constant": sched.constant(warmup_steps=10),
    "step": sched.step(gamma=0.1, milestones=(0.5, 0.75)),
    "cosine": sched.cosine(final_fraction=0.1),
    "warmup_cosine": sched.warmup_cosine(final_fraction=0.1, warmup_steps=10),
    "linear": sched.linear(final_fraction=0.1, warmup_steps=10),
}


@pytest.mark.parametrize("name", OUR_SCHEDULES)
def test_each_schedule_matches_optax_over_100_steps(name):
    rates = sched.LearningRate(0.02, 2.0, OUR_SCHEDULES[name], STEPS)
    oracle = _optax_schedule(name, 0.04, STEPS)
    ours = np.array([rates(t) for t in range(STEPS)])
    want = np.array([float(oracle(t)) for t in range(STEPS)])
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-9)
    assert len(set(np.round(ours, 9))) > 1 or name == "constant"


def test_schedules_are_pure_functions_of_the_step_with_a_pinned_horizon():
    s = sched.warmup_cosine(warmup_steps=5, steps=50)
    # Whatever the run's length, step t has the same rate: a resumed run stays on it.
    assert [s.factor(t, 20) for t in range(50)] == [s.factor(t, 500) for t in range(50)]
    assert s.factor(80, 100) == s.factor(50, 100) == 0.0  # past the horizon: the final value


def test_lr_scaling_rules():
    assert sched.lr_scale("none", 4) == 1.0
    assert sched.lr_scale("linear", 4) == 4.0
    assert sched.lr_scale("sqrt", 4) == 2.0


def test_clipping_matches_optax_and_the_norm_of_the_mean():
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((3, P)).astype(np.float32)
    mean = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
    whole = sum_of_squares_of_mean(rows, 0, P)
    parts = sum_of_squares_of_mean(rows, 0, 4112) + sum_of_squares_of_mean(rows, 4112, P)
    reference = float(np.sum(mean.astype(np.float64) ** 2))
    assert math.isclose(whole, reference, rel_tol=1e-6)
    assert math.isclose(parts, reference, rel_tol=1e-6)
    assert math.isclose(sum_of_squares(mean, 0, P), reference, rel_tol=1e-6)
    for max_norm in (1.0, 1e6):
        clipped = mean * np.float32(clip_scale(whole, max_norm))
        updates, _ = optax.clip_by_global_norm(max_norm).update(jnp.asarray(mean), None)
        assert _rel(clipped, np.asarray(updates)) < 1e-6


def test_bad_optimizer_and_schedule_options_are_config_errors():
    with pytest.raises(ConfigError, match="optimizer.beta2 must be in"):
        adamw(beta2=1.0)
    with pytest.raises(ConfigError, match="optimizer.clip_norm must be > 0"):
        lion(clip_norm=0)
    with pytest.raises(ConfigError, match="schedule.final_fraction"):
        sched.cosine(final_fraction=2)
    with pytest.raises(ConfigError, match="lr_scaling must be one of"):
        sched.lr_scale("cubic", 2)


def test_local_sgd_average_state_and_its_old_name():
    assert local_sgd(average_state=True).exchange.average_state
    assert local_sgd(average_momentum=True).exchange.average_state
    assert not local_sgd().exchange.average_state
    with pytest.raises(ConfigError, match="old name"):
        local_sgd(average_state=True, average_momentum=False)


@pytest.mark.parametrize("case", CASES)
def test_loading_the_update_code_before_the_clock_changes_nothing(case):
    """The worker calls every update on an empty range before it starts timing (so
    Numba's start-up is not timed under backend=jax): that must not touch a value."""
    from fastdist.run.worker import _load_update_code

    opt = CASES[case][0]
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((2, P)).astype(np.float32)
    state = [rng.standard_normal(P).astype(np.float32) for _ in opt.state_names]
    grads = rng.standard_normal((2, P)).astype(np.float32)
    before = [a.copy() for a in (rows, *state, grads)]
    for at in (0, P // 2, P):
        _load_update_code(opt, rows[0], state, grads[0], grads, rows, at, step=3)
    for got, want in zip((rows, *state, grads), before, strict=True):
        assert np.array_equal(got, want)
