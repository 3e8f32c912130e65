"""Compressed exchange (fastdist.combiners.compression): the element-wise compressors'
rounding against independent oracles, error feedback's bookkeeping, randk's shared
coordinates, the byte counts, and PowerSGD, whose threaded collective must equal the
one-process reference bitwise."""

from __future__ import annotations

import inspect
import pickle
import threading

import numpy as np
import pytest

from fastdist.combiners import compression as C
from fastdist.combiners import powersgd as P
from fastdist.engine.allreduce import mean_rows_into, slice_bounds
from fastdist.errors import ConfigError
from fastdist.models.base import FlatLayout

EPS32 = 2.0**-24  # float32's unit roundoff


def _compressed(comp, x, residual=None, seed=0, step=0):
    """A copy of ``x`` as ``comp`` sends it."""
    row = np.array(x, np.float32)
    C.compress_row(comp, row, residual, seed, step)
    return row


def _spread(n: int, seed: int = 0) -> np.ndarray:
    """Values over many binades, both signs (float32)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * np.exp2(rng.uniform(-30, 14, n))).astype(np.float32)


# The record and its factories ---------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: C.topk(ratio=0), "compress.ratio must be in (0, 1], got 0"),
        (lambda: C.randk(ratio=1.5), "compress.ratio must be in (0, 1], got 1.5"),
        (lambda: C.topk(ratio=float("nan")), "compress.ratio must be in (0, 1], got nan"),
        (lambda: C.powersgd(rank=0), "compress.rank must be an integer >= 1, got 0"),
        (lambda: C.int8(chunk=0), "compress.chunk must be an integer >= 1, got 0"),
        (lambda: C.Compression("zip"), "compress must be one of none, fp16"),
    ],
)
def test_bad_settings_are_one_line_config_errors(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("none", []),
        ("fp16", ["error_feedback"]),
        ("bf16", ["error_feedback"]),
        ("int8", ["error_feedback", "chunk"]),
        ("topk", ["ratio", "error_feedback"]),
        ("randk", ["ratio", "error_feedback"]),
        ("powersgd", ["rank", "error_feedback"]),
    ],
)
def test_each_factory_takes_exactly_its_kinds_options(kind, options):
    factory = getattr(C, kind)
    assert list(inspect.signature(factory).parameters) == options
    comp = factory()
    assert comp.kind == kind and kind in C.KINDS
    assert pickle.loads(pickle.dumps(comp)) == comp
    assert comp.is_collective == (kind == "powersgd")


def test_none_has_nothing_to_feed_back():
    comp = C.Compression("none", error_feedback=True)
    assert not comp.error_feedback and comp.arrays(3, 10) == {} and comp.checkpointed == ()
    row = _spread(50)
    assert np.array_equal(_compressed(comp, row), row)


# Element-wise rounding ----------------------------------------------------------------


def test_fp16_is_float16_round_to_nearest_even_and_saturates():
    x = _spread(20000)
    x = x[np.abs(x) < 65504]
    # Ties (normal and subnormal) go to the even neighbour; the edges of the range.
    x[:8] = [1 + 2.0**-11, -1 - 3 * 2.0**-11, 2.0**-25, 3 * 2.0**-26, 0.0, -0.0, 65519, 2.0**-14]
    got = _compressed(C.fp16(), x)
    want = x.astype(np.float16).astype(np.float32)  # NumPy's conversion: the oracle
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # signs of 0 too
    assert got[:4].tolist() == [1.0, -1 - 2.0**-9, 0.0, 2.0**-24]
    normal = np.abs(x) >= 2.0**-14
    assert np.all(np.abs(got - x)[normal] <= 2.0**-11 * np.abs(x[normal]))
    big = np.array([65520.0, 1e6, -1e30, 3.4e38, np.inf, -np.inf, np.nan], np.float32)
    got = _compressed(C.fp16(), big)
    assert got[:4].tolist() == [65504.0, 65504.0, -65504.0, 65504.0]
    assert got[4] == np.inf and got[5] == -np.inf and np.isnan(got[6])


def _bf16_oracle(x: np.ndarray) -> np.ndarray:
    """x rounded to 8 significant bits (bfloat16; float32's exponent range, so its
    subnormals are multiples of 2**-133), ties to even, in float64 arithmetic."""
    x64 = x.astype(np.float64)
    _, e = np.frexp(x64)  # x = f * 2**e, 0.5 <= |f| < 1
    step = np.exp2(np.maximum(e - 8, -133))
    with np.errstate(over="ignore"):
        return (np.rint(x64 / step) * step).astype(np.float32)


def test_bf16_is_round_to_nearest_even_on_the_top_16_bits():
    x = _spread(20000)
    x[:5] = [0.0, -0.0, 1 + 2.0**-8, 1 + 3 * 2.0**-8, np.float32(1e-40)]  # ties, subnormal
    got = _compressed(C.bf16(), x)
    assert np.array_equal(got.view(np.uint32), _bf16_oracle(x).view(np.uint32))
    assert got[2] == 1.0 and got[3] == 1 + 2.0**-6  # ties went to the even neighbour
    normal = np.abs(x) >= 2.0**-126
    assert np.all(np.abs(got - x)[normal] <= 2.0**-8 * np.abs(x[normal]))
    special = np.array([np.nan, np.inf, -np.inf, -np.nan], np.float32)
    got = _compressed(C.bf16(), special)
    assert np.isnan(got[0]) and np.isnan(got[3]) and got[1] == np.inf and got[2] == -np.inf


@pytest.mark.parametrize("chunk", [1, 16, 1000])
def test_int8_error_is_half_a_scale_per_chunk(chunk):
    x = _spread(4100, seed=1)
    x[32:48] = 0.0  # one all-zero chunk when chunk=16
    got = _compressed(C.int8(chunk=chunk), x)
    for start in range(0, x.size, chunk):
        xs, cs = x[start : start + chunk], got[start : start + chunk]
        scale = np.float32(np.abs(xs).max()) / np.float32(127)
        if scale == 0:
            assert np.all(cs == 0)
            continue
        # |x - q*scale| <= scale/2, plus the rounding of x/scale and of q*scale (each
        # 2**-24 relative, |q| <= 127): scale * (1/2 + 254 * 2**-24) <= scale * (1/2 + 2**-16).
        assert np.all(np.abs(cs - xs) <= scale * (0.5 + 2.0**-16))
        q = cs.astype(np.float64) / scale  # what travelled: integers in [-127, 127]
        assert np.all(np.abs(q - np.rint(q)) <= 1e-5) and np.abs(q).max() <= 127 + 1e-5
        assert np.abs(q).max() >= 127 - 1e-5  # the largest value is sent as +-127
    assert np.all(got[32:48] == 0)


def test_int8_rounds_half_to_even():
    x = np.array([127, 0.5, 1.5, 2.5, -2.5, -0.5, 0], np.float32)  # scale 1
    got = _compressed(C.int8(chunk=7), x)
    assert got.tolist() == [127, 0, 2, 2, -2, 0, 0]


def test_topk_keeps_exactly_the_k_largest_magnitudes():
    x = np.random.default_rng(2).permutation(np.arange(1, 201, dtype=np.float32))
    x *= np.where(np.arange(200) % 2, -1, 1).astype(np.float32)
    comp = C.topk(ratio=0.05, error_feedback=False)
    got = _compressed(comp, x)
    keep = np.argsort(-np.abs(x))[:10]
    assert set(np.flatnonzero(got)) == set(keep)
    assert np.array_equal(got[keep], x[keep])  # sent as they are
    ties = np.array([4, 3, 2, 3, -3, 3, 0], np.float32)  # k = 3 of 7: 4 ties for 2 slots
    got = _compressed(C.topk(ratio=0.4, error_feedback=False), ties)
    assert got.tolist() == [4, 3, 0, 3, 0, 0, 0]  # the lowest indices win ties


def test_k_is_the_ceiling_of_ratio_times_size():
    comp = C.topk(ratio=0.1)
    assert [comp.kept(n) for n in (30, 31, 1, 0)] == [3, 4, 1, 0]


# Error feedback -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "comp",
    [C.topk(0.1), C.randk(0.1), C.int8(True, chunk=8), C.fp16(True), C.bf16(True)],
    ids=lambda c: c.kind,
)
def test_error_feedback_sent_plus_residual_is_what_was_produced(comp):
    # Exactly, in float32: a sparsifier either sends a coordinate (residual 0) or not
    # (sent 0); the rounding kinds send a value within a factor 2 of x, or 0, so
    # x - sent is exact (Sterbenz) and so is sent + (x - sent).
    rng = np.random.default_rng(3)
    residual = np.zeros(257, np.float32)
    for step in range(4):
        u = (rng.standard_normal(257) * np.exp2(rng.uniform(-20, 10, 257))).astype(np.float32)
        produced = u + residual  # x = u + e_old, in float32
        sent = u.copy()
        C.compress_row(comp, sent, residual, seed=5, step=step)
        assert np.array_equal(sent + residual, produced)
        assert not np.array_equal(sent, produced)  # something was held back
        if comp.kind in ("topk", "randk"):
            assert np.count_nonzero(sent) == comp.kept(257)


def test_randk_picks_the_same_coordinates_in_every_worker_at_a_step():
    comp = C.randk(ratio=0.1, error_feedback=False)
    rng = np.random.default_rng(4)

    def chosen(seed, step):
        x = rng.uniform(1, 2, 300).astype(np.float32)  # every worker's own nonzero data
        got = _compressed(comp, x, seed=seed, step=step)
        assert np.array_equal(got[got != 0], x[got != 0])  # sent as they are, not rescaled
        return frozenset(np.flatnonzero(got))

    workers = [chosen(7, 3) for _ in range(4)]
    assert len(workers[0]) == 30 and len(set(workers)) == 1
    assert chosen(7, 4) != workers[0] and chosen(8, 3) != workers[0]


# Bytes and arrays ---------------------------------------------------------------------

MLP = FlatLayout((("w1", (784, 100)), ("b1", (100,)), ("w2", (100, 10)), ("b2", (10,))))


@pytest.mark.parametrize(
    ("comp", "expected"),
    [
        (C.none(), 4 * 1000),
        (C.fp16(), 2 * 1000),
        (C.bf16(), 2 * 1000),
        (C.int8(chunk=64), 1000 + 4 * 16),
        (C.topk(ratio=0.01), 8 * 10),
        (C.randk(ratio=0.01), 4 * 10),
        (C.powersgd(rank=4), 4 * 1000),  # no matrices: everything as float32
    ],
    ids=lambda v: getattr(v, "kind", None),
)
def test_bytes_per_vector(comp, expected):
    assert comp.bytes_per_vector(1000) == expected


def test_powersgd_on_an_mlp_sends_twenty_times_less():
    matrices = C.powersgd_matrices(MLP, 4)
    assert matrices == ((0, 784, 100), (78500, 100, 10))
    sent = C.powersgd(rank=4).bytes_per_vector(MLP.size, matrices)
    assert sent == 4 * ((784 + 100) * 4 + 100 + (100 + 10) * 4 + 10) == 16344
    assert 19.4 < 4 * MLP.size / sent < 19.5
    # Where the factors would be larger than the matrix, it is sent as it is.
    assert C.powersgd_matrices(MLP, 50) == ((0, 784, 100),)
    conv = FlatLayout((("k", (8, 3, 5, 5)), ("b", (8,))))
    assert C.powersgd_matrices(conv, 2) == ((0, 8, 75),)


def test_arena_arrays_and_what_a_checkpoint_keeps():
    matrices = ((0, 12, 5), (65, 5, 3))
    comp = C.powersgd(rank=4)
    arrays = comp.arrays(3, 83, matrices)
    r = [4, 3]  # rank, at most min(n, m)
    assert arrays == {
        "compress_residuals": ((3, 83), np.float32),
        "compress_p": ((3, 12 * r[0] + 5 * r[1]), np.float32),
        "compress_q": ((3, 5 * r[0] + 3 * r[1]), np.float32),
        "compress_warm_q": ((3, 5 * r[0] + 3 * r[1]), np.float32),
    }
    assert comp.checkpointed == ("compress_residuals", "compress_warm_q")
    assert C.powersgd(rank=4, error_feedback=False).checkpointed == ("compress_warm_q",)
    assert C.topk().arrays(3, 83) == {"compress_residuals": ((3, 83), np.float32)}
    assert C.int8().arrays(3, 83) == {} and C.int8().checkpointed == ()


# PowerSGD -----------------------------------------------------------------------------

TOY = FlatLayout((("w1", (12, 5)), ("b1", (5,)), ("w2", (5, 3)), ("b2", (3,))))
TOY_MATRICES = ((0, 12, 5), (65, 5, 3))  # both forced, whatever the rank


def _first_q(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, C.POWERSGD_STREAM]).standard_normal(n, dtype=np.float32)


@pytest.mark.parametrize("shape", [(5, 12), (7, 7), (12, 5), (30, 3)])
def test_powersgd_at_full_rank_reproduces_the_mean(shape):
    n, m = shape
    r = min(n, m)
    rows = np.random.default_rng(6).standard_normal((4, n * m)).astype(np.float32)
    est, _ = P.powersgd_rows(C.powersgd(rank=r + 1), ((0, n, m),), rows, seed=9)
    mean = rows.astype(np.float64).mean(0)
    # P_hat P_hat^T mean(M) = mean(M): exact but for float32 rounding. A tall matrix's
    # column space is only known through P = mean(M) Q, stored in float32, so its
    # error grows with P's condition number; a wide or square one's P_hat spans R^n.
    p = mean.reshape(n, m) @ _first_q(9, m * r).reshape(m, r).astype(np.float64)
    kappa = np.linalg.cond(p) if n > m else 1.0
    assert np.abs(est - mean).max() <= 8 * EPS32 * kappa * np.abs(mean).max()


def _threaded(comp, arena, rows, seed):
    """Every worker's reduce in its own thread, as the training loop calls it."""
    workers, size = rows.shape
    barrier = threading.Barrier(workers)
    out = np.full(size, np.nan, np.float32)
    pool = [
        P.PowerSGDWorker(
            comp, TOY_MATRICES, arena, i, *slice_bounds(size, workers, i), barrier, seed
        )
        for i in range(workers)
    ]
    errors = []

    def run(worker):
        try:
            worker.reduce(rows, None, out)
            barrier.wait()  # the caller's barrier before anyone reads all of out
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(w,)) for w in pool]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    return out, pool


@pytest.mark.parametrize("error_feedback", [True, False])
def test_powersgd_threads_equal_the_one_process_reference_bitwise(error_feedback):
    comp, workers, seed = C.powersgd(rank=2, error_feedback=error_feedback), 3, 7
    arena = {
        k: np.zeros(s, d) for k, (s, d) in comp.arrays(workers, TOY.size, TOY_MATRICES).items()
    }
    residuals = np.zeros((workers, TOY.size), np.float32) if error_feedback else None
    rng, q, qs = np.random.default_rng(8), None, []
    for _ in range(3):
        rows = rng.standard_normal((workers, TOY.size)).astype(np.float32)
        before = None if residuals is None else residuals.copy()
        want, q_next = P.powersgd_rows(comp, TOY_MATRICES, rows, residuals, q, seed=seed)
        if q is not None:  # the warm start is used: a fresh Q would give other bits
            again = None if before is None else before.copy()
            fresh, _ = P.powersgd_rows(comp, TOY_MATRICES, rows, again, None, seed=seed)
            assert not np.array_equal(fresh, want)
        q = q_next
        qs.append(q)
        published = rows.copy()
        out, pool = _threaded(comp, arena, published, seed)
        assert np.array_equal(out, want)
        assert all(np.array_equal(row, q) for row in arena["compress_warm_q"])
        # Entries outside the matrices: the plain mean, in row order.
        plain = np.empty(TOY.size, np.float32)
        mean_rows_into(rows, plain, 0, TOY.size)
        for a, b in ((60, 65), (80, 83)):
            assert np.array_equal(out[a:b], plain[a:b])
        if error_feedback:
            assert np.array_equal(arena["compress_residuals"], residuals)
            _check_sent_plus_residual(comp, arena, pool, rows, before)
    assert not np.array_equal(qs[0], qs[1]) and not np.array_equal(qs[1], qs[2])


def _check_sent_plus_residual(comp, arena, pool, rows, before):
    """sent_i + residual_i == M_i = u_i + e_i, to the float32 rounding of the two
    operations that produce them: sent = fl(P_hat Q_i^T), residual = fl(M_i - sent),
    each within 2**-24 of its result (plus float64 noise in this check's own matmul)."""
    fac, _, _ = P._factors(comp, TOY_MATRICES)
    residuals = arena["compress_residuals"]
    for i, worker in enumerate(pool):
        m_i = rows[i] + before[i]
        for off, n, m, r, poff, qoff in fac:
            p_hat = worker.p_hat[poff : poff + n * r].reshape(n, r).astype(np.float64)
            q_i = arena["compress_q"][i, qoff : qoff + m * r].reshape(m, r).astype(np.float64)
            sent = (p_hat @ q_i.T).ravel()
            res = residuals[i, off : off + n * m].astype(np.float64)
            bound = EPS32 * (np.abs(res) + np.abs(sent)) * 1.001 + 1e-12
            assert np.all(np.abs(sent + res - m_i[off : off + n * m]) <= bound)
        assert not residuals[i, 60:65].any() and not residuals[i, 80:].any()  # sent whole


def test_powersgd_first_q_comes_from_the_seed_and_zero_q_starts_again():
    comp = C.powersgd(rank=2, error_feedback=False)
    rows = np.random.default_rng(10).standard_normal((2, TOY.size)).astype(np.float32)
    first, q1 = P.powersgd_rows(comp, TOY_MATRICES, rows, seed=3)
    again, _ = P.powersgd_rows(comp, TOY_MATRICES, rows, q=np.zeros_like(q1), seed=3)
    other, _ = P.powersgd_rows(comp, TOY_MATRICES, rows, seed=4)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    # The same Q in every worker: P_i = M_i Q with Q = the seed's standard normal draw.
    arena = {k: np.zeros(s, d) for k, (s, d) in comp.arrays(2, TOY.size, TOY_MATRICES).items()}
    _threaded(comp, arena, rows.copy(), 3)
    q0 = _first_q(3, q1.size).astype(np.float64)
    for i in range(2):
        m_1 = rows[i, :60].reshape(12, 5).astype(np.float64)
        p_1 = arena["compress_p"][i, :24].reshape(12, 2)
        assert np.allclose(p_1, m_1 @ q0[:10].reshape(5, 2), rtol=1e-6, atol=1e-6)


def test_compress_row_refuses_the_collective():
    with pytest.raises(ValueError, match="collective"):
        C.compress_row(C.powersgd(), np.zeros(4, np.float32), None, 0, 0)
    assert C.powersgd(rank=3).matrix_rank(2, 9) == 2
