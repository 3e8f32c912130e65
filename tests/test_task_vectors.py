"""Task-vector merges (fastdist.combiners.task_vectors) against straightforward,
loop-based NumPy re-implementations of the papers' equations, their limiting cases,
their one-line refusals, validation-split selection, and one real run."""

from __future__ import annotations

import math
import re
import sys
from fractions import Fraction

import numpy as np
import pytest
from conftest import small_run

import fastdist
from fastdist.combiners import REGISTRY, FinalizeInputs
from fastdist.combiners.task_vectors import (
    DENSITY_GRID,
    SCALE_GRID,
    dare,
    dare_drop,
    dare_merge,
    model_stock,
    model_stock_merge,
    slerp,
    slerp_merge,
    task_arithmetic,
    task_arithmetic_merge,
    ties,
    ties_merge,
)
from fastdist.errors import ConfigError
from fastdist.models.kernels.reference_mlp import forward_logits
from fastdist.models.mlp import MLP

NAMES = ("task_arithmetic", "ties", "dare", "dare_ties", "slerp", "model_stock")


def _random(n: int, p: int, seed: int = 0, spread: float = 0.3):
    """A base and ``n`` rows near it whose task vectors share a direction (cos > 0)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(p).astype(np.float32)
    common = rng.standard_normal(p)
    rows = base + common + spread * rng.standard_normal((n, p))
    return base, rows.astype(np.float32)


# ---------------------------------------------------------------- reference equations


def ref_task_arithmetic(base, rows, scale):
    """Ilharco et al. 2023: theta = theta_pre + lambda * sum_t tau_t."""
    total = np.zeros(len(base))
    for row in rows:
        total += row.astype(float) - base.astype(float)
    return base.astype(float) + scale * total


def ref_trim(tau, density, segments):
    """Keep the top-density entries by magnitude, ceil(density * n) of each n in exact
    arithmetic (the paper's code resets int(n * (1 - density)), the same count but for
    rounding: 60 * (1 - 0.55) is 26.999...); equal magnitudes: lower index first."""
    out = np.zeros(len(tau))
    for start, stop in segments:
        n = stop - start
        kept = math.ceil(Fraction(str(density)) * n)
        order = sorted(range(start, stop), key=lambda i: (-abs(tau[i]), i))
        for i in order[:kept]:
            out[i] = tau[i]
    return out


def ref_elect_disjoint_mean(trimmed):
    """Yadav et al. 2023, Algorithm 1, steps 2-3, coordinate by coordinate."""
    merged = np.zeros(len(trimmed[0]))
    for i in range(len(merged)):
        gamma = np.sign(sum(t[i] for t in trimmed))
        agreeing = [t[i] for t in trimmed if t[i] != 0 and np.sign(t[i]) == gamma]
        merged[i] = sum(agreeing) / len(agreeing) if agreeing else 0.0
    return merged


def ref_ties(base, rows, density, scale, segments=None):
    segments = segments or [(0, len(base))]
    taus = [row.astype(float) - base.astype(float) for row in rows]
    trimmed = [ref_trim(tau, density, segments) for tau in taus]
    return base.astype(float) + scale * ref_elect_disjoint_mean(trimmed)


def ref_model_stock(base, rows, segments):
    """Jang et al. 2024: per layer, t = N cos / (1 + (N-1) cos) from the mean pairwise
    cosine of the fine-tunes' task vectors; theta = t * mean(theta_k) + (1 - t) * base."""
    n = len(rows)
    out = np.empty(len(base))
    for start, stop in segments:
        b = base[start:stop].astype(float)
        taus = [row[start:stop].astype(float) - b for row in rows]
        cosines = []
        for i in range(n):
            for j in range(i + 1, n):
                cosines.append(
                    taus[i] @ taus[j] / (np.linalg.norm(taus[i]) * np.linalg.norm(taus[j]))
                )
        cos = sum(cosines) / len(cosines)
        t = n * cos / (1 + (n - 1) * cos)
        mean = sum(row[start:stop].astype(float) for row in rows) / n
        out[start:stop] = t * mean + (1 - t) * b
    return out


SEGMENTS = [(0, 24), (24, 30), (30, 48), (48, 51), (51, 60)]


# ---------------------------------------------------------------- the equations


@pytest.mark.parametrize("scale", [0.4, 1.0, -0.5])
def test_task_arithmetic_is_base_plus_scaled_sum_of_task_vectors(scale):
    base, rows = _random(5, 60)
    merged = task_arithmetic_merge(base, rows, scale)
    assert merged.dtype == np.float32
    np.testing.assert_allclose(merged, ref_task_arithmetic(base, rows, scale), rtol=1e-6, atol=1e-6)
    # the sum, not the mean: scale 1/N is the plain average of the rows
    mean = rows.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(task_arithmetic_merge(base, rows, 1 / 5), mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("density", [0.1, 0.2, 0.3, 0.55, 1.0])
@pytest.mark.parametrize("segments", [None, SEGMENTS], ids=["global", "per_tensor"])
def test_ties_matches_the_papers_algorithm(density, segments):
    rng = np.random.default_rng(3)
    base = rng.standard_normal(60).astype(np.float32)
    rows = (base + rng.standard_normal((4, 60))).astype(np.float32)  # signs disagree
    for scale in (1.0, 0.7):
        merged = ties_merge(base, rows, density, scale, segments)
        expected = ref_ties(base, rows, density, scale, segments)
        np.testing.assert_allclose(merged, expected, rtol=1e-6, atol=1e-6)


def test_ties_trim_breaks_equal_magnitudes_by_index():
    base = np.zeros(6, dtype=np.float32)
    rows = np.array([[1, -1, 1, -1, 0.5, 2]], dtype=np.float32)
    # ceil(0.5 * 6) = 3 kept: 2 (index 5), then the first two of the four 1s (0 and 1)
    np.testing.assert_array_equal(ties_merge(base, rows, 0.5), [1, -1, 0, 0, 0, 2])


def test_ties_with_density_1_and_agreeing_signs_is_the_mean_task_vector():
    rng = np.random.default_rng(4)
    base = rng.standard_normal(50).astype(np.float32)
    signs = rng.choice([-1.0, 1.0], 50)
    rows = (base + signs * rng.uniform(0.1, 1.0, (3, 50))).astype(np.float32)
    mean = rows.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(ties_merge(base, rows, density=1.0), mean, rtol=1e-6, atol=1e-6)


def test_dare_without_dropping_is_task_arithmetic():
    base, rows = _random(3, 40)
    np.testing.assert_array_equal(
        dare_merge(base, rows, drop=0.0, scale=0.4), task_arithmetic_merge(base, rows, 0.4)
    )
    np.testing.assert_array_equal(
        dare_merge(base, rows, drop=0.0, merge="ties", density=0.3),
        ties_merge(base, rows, density=0.3),
    )


def test_dare_drops_at_rate_p_rescales_and_is_reproducible_from_its_seed():
    base, rows = _random(3, 4000)
    tau = rows.astype(np.float64) - base
    a, b = dare_drop(tau, 0.7, seed=11), dare_drop(tau, 0.7, seed=11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, dare_drop(tau, 0.7, seed=12))
    assert not np.array_equal(a[0] != 0, a[1] != 0)  # each row its own mask
    kept = a != 0
    assert abs(kept.mean() - 0.3) < 0.02
    np.testing.assert_allclose(a[kept], tau[kept] / 0.3)  # survivors scaled by 1/(1-p)
    # The merge itself: DARE's vectors, then the reference merges of the papers.
    np.testing.assert_allclose(
        dare_merge(base, rows, 0.7, seed=11, scale=0.4),
        ref_task_arithmetic(base, (base + a).astype(np.float64), 0.4),
        rtol=1e-6,
        atol=1e-5,
    )
    expected = base + ref_elect_disjoint_mean([ref_trim(t, 0.5, [(0, 4000)]) for t in a])
    np.testing.assert_allclose(
        dare_merge(base, rows, 0.7, seed=11, merge="ties", density=0.5),
        expected,
        rtol=1e-6,
        atol=1e-5,
    )


def test_dare_is_unbiased():
    """E[dropped and rescaled tau] = tau: averaged over seeds, DARE + task arithmetic
    approaches plain task arithmetic (per entry, the mean of S draws has standard
    deviation |tau| sqrt(p / (1 - p) / S))."""
    base, rows = _random(2, 30)
    seeds = 3000
    mean = sum(
        dare_merge(base, rows, 0.5, seed=s, scale=1.0).astype(np.float64) for s in range(seeds)
    )
    mean /= seeds
    tau = rows.astype(np.float64) - base
    sd = np.sqrt((tau**2).sum(axis=0) / seeds)  # p = 0.5, two independent rows
    assert np.all(np.abs(mean - task_arithmetic_merge(base, rows, 1.0)) < 5 * sd + 1e-5)


def test_slerp_is_exact_at_the_endpoints():
    _, rows = _random(2, 60, spread=1.0)
    for segments in (None, SEGMENTS):
        np.testing.assert_array_equal(slerp_merge(rows[0], rows[1], 0.0, segments), rows[0])
        np.testing.assert_array_equal(slerp_merge(rows[0], rows[1], 1.0, segments), rows[1])


def test_slerp_of_orthogonal_equal_norm_vectors_stays_on_the_sphere():
    a = np.zeros(8, dtype=np.float32)
    b = np.zeros(8, dtype=np.float32)
    a[:4], b[4:] = 3.0, [3.0, -3.0, 3.0, -3.0]  # orthogonal, both of norm 6
    for t in np.linspace(0, 1, 11):
        r = slerp_merge(a, b, t).astype(np.float64)
        assert np.linalg.norm(r) == pytest.approx(6.0, rel=1e-6)
        angle = math.acos(np.clip(r @ a / (6.0 * 6.0), -1, 1))
        assert angle == pytest.approx(t * math.pi / 2, abs=1e-6)
    # the plain average would have norm 6 / sqrt(2)
    assert np.linalg.norm(0.5 * (a + b)) == pytest.approx(6 / math.sqrt(2))


def test_slerp_works_tensor_by_tensor_and_lerps_colinear_tensors():
    _, rows = _random(2, 60, spread=1.0)
    a, b = rows
    b[30:48] = 2 * a[30:48]  # one tensor colinear: linear interpolation there
    r = slerp_merge(a, b, 0.3, SEGMENTS)
    for start, stop in SEGMENTS:
        np.testing.assert_array_equal(r[start:stop], slerp_merge(a[start:stop], b[start:stop], 0.3))
    np.testing.assert_allclose(r[30:48], 1.3 * a[30:48], rtol=1e-6)


def test_model_stock_matches_the_papers_equation_per_layer():
    base, rows = _random(4, 60, seed=5, spread=0.8)
    expected = ref_model_stock(base, rows, SEGMENTS)
    np.testing.assert_allclose(
        model_stock_merge(base, rows, SEGMENTS), expected, rtol=1e-6, atol=1e-6
    )
    whole = ref_model_stock(base, rows, [(0, 60)])
    np.testing.assert_allclose(model_stock_merge(base, rows), whole, rtol=1e-6, atol=1e-6)


def test_model_stock_of_identical_fine_tunes_returns_them_and_opposed_ones_the_base():
    base, rows = _random(1, 60)
    same = np.repeat(rows, 3, axis=0)
    np.testing.assert_allclose(model_stock_merge(base, same, SEGMENTS), rows[0], rtol=1e-6)
    opposed = np.stack([rows[0], 2 * base - rows[0]])  # cos = -1: clipped to 0, t = 0
    np.testing.assert_array_equal(model_stock_merge(base, opposed), base)


# ---------------------------------------------------------------- the combiners

MODEL = MLP((4, 6, 3))


def _inputs(rows, base, validation=None, seed=0):
    rows = np.asarray(rows, dtype=np.float32)
    return FinalizeInputs(rows, MODEL, np.ones(len(rows)), (), validation, seed, base=base)


def _layout_segments():
    return [MODEL.layout.bounds(n) for n in MODEL.layout.names]


def test_the_combiners_are_registered_and_finalize_with_the_functions():
    assert set(NAMES) <= set(REGISTRY)
    assert fastdist.combiners.dare_ties().name == "dare_ties"
    base = MODEL.init(0)
    rows = np.stack([MODEL.init(s) for s in (1, 2)])
    inputs = _inputs(rows, base, seed=7)
    cases = {
        "task_arithmetic": task_arithmetic_merge(base, rows, 0.4),
        "ties": ties_merge(base, rows, 0.2, 1.0),
        "dare": dare_merge(base, rows, 0.5, seed=7),
        "dare_ties": dare_merge(base, rows, 0.5, seed=7, merge="ties"),
        "slerp": slerp_merge(rows[0], rows[1], 0.5, _layout_segments()),
        "model_stock": model_stock_merge(base, rows, _layout_segments()),
    }
    for name, expected in cases.items():
        combiner = getattr(fastdist.combiners, name)()
        assert combiner.name == name and not combiner.needs_validation
        np.testing.assert_array_equal(combiner.finalize(inputs).members[0], expected)
    per_tensor = ties(per_tensor=True).finalize(inputs).members[0]
    np.testing.assert_array_equal(per_tensor, ties_merge(base, rows, 0.2, 1.0, _layout_segments()))
    offset = dare(seed_offset=3).finalize(inputs).members[0]
    np.testing.assert_array_equal(offset, dare_merge(base, rows, 0.5, seed=10))


ONE_LINE_REFUSALS = [
    (lambda: ties(density=0), "combiner.density must be in (0, 1]"),
    (lambda: ties(density=1.5), "combiner.density must be in (0, 1]"),
    (lambda: ties(select="val", grid=[0.2, 0]), "combiner.grid must be in (0, 1]"),
    (lambda: dare(drop=1.0), "combiner.drop must be in [0, 1)"),
    (lambda: dare(drop=-0.1), "combiner.drop must be in [0, 1)"),
    (lambda: dare(merge="mean"), "combiner.merge must be 'linear' or 'ties'"),
    (lambda: dare(seed_offset=-1), "combiner.seed_offset must be an integer >= 0"),
    (lambda: slerp(t=1.5), "combiner.t must be in [0, 1]"),
    (lambda: task_arithmetic(scale=float("nan")), "combiner.scale must be a finite number"),
    (lambda: task_arithmetic(select="test"), "combiner.select must be null or 'val'"),
    (lambda: task_arithmetic(grid=[0.5]), "combiner.grid is read only with combiner.select=val"),
    (lambda: ties(init="independent"), "ties merges task vectors from a common base"),
    (lambda: model_stock(init="maybe"), "combiner.init must be 'shared' or 'independent'"),
]


@pytest.mark.parametrize("make, message", ONE_LINE_REFUSALS)
def test_bad_options_are_refused_in_one_line(make, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        make()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare", "dare_ties", "model_stock"])
def test_merging_without_a_common_base_is_refused_in_one_line(name):
    rows = np.stack([MODEL.init(s) for s in (1, 2)])
    with pytest.raises(ConfigError, match=f"{name} merges task vectors from a common base") as e:
        getattr(fastdist.combiners, name)().finalize(_inputs(rows, None))
    assert "have none on record" in str(e.value) and "init=shared or init_from" in str(e.value)
    assert "\n" not in str(e.value)


def test_slerp_needs_two_workers_and_model_stock_two_or_more():
    rows = np.stack([MODEL.init(s) for s in (1, 2, 3)])
    with pytest.raises(ConfigError, match="slerp interpolates exactly 2 workers, got 3"):
        slerp().finalize(_inputs(rows, MODEL.init(0)))
    with pytest.raises(ConfigError, match="model_stock needs at least 2 workers"):
        model_stock().finalize(_inputs(rows[:1], MODEL.init(0)))


def _known_answer_validation(seed=0):
    """A perfect network ``good`` (the labels are its own predictions) and the
    validation split it classifies perfectly."""
    rng = np.random.default_rng(seed)
    good = MODEL.init(1)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    y = forward_logits(MODEL, good, x).argmax(axis=1).astype(np.int32)
    return rng, good, (x, y)


@pytest.mark.parametrize(
    "combiner", [task_arithmetic(select="val"), dare(drop=0.0, select="val")], ids=["ta", "dare"]
)
def test_select_val_picks_the_scale_that_recovers_the_perfect_model(combiner):
    """base + 0.35 * sum(tau) is exactly the perfect model; the base lies far away, so
    every other scale of the grid (0.05 apart) lands far from it."""
    rng, good, validation = _known_answer_validation()
    base = (good + 1000 * rng.standard_normal(good.size)).astype(np.float32)
    direction = (good.astype(np.float64) - base) / 0.35  # sum of the task vectors
    split = rng.standard_normal(good.size)
    rows = np.stack([base + 0.3 * direction + split, base + 0.7 * direction - split])
    assert combiner.needs_validation
    model = combiner.finalize(_inputs(rows, base, validation))
    assert model.info["scale"] == 0.35 and model.info["grid"] == list(SCALE_GRID)
    accuracy = model.info["val_accuracy"]
    assert accuracy[SCALE_GRID.index(0.35)] == 1.0 and sorted(accuracy)[-2] < 1.0
    np.testing.assert_allclose(model.members[0], good, atol=1e-3)


def test_select_val_picks_the_density_that_trims_exactly_the_harm():
    """The task vector moves 16 parameters far (from a distant base to the perfect
    model) and the other 35 a little, harmfully: only density 0.3 (ceil(0.3 * 51) = 16)
    keeps the first and drops the rest."""
    rng, good, validation = _known_answer_validation(1)
    size = good.size
    assert math.ceil(0.3 * size) == 16
    far = rng.choice(size, 16, replace=False)
    base = good.astype(np.float64).copy()
    base[far] -= rng.choice([-1, 1], 16) * rng.uniform(1000, 2000, 16)
    row = good.astype(np.float64) + rng.choice([-1, 1], size) * 50
    row[far] = good[far]
    rows = np.stack([row, row])
    model = ties(select="val").finalize(_inputs(rows, base.astype(np.float32), validation))
    assert model.info["density"] == 0.3 and model.info["grid"] == list(DENSITY_GRID)
    accuracy = model.info["val_accuracy"]
    assert accuracy[DENSITY_GRID.index(0.3)] == 1.0 and sorted(accuracy)[-2] < 1.0
    np.testing.assert_allclose(model.members[0], good, atol=1e-3)


def test_select_val_only_ever_evaluates_the_validation_split(monkeypatch):
    module = sys.modules["fastdist.combiners.task_vectors"]
    real, seen = module.evaluate, []

    def spy(model, layout, x, y):
        seen.append((x is x_val, y is y_val))
        return real(model, layout, x, y)

    monkeypatch.setattr(module, "evaluate", spy)
    _, _, (x_val, y_val) = _known_answer_validation()
    rows = np.stack([MODEL.init(s) for s in (1, 2)])
    for combiner in (task_arithmetic(select="val"), ties(select="val", grid=[0.5, 1.0])):
        combiner.finalize(_inputs(rows, MODEL.init(0), (x_val, y_val)))
    assert len(seen) == len(SCALE_GRID) + 2 and all(a and b for a, b in seen)


def test_a_real_run_merges_the_workers_task_vectors_from_their_shared_start():
    cfg = fastdist.compose(
        small_run(
            "workers=2",
            "epochs=2",
            "combiner=ties",
            "combiner.select=val",
            "validation_fraction=0.2",
        )
    )
    result = fastdist.train(cfg)
    m = result.metrics
    assert m["combiner"] == "ties" and m["combiner_density"] in DENSITY_GRID
    assert m["combiner_grid"] == list(DENSITY_GRID) and m["test_accuracy"] > 0.6
    np.testing.assert_array_equal(result.base, result.model.init(int(cfg.seed)))
    expected = ties_merge(result.base, result.worker_params, m["combiner_density"])
    np.testing.assert_array_equal(result.combined.members[0], expected)


def test_fastdist_combine_merges_saved_fine_tunes_from_their_saved_start(tmp_path):
    from conftest import saved_run_dir

    from fastdist.cli.combine import combine_saved
    from fastdist.combiners.base import CombinedModel
    from fastdist.combiners.evaluate import evaluate
    from fastdist.run.records import build_model
    from fastdist.run.states import STATES_FILE, load_states

    overrides = small_run("workers=2", "steps=10", "combiner=soup_uniform")
    run = saved_run_dir(tmp_path / "run", overrides)
    results = combine_saved(run, ["ties"], overrides=["combiner.density=0.5"])
    cfg = fastdist.compose(overrides)
    data = fastdist.load_dataset(cfg.dataset)
    model = build_model(cfg.model, data.input_shape, data.n_classes)
    states = load_states(run, 2, model.layout.size)
    expected = ties_merge(states["base"], states["worker_params"], 0.5)
    scores = evaluate(CombinedModel((expected,)), model, data.x_test, data.y_test)
    assert results["ties"]["test_accuracy"] == scores["accuracy"]
    # States saved without the start (an older file, independent workers): one line.
    arrays = dict(np.load(run / STATES_FILE))
    del arrays["base_params"]
    np.savez(run / STATES_FILE, **arrays)
    with pytest.raises(ConfigError, match="merges task vectors from a common base"):
        combine_saved(run, ["ties"])


def test_ties_elects_the_majority_sign_where_the_sum_is_exactly_zero():
    base = np.zeros(3, dtype=np.float32)
    rows = np.array([[1.0, 2.0, 3.0], [-1.0, 2.0, 3.0]], dtype=np.float32)
    merged = ties_merge(base, rows, density=1.0)
    np.testing.assert_array_equal(merged, [1.0, 2.0, 3.0])  # +1 wins: the signs' majority


@pytest.mark.parametrize(("name", "workers"), [("slerp", 3), ("model_stock", 1)])
def test_a_worker_count_a_merge_cannot_take_is_refused_before_start_up(name, workers, monkeypatch):
    from fastdist.engine.pool import WorkerPool

    monkeypatch.setattr(WorkerPool, "start", lambda self: 1 / 0)
    with pytest.raises(ConfigError, match=f"{name} .*got {workers}"):
        fastdist.train(fastdist.compose(small_run(f"workers={workers}", f"combiner={name}")))
