"""Robust aggregation rules (fastdist.combiners.aggregators) against plain NumPy
references, at their bounds, on hostile values, and as a threaded collective whose
result must not depend on how many workers split the columns."""

from __future__ import annotations

import inspect
import pickle
import threading

import numpy as np
import pytest

from fastdist.combiners import aggregators
from fastdist.combiners.aggregators import (
    RULES,
    Aggregate,
    AggregatorWorker,
    aggregate_rows,
    centered_clip,
    geometric_median,
    krum,
    mean,
    median,
    multi_krum,
    trimmed_mean,
)
from fastdist.engine.allreduce import mean_rows_into, slice_bounds
from fastdist.errors import ConfigError, DivergenceError

# One record per rule, with options that make the rule do something (centered_clip's
# tau clips some rows of _rows() and not others).
RECORDS = {
    "mean": mean(),
    "median": median(),
    "trimmed_mean": trimmed_mean(trim=2),
    "krum": krum(f=1),
    "multi_krum": multi_krum(f=1, m=3),
    "geometric_median": geometric_median(),
    "centered_clip": centered_clip(tau=2.5, iters=3),
}
DISTANCE = [r for r in RULES if Aggregate(rule=r).uses_distances]


def _rows(n: int, size: int, seed: int) -> np.ndarray:
    """Random float32 rows of norms about 1, 2, ..., n."""
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(n))[:, None] / np.sqrt(size)
    return (rng.standard_normal((n, size)) * scale).astype(np.float32)


# ------------------------------------------------------------------ references


def _reference(agg: Aggregate, rows: np.ndarray, members, center=None) -> np.ndarray:
    """The rule in plain NumPy, float64 where the rule is iterative."""
    members = list(members)
    x = rows[members].astype(np.float64)
    n = len(members)
    if agg.rule == "mean":  # mean_rows_into's arithmetic: float32 sum, times 1/n
        acc = rows[members[0]].copy()
        for r in members[1:]:
            acc += rows[r]
        return acc * (np.float32(1.0) / np.float32(n))
    if agg.rule == "median":
        return np.median(x, axis=0).astype(np.float32)
    if agg.rule == "trimmed_mean":
        t = agg.trim_count
        kept = np.sort(x, axis=0)[t : n - t]
        acc = kept[0].copy()
        for row in kept[1:]:
            acc += row
        return (acc / len(kept)).astype(np.float32)
    if agg.rule in ("krum", "multi_krum"):
        dist = [[float(np.sum((x[i] - x[j]) ** 2)) for j in range(n)] for i in range(n)]
        scores = []
        for i in range(n):
            others = sorted(dist[i][j] for j in range(n) if j != i)
            scores.append(sum(others[: n - agg.f - 2]))
        m = agg.multi_count(n)
        chosen = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])
        acc = x[chosen[0]].copy()
        for i in chosen[1:]:
            acc += x[i]
        return (acc / m).astype(np.float32)
    if agg.rule == "geometric_median":
        z = x.mean(axis=0)
        for _ in range(agg.max_iter):
            d = np.linalg.norm(x - z, axis=1)
            w = 1.0 / np.maximum(d, 1e-12 * (1.0 + np.linalg.norm(z)))
            new = w @ x / w.sum()
            move, z = np.linalg.norm(new - z), new
            if move <= agg.tol * max(1.0, np.linalg.norm(z)):
                break
        return z.astype(np.float32)
    assert agg.rule == "centered_clip"
    v = np.zeros(rows.shape[1]) if center is None else center.astype(np.float64)
    for _ in range(agg.iters):
        diff = x - v
        r = np.linalg.norm(diff, axis=1)
        clip = np.minimum(1.0, agg.tau / np.maximum(r, 1e-300))
        v = v + (diff * clip[:, None]).mean(axis=0)
    return v.astype(np.float32)


def _check_close(rule: str, out: np.ndarray, ref: np.ndarray) -> None:
    if rule in ("geometric_median", "centered_clip"):  # float64 iterations, other order
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    else:  # the same arithmetic: the same bits
        np.testing.assert_array_equal(out, ref)


# (rows, columns, members): P a multiple of nothing, P = 1, P across blocks of 4096,
# strict subsets of members (the other rows hold NaN: they must not be read).
SHAPES = [(5, 37, None), (7, 9001, [0, 2, 3, 5, 6]), (6, 4100, None), (9, 1, [1, 2, 4, 6, 7, 8])]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n, size, members", SHAPES)
def test_rule_matches_its_numpy_reference(rule, n, size, members):
    agg = RECORDS[rule]
    rows = _rows(n, size, seed=n * size)
    if members is not None:
        others = np.setdiff1d(np.arange(n), members)
        rows[others] = np.nan
    chosen = np.arange(n) if members is None else np.array(members)
    out = aggregate_rows(agg, rows, chosen)
    _check_close(rule, out, _reference(agg, rows, chosen))
    if rule == "mean" and members is None:
        expected = np.empty(size, np.float32)
        mean_rows_into(rows, expected, 0, size)
        np.testing.assert_array_equal(out, expected)


def test_centered_clip_starts_from_the_previous_aggregate():
    agg = RECORDS["centered_clip"]
    first, second = _rows(5, 300, seed=1), _rows(5, 300, seed=2) + 0.5
    arrays = {name: np.zeros(s, d) for name, (s, d) in agg.arrays(5, 300).items()}
    worker = AggregatorWorker(agg, arrays, 0, 300, threading.Barrier(1))
    out1, out2 = np.empty(300, np.float32), np.empty(300, np.float32)
    worker.reduce(first, np.arange(5), out1)
    np.testing.assert_array_equal(arrays["aggregate_center"], out1)
    worker.reduce(second, np.arange(5), out2)
    np.testing.assert_array_equal(arrays["aggregate_center"], out2)
    ref1 = _reference(agg, first, range(5))
    np.testing.assert_allclose(out2, _reference(agg, second, range(5), ref1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out2, _reference(agg, second, range(5)), atol=1e-3)  # not from 0


# ------------------------------------------------------------------ ties and bounds


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
@pytest.mark.parametrize("n", [4, 5])
def test_coordinate_rules_with_tied_values(rule, n):
    rng = np.random.default_rng(n)
    rows = rng.integers(-1, 2, (n, 203)).astype(np.float32)  # three values: many ties
    agg = median() if rule == "median" else trimmed_mean(trim=1)
    np.testing.assert_array_equal(aggregate_rows(agg, rows), _reference(agg, rows, range(n)))


def _tied_rows() -> np.ndarray:
    """Rows 2 and 4 (+-0.5 e_4) tie for the best Krum score with f=1 (0.25 + 1 + ...:
    every distance exact); the one-hot rows 0, 1, 3 tie behind them."""
    rows = np.zeros((5, 5), np.float32)
    rows[0, 0] = rows[1, 1] = rows[3, 2] = 1.0
    rows[2, 4], rows[4, 4] = 0.5, -0.5
    return rows


@pytest.mark.parametrize(
    "agg, chosen",
    [(krum(f=1), [2]), (multi_krum(f=1, m=1), [2]), (multi_krum(f=1, m=2), [2, 4])]
    + [(multi_krum(f=1, m=3), [0, 2, 4]), (multi_krum(f=1, m=4), [0, 1, 2, 4])],
)
def test_krum_breaks_equal_scores_by_the_lower_row(agg, chosen):
    rows = _tied_rows()
    expected = rows[chosen].astype(np.float64).mean(axis=0).astype(np.float32)
    np.testing.assert_array_equal(aggregate_rows(agg, rows), expected)
    np.testing.assert_array_equal(aggregate_rows(agg, rows), _reference(agg, rows, range(5)))


def _one_line_config_error(call, *words):
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("n", [3, 5, 6])
def test_trim_at_its_bound(n):
    rows = _rows(n, 50, seed=n)
    bound = (n - 1) // 2  # the largest trim with 2 * trim < n
    out = aggregate_rows(trimmed_mean(trim=bound), rows)
    np.testing.assert_array_equal(out, _reference(trimmed_mean(trim=bound), rows, range(n)))
    if n % 2:  # 2 * trim = n - 1: only the middle value is left, the median
        np.testing.assert_array_equal(out, aggregate_rows(median(), rows))
    refused = trimmed_mean(trim=bound + 1)
    _one_line_config_error(lambda: refused.check(n), "trim=", "2 * trim <")
    _one_line_config_error(lambda: aggregate_rows(refused, rows), "trim=")
    # trim null means f
    _one_line_config_error(lambda: trimmed_mean(f=bound + 1).check(n), "trim", "null: f")
    trimmed_mean(f=bound).check(n)


@pytest.mark.parametrize("rule", ["krum", "multi_krum"])
@pytest.mark.parametrize("f", [0, 1, 2])
def test_krum_needs_2f_plus_3_rows(rule, f):
    agg = Aggregate(rule=rule, f=f)
    n = 2 * f + 3
    agg.check(n)
    rows = _rows(n + 1, 20, seed=f)
    out = aggregate_rows(agg, rows, np.arange(n))
    np.testing.assert_array_equal(out, _reference(agg, rows, range(n)))
    _one_line_config_error(lambda: agg.check(n - 1), f"f={f}", f"{n} rows", f"got {n - 1}")
    # fewer members than the rule needs, at the call
    _one_line_config_error(lambda: aggregate_rows(agg, rows, np.arange(n - 1)), f"f={f}")


def test_multi_krum_m_within_1_and_n_minus_f():
    rows = _rows(7, 30, seed=3)
    for m in (1, 5):  # n - f = 5
        agg = multi_krum(f=2, m=m)
        np.testing.assert_array_equal(aggregate_rows(agg, rows), _reference(agg, rows, range(7)))
    _one_line_config_error(lambda: multi_krum(f=2, m=6).check(7), "aggregate.m=6", "n - f = 5")
    _one_line_config_error(lambda: multi_krum(m=0), "aggregate.m")


@pytest.mark.parametrize(
    "build, setting",
    [
        (lambda: trimmed_mean(trim=-1), "aggregate.trim"),
        (lambda: trimmed_mean(trim=1.5), "aggregate.trim"),
        (lambda: trimmed_mean(f=-1), "aggregate.f"),
        (lambda: krum(f=True), "aggregate.f"),
        (lambda: multi_krum(f=1, m=0), "aggregate.m"),
        (lambda: geometric_median(tol=0.0), "aggregate.tol"),
        (lambda: geometric_median(tol=float("nan")), "aggregate.tol"),
        (lambda: geometric_median(tol="small"), "aggregate.tol"),
        (lambda: geometric_median(max_iter=0), "aggregate.max_iter"),
        (lambda: centered_clip(tau=-1.0), "aggregate.tau"),
        (lambda: centered_clip(iters=0), "aggregate.iters"),
        (lambda: Aggregate(rule="mode").check(5), "aggregate.rule"),
        (lambda: Aggregate(rule="centered_clip", tau=0.0).check(5), "aggregate.tau"),
        (lambda: Aggregate(rule="median").check(0), "at least one row"),
    ],
)
def test_bad_settings_are_refused_in_one_line(build, setting):
    _one_line_config_error(build, setting)


def test_factories_take_exactly_their_rules_options():
    expected = {
        mean: {},
        median: {},
        trimmed_mean: {"trim": None, "f": 1},
        krum: {"f": 1},
        multi_krum: {"f": 1, "m": None},
        geometric_median: {"tol": 1e-6, "max_iter": 100},
        centered_clip: {"tau": 1.0, "iters": 3},
    }
    for factory, options in expected.items():
        params = inspect.signature(factory).parameters
        assert {k: p.default for k, p in params.items()} == options, factory.__name__
        record = factory()
        assert record.rule == factory.__name__
        assert pickle.loads(pickle.dumps(record)) == record
        for name, value in options.items():
            assert getattr(record, name) == value


def test_the_rules_arrays_and_kinds():
    size, workers = 10_000, 6
    for rule in RULES:
        agg = Aggregate(rule=rule)
        arrays = agg.arrays(workers, size)
        assert all(name.startswith("aggregate_") for name in arrays)
        assert agg.uses_distances == (rule in DISTANCE) == bool(arrays)
        assert agg.coordinate_wise == (rule in ("median", "trimmed_mean"))
        assert agg.linear == (rule == "mean")
        assert agg.checkpointed == (("aggregate_center",) if rule == "centered_clip" else ())
        assert set(agg.checkpointed) <= set(arrays)
    blocks = -(-size // aggregators.DISTANCE_BLOCK)
    assert Aggregate(rule="krum").arrays(workers, size)["aggregate_partials"][0] == (2, blocks, 15)
    center = Aggregate(rule="centered_clip").arrays(workers, size)["aggregate_center"]
    assert center == ((size,), np.dtype(np.float32))


# ------------------------------------------------------------------ hostile values


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_refused_in_one_line(rule, value):
    rows = _rows(6, 5000, seed=4)
    rows[3, 4321] = value  # a trimming rule would drop an inf: refused all the same
    rows[0, 17] = np.nan  # row 0 does not take part
    members = np.array([1, 2, 3, 4, 5])
    with pytest.raises(DivergenceError) as info:
        aggregate_rows(RECORDS[rule], rows, members)
    message = str(info.value)
    assert "\n" not in message and f"aggregate={rule}: row 3 " in message, message
    rows[3, 4321] = 1.0  # the same rows without it are fine
    assert np.isfinite(aggregate_rows(RECORDS[rule], rows, members)).all()


def test_a_non_finite_centre_is_named():
    agg = RECORDS["centered_clip"]
    arrays = {name: np.zeros(s, d) for name, (s, d) in agg.arrays(5, 100).items()}
    arrays["aggregate_center"][7] = np.inf
    worker = AggregatorWorker(agg, arrays, 0, 100, threading.Barrier(1))
    with pytest.raises(DivergenceError, match="aggregate_center"):
        worker.reduce(_rows(5, 100, seed=5), np.arange(5), np.empty(100, np.float32))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n", [5, 8])
def test_equal_rows_give_that_row_exactly(rule, n):
    rng = np.random.default_rng(n)
    row = (rng.standard_normal(777) * 10.0 ** rng.integers(-30, 30, 777)).astype(np.float32)
    rows = np.tile(row, (n, 1))
    agg = RECORDS[rule]
    if rule == "centered_clip":  # from 0, within tau: the first step reaches the row
        agg = centered_clip(tau=float(np.linalg.norm(row.astype(np.float64))) * 2, iters=3)
    out = aggregate_rows(agg, rows)
    if rule == "mean":  # bitwise mean_rows_into: its float32 running sum rounds 3x, 5x...
        np.testing.assert_array_max_ulp(out, row, maxulp=2)
    else:
        np.testing.assert_array_equal(out, row)


@pytest.mark.parametrize("rule", ["krum", "multi_krum", "median", "geometric_median"])
def test_robust_rules_keep_to_the_honest_cluster(rule):
    rng = np.random.default_rng(6)
    point = rng.standard_normal(300).astype(np.float32)
    rows = point + 0.01 * rng.standard_normal((7, 300)).astype(np.float32)
    honest = [0, 2, 3, 5, 6]
    rows[[1, 4]] = point + 100.0  # two attackers, far away
    agg = Aggregate(rule=rule, f=2)  # n = 7 = 2f + 3
    out = aggregate_rows(agg, rows)
    if rule == "krum":
        assert any(np.array_equal(out, rows[i]) for i in honest)
    if rule == "multi_krum":  # m = n - f = 5: exactly the honest rows
        expected = rows[honest].astype(np.float64).mean(axis=0).astype(np.float32)
        np.testing.assert_array_equal(out, expected)
    assert np.abs(out - point).max() < 0.1
    assert np.abs(aggregate_rows(mean(), rows) - point).min() > 20  # the mean does not


def test_weiszfeld_survives_landing_on_a_row():
    # The mean is exactly row 0, so the first distance is exactly 0: the guard, not 1/0.
    rows = np.array([[0, 0, 0], [1, 0, 2], [-1, 0, -2], [0, 1, 0], [0, -1, 0]], np.float32)
    out = aggregate_rows(geometric_median(), rows)
    np.testing.assert_array_equal(out, rows[0])


# ------------------------------------------------------------------ the collective


def _collective(agg, calls, members, threads):
    """Each of ``threads`` workers reduces its slice_bounds slice of every call's rows
    (a barrier between calls, like the caller's meeting); (outputs, errors)."""
    n, size = calls[0].shape
    arrays = {name: np.zeros(s, d) for name, (s, d) in agg.arrays(n, size).items()}
    outs = [np.full(size, np.nan, np.float32) for _ in calls]
    barrier = threading.Barrier(threads, timeout=60)
    errors: list = [None] * threads

    def work(rank):
        lo, hi = slice_bounds(size, threads, rank)
        worker = AggregatorWorker(agg, arrays, lo, hi, barrier)
        try:
            for rows, out in zip(calls, outs):
                worker.reduce(rows, members, out)
                barrier.wait()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            errors[rank] = exc

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not any(t.is_alive() for t in pool), "a worker never returned"
    return outs, errors


@pytest.mark.parametrize("rule", RULES)
def test_threaded_collective_is_bitwise_the_same_for_any_worker_count(rule):
    # 9001 columns: the slices of 2 and 3 workers cut the distance blocks of 4096.
    calls = [_rows(7, 9001, seed=7), _rows(7, 9001, seed=8)]
    calls[0][5] *= 30.0  # an outlier for the robust rules to deal with
    members = np.array([0, 1, 2, 3, 5, 6])
    agg = RECORDS[rule]
    results = []
    for threads in (1, 2, 3):
        outs, errors = _collective(agg, calls, members, threads)
        assert errors == [None] * threads
        results.append(outs)
    np.testing.assert_array_equal(results[0][0], aggregate_rows(agg, calls[0], members))
    for outs in results[1:]:
        for got, expected in zip(outs, results[0]):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("rule", DISTANCE)
def test_a_non_finite_value_stops_every_worker_of_a_distance_rule(rule):
    rows = _rows(5, 9001, seed=9)
    rows[2, 8500] = np.nan  # in the last block: one worker's columns only
    _, errors = _collective(RECORDS[rule], [rows], np.arange(5), threads=3)
    messages = {str(e) for e in errors}
    assert all(isinstance(e, DivergenceError) for e in errors), errors
    assert len(messages) == 1 and "row 2 " in messages.pop()
