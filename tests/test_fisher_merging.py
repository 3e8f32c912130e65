"""Fisher merging as the paper's reference implementation (mmatena/model_merging) does
it: the exact expectation over classes, per-model normalisation by the Fisher's L2 norm,
a floor instead of an additive epsilon, and ``favor_target``; each an option."""

from __future__ import annotations

import numpy as np
import pytest

import fastdist
from fastdist.combiners import FinalizeInputs, fisher_avg, weight_avg
from fastdist.combiners import fisher as fisher_module
from fastdist.combiners.fisher import diagonal_fisher
from fastdist.errors import ConfigError
from fastdist.models.mlp import MLP
from fastdist.run.records import build_combiner

LAYOUT = MLP((6, 8, 5, 4))
TINY = MLP((3, 4, 3))


def _inputs(rows, samples=None, layout=LAYOUT, shards=None):
    seen = np.full(len(rows), 100) if samples is None else np.asarray(samples)
    if shards is None:
        x = np.zeros((4, layout.sizes[0]), np.float32)
        shards = tuple((x, None) for _ in rows)
    return FinalizeInputs(np.stack(rows).astype(np.float32), layout, seen, shards, seed=0)


def _fake_fishers(monkeypatch, fishers):
    calls = iter(fishers)
    monkeypatch.setattr(fisher_module, "diagonal_fisher", lambda *args, **kwargs: next(calls))


def _reference_merge(params, fishers, coeffs, floor, favor_target, normalize, splits):
    """The reference's ``_merge_with_coeffs`` / ``generate_merged_for_coeffs_set``,
    transcribed to NumPy: the models as lists of variables (``splits`` cut the flat vector
    into "layers"), the norm over all of a model's variables, the coefficients divided by
    it, the floor on every model or only the first (``favor_target_model``)."""
    variables = [np.split(p.astype(np.float64), splits) for p in params]
    diags = [np.split(f, splits) for f in fishers]
    if normalize:
        norms = [np.sqrt(sum(np.sum(np.square(d)) for d in model)) for model in diags]
        coeffs = [w / n for w, n in zip(coeffs, norms)]
    merged = []
    for i in range(len(variables[0])):
        lhs, rhs = [], []
        for j, (mvars, coeff, fisher) in enumerate(zip(variables, coeffs, diags)):
            diag = fisher[i]
            if not favor_target or j == 0:
                diag = np.maximum(diag, floor)
            lhs.append(coeff * diag)
            rhs.append(coeff * diag * mvars[i])
        merged.append(np.sum(rhs, axis=0) / np.sum(lhs, axis=0))
    return np.concatenate(merged)


def _random_case(seed, n_models=3):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(LAYOUT.size).astype(np.float32) for _ in range(n_models)]
    fishers = []
    for _ in range(n_models):
        f = rng.exponential(1e-3, LAYOUT.size) * rng.uniform(0.1, 10.0)  # different scales
        f[rng.random(LAYOUT.size) < 0.3] = 0.0  # dead units: below the floor
        f[rng.random(LAYOUT.size) < 0.1] = 1e-8
        fishers.append(f)
    return params, fishers


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("favor_target", [False, True])
def test_the_merge_is_the_reference_formula(monkeypatch, normalize, favor_target):
    params, fishers = _random_case(1)
    samples = [100, 300, 200]  # lambda_k: a worker failed, so samples seen weight the terms
    _fake_fishers(monkeypatch, fishers)
    combiner = fisher_avg(normalize=normalize, favor_target=favor_target)
    got = combiner.finalize(_inputs(params, samples)).members[0]
    lam = np.asarray(samples) / np.mean(samples)
    splits = np.cumsum([LAYOUT.sizes[0] * 8, 8, 8 * 5, 5, 5 * 4])
    want = _reference_merge(params, fishers, lam, 1e-6, favor_target, normalize, splits)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the options matter on this case
    other = _reference_merge(params, fishers, lam, 1e-6, favor_target, not normalize, splits)
    assert np.abs(other - want).max() > 1e-2


def test_favor_target_keeps_the_first_trained_worker_where_nobody_is_informative(monkeypatch):
    a, b, c = (np.full(LAYOUT.size, v, np.float32) for v in (1.0, 2.0, 4.0))
    zero = np.zeros(LAYOUT.size)
    _fake_fishers(monkeypatch, [zero, zero])  # worker 0 failed: no Fisher is computed for it
    got = fisher_avg(favor_target=True).finalize(_inputs([a, b, c], [0, 50, 50]))
    np.testing.assert_allclose(got.members[0], 2.0)  # worker 1, the first that trained
    _fake_fishers(monkeypatch, [zero, zero])
    got = fisher_avg().finalize(_inputs([a, b, c], [0, 50, 50]))
    np.testing.assert_allclose(got.members[0], 3.0)  # peers: the mean of workers 1 and 2


def test_floor_and_epsilon_differ_where_the_fisher_is_about_zero(monkeypatch):
    a, b = np.zeros(LAYOUT.size, np.float32), np.ones(LAYOUT.size, np.float32)
    f0, f1 = np.full(LAYOUT.size, 1e-2), np.full(LAYOUT.size, 2e-2)  # informative: 1/3, 2/3
    f0[:10], f1[:10] = 1e-7, 0.0  # worker 0 barely informative, worker 1 not at all
    f0[10:20] = f1[10:20] = 0.0  # nobody informative
    floor_rule = dict(floor=1e-6, epsilon=0.0, normalize=False)
    eps_rule = dict(floor=0.0, epsilon=1e-8, normalize=False)
    merged = {}
    for name, options in (("floor", floor_rule), ("epsilon", eps_rule)):
        _fake_fishers(monkeypatch, [f0, f1])
        merged[name] = fisher_avg(**options).finalize(_inputs([a, b])).members[0]
    # both floored to 1e-6: the plain mean; epsilon keeps worker 0's 10x edge
    np.testing.assert_allclose(merged["floor"][:10], 0.5, rtol=1e-6)
    np.testing.assert_allclose(merged["epsilon"][:10], 1e-8 / (1e-7 + 2e-8), rtol=1e-5)
    np.testing.assert_allclose(merged["floor"][10:20], 0.5, rtol=1e-6)
    np.testing.assert_allclose(merged["epsilon"][10:20], 0.5, rtol=1e-6)
    # away from zero they agree: the Fisher ratio
    for value in merged.values():
        np.testing.assert_allclose(value[20:], 2 / 3, rtol=1e-5)


def test_a_zero_fisher_is_left_unnormalised_and_samples_seen_still_weight(monkeypatch):
    a, b = np.zeros(LAYOUT.size, np.float32), np.ones(LAYOUT.size, np.float32)
    _fake_fishers(monkeypatch, [np.zeros(LAYOUT.size)] * 2)  # norm 0: no division by it
    inputs = _inputs([a, b], [100, 300])
    got = fisher_avg().finalize(inputs).members[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, weight_avg().finalize(inputs).members[0], rtol=1e-6)


def _log_probs(theta, x):
    """An independent float64 forward pass of the MLP (ReLU between dense layers)."""
    h = x
    for j in range(TINY.n_layers):
        h = h @ TINY.weight(theta, j) + TINY.bias(theta, j)
        if j < TINY.n_layers - 1:
            h = np.maximum(h, 0.0)
    h = h - h.max(axis=1, keepdims=True)
    return h - np.log(np.exp(h).sum(axis=1, keepdims=True))


def test_the_exact_expectation_is_a_probability_weighted_sum_over_classes():
    """sum_c p_c (d log p_c / d theta)^2, by central finite differences per parameter."""
    rng = np.random.default_rng(0)
    theta = TINY.init(2).astype(np.float64) + 0.3 * rng.standard_normal(TINY.size)
    x = rng.standard_normal((6, 3))
    step = 1e-6
    grads = np.empty((TINY.size, len(x), 3))  # d log p_c(x_i) / d theta_j
    for j in range(TINY.size):
        up, down = theta.copy(), theta.copy()
        up[j] += step
        down[j] -= step
        grads[j] = (_log_probs(up, x) - _log_probs(down, x)) / (2 * step)
    probs = np.exp(_log_probs(theta, x))
    brute = np.einsum("ic,jic->j", probs, grads**2) / len(x)
    got = diagonal_fisher(TINY, theta, x, n_samples=len(x), labels="expected")
    np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-9)
    # and it is the combiner's default
    assert fastdist.compose(["combiner=fisher_avg"]).combiner.labels == "expected"


def test_the_default_combiner_is_the_reference_merge_of_exact_fishers():
    rng = np.random.default_rng(3)
    rows = [(TINY.init(5) + 0.2 * rng.standard_normal(TINY.size)).astype(np.float32)]
    rows.append((rows[0] + 0.3 * rng.standard_normal(TINY.size)).astype(np.float32))
    shards = tuple((rng.standard_normal((40, 3)).astype(np.float32), None) for _ in rows)
    got = fisher_avg(n_samples=16).finalize(_inputs(rows, layout=TINY, shards=shards))
    fishers = [
        diagonal_fisher(TINY, row, x, None, 16, k, "expected")
        for k, (row, (x, _)) in enumerate(zip(rows, shards))
    ]
    want = _reference_merge(rows, fishers, [1.0, 1.0], 1e-6, False, True, [])
    np.testing.assert_allclose(got.members[0], want, rtol=1e-5, atol=1e-7)


def test_the_options_are_checked_in_one_line():
    bad_options = (
        {"floor": -1e-6},
        {"floor": float("inf")},
        {"floor": "1e-6"},
        {"epsilon": -1.0},
        {"epsilon": float("nan")},
        {"epsilon": True},
        {"floor": 0.0, "epsilon": 0.0},
        {"normalize": "yes"},
        {"normalize": 1},
        {"favor_target": None},
        {"labels": "exact"},
        {"n_samples": 0},
    )
    for bad in bad_options:
        with pytest.raises(ConfigError) as caught:
            fisher_avg(**bad)
        message = str(caught.value)
        assert "\n" not in message and f"combiner.{next(iter(bad))}" in message, message


def test_the_config_sets_every_option():
    cfg = fastdist.compose(["combiner=fisher_avg"])
    assert {k: cfg.combiner[k] for k in ("labels", "normalize", "floor", "epsilon")} == {
        "labels": "expected",
        "normalize": True,
        "floor": 1e-6,
        "epsilon": 0.0,
    }
    assert cfg.combiner.favor_target is False
    overrides = ["combiner.floor=0", "combiner.epsilon=1e-8", "combiner.normalize=false"]
    cfg = fastdist.compose(["combiner=fisher_avg", *overrides, "combiner.favor_target=true"])
    assert build_combiner(cfg.combiner).name == "fisher_avg"
    with pytest.raises(ConfigError, match="combiner.floor and combiner.epsilon"):
        build_combiner(fastdist.compose(["combiner=fisher_avg", "combiner.floor=0"]).combiner)
