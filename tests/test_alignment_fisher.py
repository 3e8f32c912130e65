"""Permutation alignment (weight matching) and Fisher-weighted averaging."""

from __future__ import annotations

import numpy as np
import pytest

import fastdist
from fastdist.combiners import FinalizeInputs, Sync, aligned_avg, fisher_avg, weight_avg
from fastdist.combiners import fisher as fisher_module
from fastdist.combiners.alignment import permute, weight_matching
from fastdist.combiners.fisher import diagonal_fisher
from fastdist.errors import ConfigError
from fastdist.models.kernels.reference_mlp import forward_logits, loss_and_grad
from fastdist.models.mlp import MLP
from fastdist.run.combine import combine
from fastdist.run.preparation import prepare_data
from fastdist.run.records import build_combiner

LAYOUT = MLP((7, 16, 12, 9, 4))  # three hidden layers
TINY = MLP((5, 6, 3))


def _random_perms(layout, seed):
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for n in layout.sizes[1:-1]]


def _network(seed, layout=LAYOUT):
    """He-uniform weights plus noise, so biases are non-zero too."""
    flat = layout.init(seed)
    flat += 0.1 * np.random.default_rng(seed).standard_normal(layout.size).astype(np.float32)
    return flat


def _inputs(rows, shards=(), samples=None, layout=LAYOUT, seed=0):
    seen = np.full(len(rows), 100) if samples is None else np.asarray(samples)
    return FinalizeInputs(np.stack(rows), layout, seen, shards, seed=seed)


# --- permutation alignment ------------------------------------------------------------


def test_permuting_hidden_units_keeps_the_function():
    theta = _network(0)
    perms = _random_perms(LAYOUT, 1)
    permuted = permute(LAYOUT, theta, perms)
    assert not np.array_equal(permuted, theta)
    assert np.array_equal(np.sort(permuted), np.sort(theta))  # the same numbers, moved
    x = np.random.default_rng(2).standard_normal((20, 7)).astype(np.float32)
    np.testing.assert_allclose(
        forward_logits(LAYOUT, permuted, x), forward_logits(LAYOUT, theta, x), rtol=1e-5, atol=1e-5
    )
    inverse = [np.argsort(p) for p in perms]
    np.testing.assert_array_equal(permute(LAYOUT, permuted, inverse), theta)


def test_permute_rejects_what_is_not_a_permutation():
    theta = _network(0)
    perms = _random_perms(LAYOUT, 1)
    with pytest.raises(ValueError, match="need 3 permutations"):
        permute(LAYOUT, theta, perms[:2])
    with pytest.raises(ValueError, match="perms\\[1\\]"):
        permute(LAYOUT, theta, [perms[0], np.zeros(12, int), perms[2]])


@pytest.mark.parametrize("seed", range(6))
def test_weight_matching_recovers_a_permuted_copy_exactly(seed):
    theta = _network(seed)
    permuted = permute(LAYOUT, theta, _random_perms(LAYOUT, seed + 10))
    perms = weight_matching(LAYOUT, theta, permuted, seed=seed)
    np.testing.assert_array_equal(permute(LAYOUT, permuted, perms), theta)


def test_weight_matching_undoes_the_permutation_of_a_noisy_copy():
    theta = _network(3)
    true_perms = _random_perms(LAYOUT, 4)
    noisy = theta + 0.02 * np.random.default_rng(5).standard_normal(LAYOUT.size).astype(np.float32)
    perms = weight_matching(LAYOUT, theta, permute(LAYOUT, noisy, true_perms))
    # aligned unit a is permuted unit perms[a], i.e. original unit true_perms[perms[a]]
    for found, applied in zip(perms, true_perms):
        np.testing.assert_array_equal(applied[found], np.arange(len(found)))


def test_already_aligned_networks_get_identity_permutations():
    theta = _network(7)
    perms = weight_matching(LAYOUT, theta, theta.copy())
    assert all(np.array_equal(p, np.arange(len(p))) for p in perms)
    assert weight_matching(MLP((3, 2)), np.zeros(8), np.zeros(8)) == []  # no hidden


def test_aligned_avg_of_a_network_and_its_permuted_copy_is_the_network():
    theta = _network(5)
    permuted = permute(LAYOUT, theta, _random_perms(LAYOUT, 6))
    combiner = aligned_avg()
    assert (combiner.name, combiner.sync) == ("aligned_avg", Sync.NONE)
    assert combiner.init == "independent"
    model = combiner.finalize(_inputs([theta, permuted, theta.copy()]))
    assert len(model.members) == 1 and model.members[0].dtype == np.float32
    np.testing.assert_allclose(model.members[0], theta, rtol=1e-6, atol=1e-7)
    assert model.info["units_moved"][0] == 0 and model.info["units_moved"][1] > 0
    assert model.info["units_moved"][2] == 0
    # the permuted copy as the reference: the result is that copy
    model = aligned_avg(reference=1).finalize(_inputs([theta, permuted]))
    np.testing.assert_allclose(model.members[0], permuted, rtol=1e-6, atol=1e-7)
    # plain averaging of the same pair is a different, mixed-up network
    assert not np.allclose(np.mean([theta, permuted], axis=0), theta, atol=1e-3)


def test_aligned_avg_of_aligned_networks_is_the_plain_average():
    a = _network(1)
    b = a + 0.01 * np.random.default_rng(2).standard_normal(LAYOUT.size).astype(np.float32)
    inputs = _inputs([a, b])
    model = aligned_avg().finalize(inputs)
    assert model.info["units_moved"] == [0, 0]
    np.testing.assert_array_equal(model.members[0], weight_avg().finalize(inputs).members[0])
    np.testing.assert_array_equal(
        model.members[0], np.mean([a, b], axis=0, dtype=np.float64).astype(np.float32)
    )


def test_aligned_avg_options_are_validated():
    assert aligned_avg(init="shared").init == "shared"
    for bad in ({"init": "nope"}, {"reference": -1}, {"reference": 1.5}, {"reference": True}):
        with pytest.raises(ConfigError):
            aligned_avg(**bad)
    with pytest.raises(ConfigError, match="reference=2 but there are 2 workers"):
        aligned_avg(reference=2).finalize(_inputs([_network(0), _network(1)]))


# --- Fisher ---------------------------------------------------------------------------


def _softmax(logits):
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _per_example_sq_grad(layout, theta, x, label):
    """Brute force: the reference kernel on a batch of one, squared."""
    grad = loss_and_grad(layout, theta, x[None], np.array([label]))[1]
    return grad.astype(np.float64) ** 2


@pytest.fixture
def tiny_data():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    return TINY.init(3), x, rng.integers(0, 3, 30)


def test_sampled_fisher_matches_a_brute_force_computation(tiny_data):
    theta, x, y = tiny_data
    fisher = diagonal_fisher(TINY, theta, x, n_samples=12, seed=9)
    assert fisher.shape == (TINY.size,) and fisher.dtype == np.float64
    assert (fisher >= 0).all() and fisher.any()
    # the same rows and the same labels y ~ softmax(logits), by inverse-CDF sampling
    rng = np.random.default_rng(9)
    rows = np.sort(rng.choice(30, size=12, replace=False))
    draws = rng.random(12)
    probs = _softmax(forward_logits(TINY, theta, x[rows]).astype(np.float64))
    labels = [int(np.searchsorted(np.cumsum(p), u, side="right")) for p, u in zip(probs, draws)]
    brute = np.mean([_per_example_sq_grad(TINY, theta, x[r], c) for r, c in zip(rows, labels)], 0)
    np.testing.assert_allclose(fisher, brute, rtol=1e-4, atol=1e-10)


def test_expected_and_empirical_fisher_match_brute_force(tiny_data):
    theta, x, y = tiny_data
    probs = _softmax(forward_logits(TINY, theta, x).astype(np.float64))
    expected = np.mean(
        [
            sum(probs[r, c] * _per_example_sq_grad(TINY, theta, x[r], c) for c in range(3))
            for r in range(30)
        ],
        axis=0,
    )
    empirical = np.mean([_per_example_sq_grad(TINY, theta, x[r], y[r]) for r in range(30)], 0)
    got = diagonal_fisher(TINY, theta, x, n_samples=100, labels="expected")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-10)
    got = diagonal_fisher(TINY, theta, x, y, n_samples=100, labels="true")
    np.testing.assert_allclose(got, empirical, rtol=1e-4, atol=1e-10)
    # the sampled estimate is unbiased: averaged over many seeds it approaches the exact one
    sampled = np.mean([diagonal_fisher(TINY, theta, x, seed=s) for s in range(400)], axis=0)
    np.testing.assert_allclose(sampled, expected, rtol=0.1, atol=1e-3 * expected.max())


def test_fisher_is_the_same_in_chunks(tiny_data, monkeypatch):
    theta, x, y = tiny_data
    whole = {m: diagonal_fisher(TINY, theta, x, y, seed=2, labels=m) for m in fisher_module.LABELS}
    monkeypatch.setattr(fisher_module, "_CHUNK", 7)
    for mode, value in whole.items():
        np.testing.assert_allclose(diagonal_fisher(TINY, theta, x, y, seed=2, labels=mode), value)


def test_fisher_arguments_are_checked(tiny_data):
    theta, x, y = tiny_data
    with pytest.raises(ValueError, match="labels must be one of"):
        diagonal_fisher(TINY, theta, x, labels="model")
    with pytest.raises(ValueError, match="needs one label per row"):
        diagonal_fisher(TINY, theta, x, labels="true")
    with pytest.raises(ValueError, match="labels must lie in"):
        diagonal_fisher(TINY, theta, x, y + 3, labels="true")
    bad_options = ({"n_samples": 0}, {"epsilon": 0.0, "floor": 0.0}, {"epsilon": float("nan")})
    for bad in (*bad_options, {"labels": "x"}):
        with pytest.raises(ConfigError):
            fisher_avg(**bad)
    with pytest.raises(ConfigError, match="needs each worker's training shard"):
        fisher_avg().finalize(_inputs([_network(0)]))


def test_fisher_avg_of_identical_workers_is_that_model():
    theta = _network(1)
    x = np.random.default_rng(0).standard_normal((40, 7)).astype(np.float32)
    combiner = fisher_avg(n_samples=16)
    assert (combiner.name, combiner.sync, combiner.init) == ("fisher_avg", Sync.NONE, "shared")
    model = combiner.finalize(_inputs([theta, theta.copy()], ((x, None), (x[::-1], None))))
    np.testing.assert_allclose(model.members[0], theta, rtol=1e-6)


def _fake_fishers(monkeypatch, fishers):
    calls = iter(fishers)
    monkeypatch.setattr(fisher_module, "diagonal_fisher", lambda *args, **kwargs: next(calls))


def test_where_one_worker_has_zero_fisher_the_other_wins(monkeypatch):
    a, b = _network(1), _network(2)
    fishers = [np.zeros(LAYOUT.size), np.ones(LAYOUT.size)]
    fishers[0][:10] = 1.0  # worker 0 informative only on the first 10 parameters
    fishers[1][:10] = 0.0
    fishers[0][-5:] = fishers[1][-5:] = 0.0  # nobody informative: the plain mean
    _fake_fishers(monkeypatch, fishers)
    x = np.zeros((4, 7), np.float32)
    additive = fisher_avg(epsilon=1e-12, floor=0.0, normalize=False)  # (F_k + eps) weights
    model = additive.finalize(_inputs([a, b], ((x, None), (x, None))))
    np.testing.assert_allclose(model.members[0][:10], a[:10], rtol=1e-6)
    np.testing.assert_allclose(model.members[0][10:-5], b[10:-5], rtol=1e-6)
    np.testing.assert_allclose(model.members[0][-5:], (a[-5:] + b[-5:]) / 2, rtol=1e-6)


def test_fisher_avg_weights_workers_by_samples_seen_like_weight_avg(monkeypatch):
    a, b = _network(1), _network(2)
    x = np.zeros((4, 7), np.float32)
    _fake_fishers(monkeypatch, [np.zeros(LAYOUT.size)] * 2)
    inputs = _inputs([a, b], ((x, None), (x, None)), samples=[100, 300])
    np.testing.assert_allclose(
        fisher_avg().finalize(inputs).members[0], weight_avg().finalize(inputs).members[0], 1e-6
    )


# --- configuration and a real run -----------------------------------------------------


def test_the_configs_build_the_combiners():
    cfg = fastdist.compose(["combiner=aligned_avg"])
    combiner = build_combiner(cfg.combiner)
    assert (combiner.name, combiner.init) == ("aligned_avg", "independent")
    cfg = fastdist.compose(["combiner=fisher_avg", "combiner.labels=expected"])
    combiner = build_combiner(cfg.combiner)
    assert (combiner.name, combiner.init) == ("fisher_avg", "shared")
    with pytest.raises(ConfigError, match="combiner.reference"):
        build_combiner(fastdist.compose(["combiner=aligned_avg", "combiner.reference=-1"]).combiner)


def test_on_independently_initialised_workers_alignment_beats_plain_averaging():
    from tests.conftest import small_run

    cfg = fastdist.compose(
        [*small_run("workers=3", "epochs=3", "model.hidden=[32,32]"), "combiner=aligned_avg"]
    )
    run = fastdist.train(cfg)
    assert run.metrics["combiner_units_moved"][0] == 0
    data = prepare_data(cfg, 3, 0.0)
    scores = {
        combiner.name: combine(
            combiner, run.worker_params, run.model, data, run.samples_seen, 0, diagnostics=False
        )["test_accuracy"]
        for combiner in (weight_avg(init="independent"), fisher_avg(labels="expected"))
    }
    assert run.metrics["test_accuracy"] > scores["weight_avg"] + 0.1, (run.metrics, scores)
    assert scores["fisher_avg"] > 0.5  # runs on the real shards; chance is 1/3
