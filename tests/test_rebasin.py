"""Git Re-Basin (Ainsworth et al. 2023) beyond two workers: MergeMany, activation
matching, max_iter, and the interpolation barrier after alignment."""

from __future__ import annotations

import numpy as np
import pytest

from fastdist.combiners import FinalizeInputs, aligned_avg
from fastdist.combiners import alignment as alignment_module
from fastdist.combiners.alignment import (
    activation_matching,
    merge_many,
    permute,
    unit_activations,
    weight_matching,
)
from fastdist.errors import ConfigError
from fastdist.models.cnn import cnn
from fastdist.models.kernels.reference_mlp import forward_logits
from fastdist.models.mlp import MLP
from fastdist.run.diagnostics import loss_barriers, train_subset, worker_diagnostics

LAYOUT = MLP((7, 16, 12, 9, 4))  # three hidden layers


def _network(seed, model=LAYOUT):
    """He-uniform weights plus noise, so biases are non-zero too."""
    flat = model.init(seed)
    flat += 0.1 * np.random.default_rng(seed).standard_normal(model.size).astype(np.float32)
    return flat


def _random_perms(model, seed):
    rng = np.random.default_rng(seed)
    spec = model.permutation_spec()
    sizes = [model.layout.shape(spec.axes(p)[0][0])[spec.axes(p)[0][1]] for p in spec.names]
    return [rng.permutation(n) for n in sizes]


def _rows(model, seed, n=600):
    return np.random.default_rng(seed).standard_normal((n, model.n_inputs)).astype(np.float32)


def _inputs(rows, model=LAYOUT, seed=0, shards=None):
    if shards is None:
        x = _rows(model, seed)
        shards = ((x[:300], None), (x[300:], None))
    return FinalizeInputs(np.stack(rows), model, np.full(len(rows), 100), shards, seed=seed)


def _copies(theta, model, seed, n=4, permute_first=False):
    """``n`` randomly permuted copies of ``theta`` (the first unpermuted unless told)."""
    keep = 1 if not permute_first else 0
    return [theta] * keep + [
        permute(model, theta, _random_perms(model, seed + k)) for k in range(keep, n)
    ]


# --- MergeMany ---------------------------------------------------------------------------


@pytest.mark.parametrize("matching", ["weight", "activation"])
@pytest.mark.parametrize("seed", range(3))
def test_merge_many_recovers_permuted_copies_of_one_model_exactly(matching, seed):
    theta = _network(seed)
    rows = _copies(theta, LAYOUT, 10 * seed + 1)
    model = aligned_avg(matching=matching).finalize(_inputs(rows, seed=seed))
    np.testing.assert_allclose(model.members[0], theta, rtol=1e-6, atol=1e-7)
    assert model.info["units_moved"][0] == 0 and min(model.info["units_moved"][1:]) > 0
    assert model.info["converged"] is True and model.info["sweeps"] >= 1
    # plain averaging of the same copies is a different, mixed-up network
    assert not np.allclose(np.mean(rows, axis=0), theta, atol=1e-3)


def test_merge_many_keeps_the_unit_order_of_worker_reference():
    theta = _network(4)
    rows = _copies(theta, LAYOUT, 20, permute_first=True)
    model = aligned_avg(reference=2).finalize(_inputs(rows))
    np.testing.assert_allclose(model.members[0], rows[2], rtol=1e-6, atol=1e-7)
    assert model.info["units_moved"][2] == 0


def _pairwise_agreement(rows, perms):
    spec = LAYOUT.permutation_spec()
    aligned = [
        permute(LAYOUT, r, [p[n] for n in spec.names]).astype(np.float64)
        for r, p in zip(rows, perms)
    ]
    return sum(a @ b for i, a in enumerate(aligned) for b in aligned[i + 1 :])  # fmt: skip


def _sizes():
    return dict(zip(LAYOUT.permutation_spec().names, LAYOUT.sizes[1:-1]))


def _tensors(row):
    return {t: LAYOUT.layout.view(row, t).astype(np.float64) for t in LAYOUT.layout.names}


def test_merge_many_never_lowers_the_agreement_it_starts_from():
    """On independent networks MergeMany ascends the sum of pairwise inner products:
    from the paper's start (no permutation) and from the reference alignment."""
    rows = [_network(s) for s in range(5)]
    spec, sizes = LAYOUT.permutation_spec(), _sizes()
    identity = [{p: np.arange(n) for p, n in sizes.items()} for _ in rows]
    start = [
        dict(zip(spec.names, weight_matching(LAYOUT, rows[0], row, seed=k)))
        for k, row in enumerate(rows)
    ]
    for begin in (identity, start):
        perms, sweeps, converged = merge_many(
            spec, sizes, [_tensors(r) for r in rows], seed=3, start=begin
        )
        assert converged and sweeps >= 1
        assert _pairwise_agreement(rows, perms) >= _pairwise_agreement(rows, begin) - 1e-6
    assert _pairwise_agreement(rows, start) > _pairwise_agreement(rows, identity)


def test_merge_many_is_deterministic_for_a_seed():
    rows = [_network(s) for s in range(4)]
    first = aligned_avg().finalize(_inputs(rows, seed=5))
    again = aligned_avg().finalize(_inputs(rows, seed=5))
    np.testing.assert_array_equal(first.members[0], again.members[0])
    assert first.info == again.info
    spec, sizes, reps = LAYOUT.permutation_spec(), _sizes(), [_tensors(r) for r in rows]
    one, two = merge_many(spec, sizes, reps, seed=7), merge_many(spec, sizes, reps, seed=7)
    assert one[1:] == two[1:]
    for a, b in zip(one[0], two[0]):
        assert all(np.array_equal(a[p], b[p]) for p in sizes)


def test_with_two_workers_merge_many_is_the_reference_method():
    rows = [_network(1), _network(2)]
    for matching in ("weight", "activation"):
        merged = aligned_avg(matching=matching).finalize(_inputs(rows))
        referenced = aligned_avg(method="reference", matching=matching).finalize(_inputs(rows))
        np.testing.assert_array_equal(merged.members[0], referenced.members[0])
        assert merged.info == referenced.info and "sweeps" not in merged.info


def test_the_reference_method_matches_every_worker_to_it():
    theta = _network(6)
    rows = _copies(theta, LAYOUT, 30)
    model = aligned_avg(method="reference").finalize(_inputs(rows))
    np.testing.assert_allclose(model.members[0], theta, rtol=1e-6, atol=1e-7)
    assert "sweeps" not in model.info


def test_max_iter_and_the_other_options_are_validated():
    for bad in (
        {"max_iter": 0},
        {"max_iter": -1},
        {"max_iter": 1.5},
        {"max_iter": True},
        {"method": "mean"},
        {"matching": "gradient"},
    ):
        with pytest.raises(ConfigError) as info:
            aligned_avg(**bad)
        assert len(str(info.value).splitlines()) == 1
    theta = _network(0)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        weight_matching(LAYOUT, theta, theta, max_iter=0)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        merge_many(LAYOUT.permutation_spec(), _sizes(), [_tensors(theta)] * 3, max_iter=0)
    # max_iter=1: one MergeMany sweep, whether or not it was the last one needed
    model = aligned_avg(max_iter=1).finalize(_inputs([_network(s) for s in range(3)]))
    assert model.info["sweeps"] == 1


# --- activation matching -----------------------------------------------------------------


def test_unit_activations_are_the_post_relu_outputs_and_permute_with_the_units():
    theta, x = _network(2), _rows(LAYOUT, 3, 50)
    acts = unit_activations(LAYOUT, theta, x)
    assert list(acts) == ["h1", "h2", "h3"] and acts["h2"].shape == (50, 12)
    assert acts["h1"].dtype == np.float64 and (acts["h1"] >= 0).all()
    perms = _random_perms(LAYOUT, 4)
    moved = unit_activations(LAYOUT, permute(LAYOUT, theta, perms), x)
    for p, perm in zip(["h1", "h2", "h3"], perms):
        np.testing.assert_allclose(moved[p], acts[p][:, perm], rtol=1e-10, atol=1e-12)
    logits = acts["h3"] @ LAYOUT.weight(theta, 3).astype(np.float64) + LAYOUT.bias(theta, 3)
    np.testing.assert_allclose(logits, forward_logits(LAYOUT, theta, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_activation_matching_recovers_a_permuted_cnn_even_with_dead_units(seed):
    model = cnn(input_shape=(7, 6), n_classes=3, channels=[3, 4], pool=[1, 2], hidden=[5])
    theta = model.init(seed)
    theta += 0.05 * np.random.default_rng(seed).standard_normal(model.size).astype(np.float32)
    x = _rows(model, seed, 200)
    permuted = permute(model, theta, _random_perms(model, seed + 10))
    perms = activation_matching(model, theta, permuted, x, seed=seed)
    np.testing.assert_array_equal(permute(model, permuted, perms), theta)
    rows = _copies(theta, model, seed + 20, n=3)
    merged = aligned_avg(matching="activation").finalize(_inputs(rows, model, seed, ((x, None),)))
    np.testing.assert_allclose(merged.members[0], theta, rtol=1e-6, atol=1e-7)


def test_dead_units_are_paired_by_their_weights():
    """Units that never fire have equal (zero) activations: the weights break the tie."""
    model = cnn(input_shape=(7, 6), n_classes=3, channels=[3, 4], pool=[1, 2], hidden=[5])
    theta = model.init(1)
    theta += 0.05 * np.random.default_rng(1).standard_normal(model.size).astype(np.float32)
    x = _rows(model, 1, 200)
    assert (unit_activations(model, theta, x)["h1"].max(axis=0) == 0).sum() >= 2
    permuted = permute(model, theta, _random_perms(model, 11))
    perms = activation_matching(model, theta, permuted, x)
    np.testing.assert_array_equal(permute(model, permuted, perms), theta)


def test_activation_matching_needs_training_rows_and_a_model_that_shows_its_units(monkeypatch):
    rows = [_network(0), _network(1)]
    with pytest.raises(ConfigError, match="needs the workers' training shards"):
        aligned_avg(matching="activation").finalize(_inputs(rows, shards=()))
    combiner = aligned_avg(matching="activation")
    combiner.check_model(LAYOUT)  # mlp and cnn: fine
    monkeypatch.setattr(alignment_module, "supports_activations", lambda model: False)
    with pytest.raises(ConfigError, match="matching=activation cannot read") as info:
        combiner.check_model(LAYOUT)
    assert len(str(info.value).splitlines()) == 1
    aligned_avg(matching="weight").check_model(LAYOUT)


def test_activation_rows_are_a_fixed_subset_of_the_training_shards(monkeypatch):
    seen, real = [], alignment_module.unit_activations
    monkeypatch.setattr(
        alignment_module, "unit_activations", lambda m, p, x: seen.append(x) or real(m, p, x)
    )
    x = _rows(LAYOUT, 0, 2000)
    shards = ((x[:1500], None), (x[1500:], None))
    aligned_avg(matching="activation").finalize(
        _inputs([_network(0), _network(1)], seed=3, shards=shards)
    )
    assert len(seen) == 2 and np.array_equal(seen[0], seen[1])
    assert seen[0].shape == (alignment_module.ACTIVATION_ROWS, 7)
    drawn = {tuple(r) for r in seen[0]}
    assert drawn <= {tuple(r) for r in x.astype(np.float64)}
    assert sum(tuple(r) in drawn for r in x[1500:].astype(np.float64)) == 256  # evenly


# --- the barrier after alignment ---------------------------------------------------------


def _labelled(theta, seed, n):
    x = _rows(LAYOUT, seed, n)
    return x, forward_logits(LAYOUT, theta, x).argmax(axis=1).astype(np.int32)


def test_the_aligned_barrier_of_permuted_copies_is_zero():
    theta = _network(8)
    permuted = permute(LAYOUT, theta, _random_perms(LAYOUT, 9))
    test, train = _labelled(theta, 1, 300), _labelled(theta, 2, 400)
    m = worker_diagnostics(LAYOUT, np.stack([theta, permuted]), *test, train=train)
    assert m["loss_barrier_test"] == m["interpolation"]["loss_barrier"] > 0.05
    assert m["loss_barrier_train"] > 0.05
    assert m["aligned_loss_barrier_test"] == pytest.approx(0.0, abs=1e-6)
    assert m["aligned_loss_barrier_train"] == pytest.approx(0.0, abs=1e-6)
    path = m["aligned_interpolation"]
    assert len(path["alpha"]) == len(path["test_loss"]) == 11
    assert max(path["test_loss"]) - min(path["test_loss"]) < 1e-6
    assert path["accuracy_drop"] == pytest.approx(0.0, abs=1e-12)


def test_barriers_without_train_rows_alignment_or_permutation_facts(monkeypatch):
    a, b = _network(1), _network(2)
    test = _labelled(a, 1, 200)
    m = worker_diagnostics(LAYOUT, np.stack([a, b]), *test)
    assert "loss_barrier_train" not in m and "aligned_loss_barrier_train" not in m
    assert "aligned_loss_barrier_test" in m
    m = worker_diagnostics(LAYOUT, np.stack([a, b]), *test, align=False)
    assert "loss_barrier_test" in m and not any(k.startswith("aligned") for k in m)
    monkeypatch.setattr(MLP, "permutation_spec", lambda self: None)
    m = worker_diagnostics(LAYOUT, np.stack([a, b]), *test, train=_labelled(a, 2, 100))
    assert "loss_barrier_train" in m and not any(k.startswith("aligned") for k in m)
    assert "loss_barrier_test" not in worker_diagnostics(LAYOUT, np.stack([a]), *test)


def test_aligned_networks_keep_their_barrier():
    a = _network(3)
    b = a + 0.01 * np.random.default_rng(4).standard_normal(LAYOUT.size).astype(np.float32)
    test, train = _labelled(a, 1, 200), _labelled(a, 2, 200)
    out = loss_barriers(LAYOUT, a, b, test, train)
    assert out["aligned_loss_barrier_test"] == out["loss_barrier_test"]
    assert out["aligned_loss_barrier_train"] == out["loss_barrier_train"]


def test_train_subset_is_fixed_and_bounded():
    x, y = np.arange(5000.0).reshape(2500, 2), np.arange(2500)
    sx, sy = train_subset((x, y))
    assert sx.shape == (2048, 2) and np.array_equal(sx[:, 0] / 2, sy)
    assert np.array_equal(train_subset((x, y))[1], sy) and np.all(np.diff(sy) > 0)
    assert train_subset((x[:10], y[:10]))[1].tolist() == list(range(10))
