"""Simulated Byzantine workers (fastdist.combiners.attacks) against NumPy references."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from scipy.stats import norm

from fastdist.combiners.attacks import (
    ATTACKS,
    Byzantine,
    alie_z,
    attack_omniscient,
    attack_own_row,
    byzantine,
    flip_labels,
)
from fastdist.engine.allreduce import slice_bounds
from fastdist.errors import ConfigError

P = 9001  # more than two kernel blocks of 4096 columns, and not a multiple of one


def _vector(seed: int, size: int = P) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


# --- attacks on the attacker's own row -----------------------------------------------


@pytest.mark.parametrize(
    ("attack", "scale", "reference"),
    [
        ("sign_flip", 10.0, lambda u: -u),
        ("scaled", 10.0, lambda u: np.float32(10.0) * u),
        ("scaled", -0.3, lambda u: np.float32(-0.3) * u),
    ],
)
def test_own_row_attacks_match_numpy_exactly(attack, scale, reference):
    byz = Byzantine(workers=(1,), attack=attack, scale=scale)
    u = _vector(0)
    row = u.copy()
    attack_own_row(byz, row, rank=1, step=3)
    assert row.dtype == np.float32
    np.testing.assert_array_equal(row, reference(u))


def _noise(seed=7, step=3, rank=2, sigma=2.5, fill=0.0):
    row = np.full(P, fill, np.float32)
    attack_own_row(
        Byzantine(workers=(rank,), attack="gaussian", sigma=sigma, seed=seed), row, rank, step
    )
    return row


def test_gaussian_is_reproducible_and_ignores_the_honest_vector():
    first = _noise(fill=0.0)
    again = _noise(fill=5.0)  # what the worker computed plays no part
    assert first.dtype == np.float32
    assert first.tobytes() == again.tobytes()


@pytest.mark.parametrize("change", [{"seed": 8}, {"step": 4}, {"rank": 3}])
def test_gaussian_differs_with_seed_step_and_rank(change):
    assert not np.array_equal(_noise(), _noise(**change))


@pytest.mark.parametrize("sigma", [0.01, 2.5])
def test_gaussian_has_the_configured_spread(sigma):
    x = _noise(sigma=sigma).astype(np.float64)
    # The sample std of 9001 draws is within ~0.75% of sigma (1 s.d.): 5% is > 6 s.d.
    assert abs(x.std() / sigma - 1) < 0.05
    assert abs(x.mean()) < 0.05 * sigma


# --- omniscient attacks ---------------------------------------------------------------

N_ROWS = 7
ATTACKERS = (1, 4)


def _rows(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Columns of different scales and offsets, so mean and std vary across columns.
    return (
        rng.standard_normal((N_ROWS, P)) * rng.uniform(0.1, 3, P) + rng.uniform(-1, 1, P)
    ).astype(np.float32)


def _reference(attack, rows, honest, z, epsilon):
    x = rows[honest].astype(np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0)  # population std (ddof=0)
    return (mu - z * sd if attack == "alie" else -epsilon * mu).astype(np.float32)


@pytest.mark.parametrize("attack", ["alie", "ipm"])
@pytest.mark.parametrize(
    "members",
    [list(range(N_ROWS)), [6, 0, 1, 2, 5]],  # everyone; a round without attacker 4, unsorted
    ids=["all", "subset"],
)
def test_omniscient_attacks_match_numpy(attack, members):
    byz = Byzantine(workers=ATTACKERS, attack=attack, epsilon=0.7)
    z = 1.3
    rows = _rows()
    before = rows.copy()
    attack_omniscient(byz, rows, np.array(members), 0, P, z)

    honest = sorted(set(members) - set(ATTACKERS))
    expected = _reference(attack, before, honest, z, byz.epsilon)
    attacked = [r for r in ATTACKERS if r in members]
    for r in range(N_ROWS):
        if r in attacked:
            np.testing.assert_allclose(rows[r], expected, rtol=1e-6, atol=1e-6)
        else:  # honest rows, and attackers outside the round, are untouched
            np.testing.assert_array_equal(rows[r], before[r])
    # A sanity check on the reference itself: alie sits z sd below the mean.
    if attack == "alie":
        assert np.all(expected < before[honest].mean(axis=0) + 1e-6)


@pytest.mark.parametrize("attack", ["alie", "ipm"])
@pytest.mark.parametrize(
    "bounds",
    [
        [slice_bounds(P, 3, k) for k in range(3)],
        [slice_bounds(P, 5, k) for k in range(5)],
        [(0, 1), (1, 4097), (4097, 5000), (5000, P)],
    ],
    ids=["3-slices", "5-slices", "odd-slices"],
)
def test_omniscient_slices_give_the_whole_range_bitwise(attack, bounds):
    byz = Byzantine(workers=ATTACKERS, attack=attack)
    whole, sliced = _rows(2), _rows(2)
    attack_omniscient(byz, whole, np.arange(N_ROWS), 0, P, 0.9)
    for lo, hi in bounds:
        attack_omniscient(byz, sliced, np.arange(N_ROWS), lo, hi, 0.9)
    assert whole.tobytes() == sliced.tobytes()
    assert not np.array_equal(whole, _rows(2))  # the attack did write something


@pytest.mark.parametrize("members", [[1, 4], [0, 2, 3]], ids=["no-honest", "no-attacker"])
def test_omniscient_attack_without_honest_or_attacker_leaves_rows_alone(members):
    rows = _rows()
    before = rows.copy()
    attack_omniscient(
        Byzantine(workers=ATTACKERS, attack="alie"), rows, np.array(members), 0, P, 1.0
    )
    np.testing.assert_array_equal(rows, before)


@pytest.mark.parametrize("attack", ["sign_flip", "scaled", "gaussian", "label_flip"])
def test_omniscient_refuses_other_attacks(attack):
    with pytest.raises(ValueError, match="not omniscient"):
        attack_omniscient(
            Byzantine(workers=(1,), attack=attack), _rows(), np.arange(N_ROWS), 0, P, 1.0
        )


@pytest.mark.parametrize("attack", ["label_flip", "alie", "ipm"])
def test_own_row_refuses_other_attacks(attack):
    with pytest.raises(ValueError, match="own row"):
        attack_own_row(Byzantine(workers=(1,), attack=attack), _vector(0), 1, 0)


# --- alie's z_max ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "f", "fraction"),
    [
        # s = floor(n/2 + 1) - f supporters; z_max = Phi^{-1}((n - s) / n)
        (50, 24, 48 / 50),  # s = 2: 1.7507 (not the ~1.0 once quoted for it)
        (50, 12, 36 / 50),  # s = 14
        (20, 5, 14 / 20),  # s = 6
        (10, 2, 6 / 10),  # s = 4
        (3, 1, 2 / 3),  # s = 1
        (10, 1, 5 / 10),  # s = 5: z = 0, the mean itself
        (10, 6, 9 / 10),  # s = 0 -> clamped to 1
        (10, 9, 9 / 10),  # s = -3 -> clamped to 1
    ],
)
def test_alie_z_matches_the_formula(n, f, fraction):
    assert alie_z(n, f) == pytest.approx(norm.ppf(fraction), abs=1e-12)


def test_alie_z_known_value_and_edges():
    assert alie_z(50, 24) == pytest.approx(1.750686, abs=1e-6)
    assert alie_z(10, 0) == 0.0  # no attacker: 0, not the formula's negative value
    assert alie_z(1, 0) == 0.0
    zs = [alie_z(50, f) for f in range(50)]
    assert zs == sorted(zs)  # non-decreasing in f, and finite
    assert all(np.isfinite(zs))


@pytest.mark.parametrize(("n", "f"), [(0, 0), (5, 6), (5, -1), (5.0, 1)])
def test_alie_z_refuses_impossible_counts(n, f):
    with pytest.raises(ValueError):
        alie_z(n, f)


def test_resolved_z_uses_the_configured_value_or_z_max():
    assert Byzantine(workers=(0, 1), attack="alie").resolved_z(10) == alie_z(10, 2)
    assert Byzantine(workers=(0, 1), attack="alie", z=0.5).resolved_z(10) == 0.5


# --- choosing and validating ----------------------------------------------------------


def test_byzantine_choice_is_reproducible_from_the_seed():
    picks = [byzantine(4, n_workers=16, seed=s).workers for s in range(8)]
    assert picks == [byzantine(4, n_workers=16, seed=s).workers for s in range(8)]
    for w in picks:
        assert len(w) == 4 and list(w) == sorted(set(w)) and all(0 <= r < 16 for r in w)
        assert all(type(r) is int for r in w)  # JSON-able, not NumPy integers
    assert len(set(picks)) > 1  # different seeds choose different ranks


@pytest.mark.parametrize("count", [0, 2])
def test_byzantine_named_workers_are_kept_sorted(count):
    byz = byzantine(count, workers=[5, 2], attack="scaled", scale=3, n_workers=8, seed=0)
    assert byz.workers == (2, 5) and byz.scale == 3.0 and byz.attack == "scaled"
    assert byz.describe() == "workers 2, 5 attack with scaled (scale=3)"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"count": 4}, "count=4"),
        ({"count": 9}, "count=9"),
        ({"count": -1}, "count"),
        ({"workers": [0, 4]}, "4"),
        ({"workers": [-1]}, "-1"),
        ({"workers": [1, 1]}, "twice"),
        ({"workers": [0, 1, 2, 3]}, "honest"),
        ({"count": 1, "workers": [0, 2]}, "count=1"),
        ({"attack": "nope"}, "sign_flip, gaussian, scaled, label_flip, alie, ipm"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"scale": float("nan")}, "scale"),
        ({"z": float("inf")}, "z"),
    ],
)
def test_byzantine_refusals_are_one_line_config_errors(kwargs, needle):
    with pytest.raises(ConfigError) as info:
        byzantine(**kwargs, n_workers=4, seed=0)
    message = str(info.value)
    assert "\n" not in message and needle in message and message.startswith("byzantine")


# --- the record -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "kinds", "params"),
    [
        ("sign_flip", (False, True, False), {}),
        ("scaled", (False, True, False), {"scale": 10.0}),
        ("gaussian", (False, True, False), {"sigma": 1.0}),
        ("label_flip", (False, False, True), {}),
        ("alie", (True, False, False), {"z": None}),
        ("ipm", (True, False, False), {"epsilon": 0.1}),
    ],
)
def test_kinds_record_and_pickle(attack, kinds, params):
    byz = byzantine(workers=[3], attack=attack, n_workers=5, seed=1)
    assert byz.active and (byz.omniscient, byz.on_own_row, byz.on_data) == kinds
    assert byz.record() == {"workers": [3], "attack": attack, **params}
    json.dumps(byz.record())
    assert pickle.loads(pickle.dumps(byz)) == byz
    assert byz.describe().startswith(f"worker 3 attacks with {attack}")
    idle = byzantine(attack=attack, n_workers=5, seed=1)
    assert not idle.active and not (idle.omniscient or idle.on_own_row or idle.on_data)


def test_record_resolves_z_max_when_given_the_worker_count():
    assert set(ATTACKS) == {"sign_flip", "gaussian", "scaled", "label_flip", "alie", "ipm"}
    byz = byzantine(workers=[0, 1], attack="alie", n_workers=10, seed=0)
    assert byz.record(n_workers=10)["z"] == pytest.approx(alie_z(10, 2))
    assert byzantine(workers=[0], attack="alie", z=2, n_workers=3, seed=0).record()["z"] == 2.0


# --- label flipping -------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 10])
def test_flip_labels_is_the_reversal_and_an_involution(n_classes):
    y = np.random.default_rng(0).integers(0, n_classes, 500).astype(np.int32)
    original = y.copy()
    flip_labels(y, n_classes)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, n_classes - 1 - original)
    assert np.all((y >= 0) & (y < n_classes))
    flip_labels(y, n_classes)
    np.testing.assert_array_equal(y, original)
