"""Permutation alignment (weight matching) and Fisher-weighted averaging."""

from __future__ import annotations

import numpy as np
import pytest

from fastdist.combiners import FinalizeInputs, aligned_avg, fisher_avg
from fastdist.combiners.alignment import permute_hidden, weight_matching
from fastdist.combiners.fisher import diagonal_fisher
from fastdist.kernels.reference import forward_logits, loss_and_grad
from fastdist.model import ParamLayout, init_params

LAYOUT = ParamLayout((7, 16, 12, 9, 4))


def _random_perms(layout, seed):
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for n in layout.sizes[1:-1]]


def _network(seed):
    flat = init_params(LAYOUT, seed)
    flat += 0.1 * np.random.default_rng(seed).standard_normal(LAYOUT.size).astype(np.float32)
    return flat


def test_permuting_hidden_units_keeps_the_function():
    theta = _network(0)
    permuted = permute_hidden(LAYOUT, theta, _random_perms(LAYOUT, 1))
    assert not np.array_equal(permuted, theta)
    x = np.random.default_rng(2).standard_normal((20, 7)).astype(np.float32)
    np.testing.assert_allclose(
        forward_logits(LAYOUT, permuted, x), forward_logits(LAYOUT, theta, x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weight_matching_recovers_a_permuted_copy_exactly(seed):
    theta = _network(seed)
    permuted = permute_hidden(LAYOUT, theta, _random_perms(LAYOUT, seed + 10))
    perms = weight_matching(LAYOUT, theta, permuted, seed=seed)
    np.testing.assert_array_equal(permute_hidden(LAYOUT, permuted, perms), theta)


def _inputs(rows, shards=()):
    return FinalizeInputs(np.stack(rows), LAYOUT, np.full(len(rows), 100), shards)


def test_aligned_avg_of_a_network_and_its_permuted_copy_is_the_network():
    theta = _network(5)
    permuted = permute_hidden(LAYOUT, theta, _random_perms(LAYOUT, 6))
    model = aligned_avg().finalize(_inputs([theta, permuted]))
    np.testing.assert_allclose(model.members[0], theta, rtol=1e-6, atol=1e-7)
    # plain averaging of the same pair is a different, mixed-up network
    assert not np.allclose(np.mean([theta, permuted], axis=0), theta, atol=1e-3)


def test_already_aligned_networks_get_identity_permutations():
    theta = _network(7)
    perms = weight_matching(LAYOUT, theta, theta.copy())
    assert all(np.array_equal(p, np.arange(len(p))) for p in perms)


def test_diagonal_fisher_matches_a_brute_force_computation():
    layout = ParamLayout((5, 6, 3))
    theta = init_params(layout, 3)
    x = np.random.default_rng(4).standard_normal((30, 5)).astype(np.float32)
    fisher = diagonal_fisher(layout, theta, x, n_samples=12, seed=9)
    assert fisher.shape == (layout.size,) and (fisher >= 0).all() and fisher.any()
    # the same rows and sampled labels, with the NumPy reference
    rng = np.random.default_rng(9)
    rows = rng.choice(30, size=12, replace=False)
    logits = forward_logits(layout, theta, x[rows]).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = [rng.choice(3, p=pi) for pi in p]
    brute = np.mean(
        [
            loss_and_grad(layout, theta, x[r : r + 1], np.array([y]))[1].astype(np.float64) ** 2
            for r, y in zip(rows, labels)
        ],
        axis=0,
    )
    np.testing.assert_allclose(fisher, brute, rtol=1e-4, atol=1e-10)


def test_fisher_avg_of_identical_workers_is_that_model():
    theta = _network(1)
    x = np.random.default_rng(0).standard_normal((40, 7)).astype(np.float32)
    shards = ((x, None), (x, None))
    model = fisher_avg(n_samples=16).finalize(_inputs([theta, theta.copy()], shards))
    np.testing.assert_allclose(model.members[0], theta, rtol=1e-6)


def test_where_one_worker_has_zero_fisher_the_other_wins(monkeypatch):
    a, b = _network(1), _network(2)
    fishers = [np.zeros(LAYOUT.size), np.ones(LAYOUT.size)]
    fishers[0][:10] = 1.0  # worker 0 informative only on the first 10 parameters
    fishers[1][:10] = 0.0
    calls = iter(fishers)
    monkeypatch.setattr(
        "fastdist.combiners.fisher.diagonal_fisher", lambda *args, **kwargs: next(calls)
    )
    x = np.zeros((4, 7), np.float32)
    model = fisher_avg(epsilon=1e-12).finalize(_inputs([a, b], ((x, None), (x, None))))
    np.testing.assert_allclose(model.members[0][:10], a[:10], rtol=1e-6)
    np.testing.assert_allclose(model.members[0][10:], b[10:], rtol=1e-6)
