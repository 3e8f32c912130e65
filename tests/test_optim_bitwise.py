"""The fused optimizer kernels do exactly the float32 operations they state, in that
order: bitwise equal to a NumPy transcription, for ``update`` and ``update_from_mean``,
over slices that cut blocks (:mod:`fastdist.optim.blocked`) anywhere. Elementwise float32
arithmetic and sqrt are correctly rounded on every IEEE machine, so this holds anywhere
(the optax tests in test_optimizers.py allow a relative error instead)."""

from __future__ import annotations

import numpy as np
import pytest

from fastdist.optim.adagrad import adagrad_update, adagrad_update_from_mean
from fastdist.optim.adamw import adamw_update, adamw_update_from_mean
from fastdist.optim.blocked import BLOCK
from fastdist.optim.lion import lion_update, lion_update_from_mean
from fastdist.optim.sgd import sgd_update, sgd_update_from_mean

f32 = np.float32
ONE = f32(1.0)
P = 2 * BLOCK + 1808  # two full blocks and a remainder
# Slices as workers get them: bounds inside blocks, a slice shorter than a block.
SLICES = ((0, 4112), (4112, 9000), (9000, P))


def _mean(rows: np.ndarray) -> np.ndarray:
    """block_mean's order: the first row, then each next row added, then * (1/n)."""
    acc = rows[0].copy()
    for row in rows[1:]:
        acc += row
    acc *= ONE / f32(rows.shape[0])
    return acc


def _sgd(p, states, g, lr, mu, wd, nesterov, scale):
    (m,) = states
    if nesterov:
        d = scale * g + wd * p
        m[:] = mu * m + d
        p -= lr * (d + mu * m)
    else:
        m[:] = mu * m + (scale * g + wd * p)
        p -= lr * m


def _adamw(p, states, g, lr, b1, b2, eps, wd, c1, c2, scale):
    m, v = states
    gi = scale * g
    m[:] = b1 * m + (ONE - b1) * gi
    v[:] = b2 * v + (ONE - b2) * (gi * gi)
    p -= lr * ((m * c1) / (np.sqrt(v * c2) + eps) + wd * p)


def _lion(p, states, g, lr, b1, b2, wd, scale):
    (m,) = states
    gi = scale * g
    c = b1 * m + (ONE - b1) * gi
    p -= lr * (np.sign(c) + wd * p)
    m[:] = b2 * m + (ONE - b2) * gi


def _adagrad(p, states, g, lr, initial, eps, wd, scale):
    (s,) = states
    gi = scale * g + wd * p
    s += gi * gi
    p -= lr * gi / np.sqrt(s + initial + eps)


# name: (update, update_from_mean, NumPy oracle, states, hyperparameters before scale)
CASES = {
    "sgd": (sgd_update, sgd_update_from_mean, _sgd, 1, (f32(0.05), f32(0.9), f32(1e-3), False)),
    "sgd nesterov": (
        sgd_update, sgd_update_from_mean, _sgd, 1, (f32(0.05), f32(0.8), f32(2e-3), True)
    ),
    "adamw": (
        adamw_update, adamw_update_from_mean, _adamw, 2,
        (f32(1e-3), f32(0.9), f32(0.99), f32(1e-8), f32(0.05), f32(10.0), f32(100.0)),
    ),
    "lion": (
        lion_update, lion_update_from_mean, _lion, 1, (f32(3e-4), f32(0.9), f32(0.99), f32(0.1))
    ),
    "adagrad": (
        adagrad_update, adagrad_update_from_mean, _adagrad, 1,
        (f32(0.05), f32(0.1), f32(1e-7), f32(1e-3)),
    ),
}  # fmt: skip


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32)


@pytest.mark.parametrize("rows", [None, 1, 2, 3], ids=["own", "mean1", "mean2", "mean3"])
@pytest.mark.parametrize("case", CASES)
def test_kernel_is_bitwise_its_numpy_transcription(case, rows):
    update, update_from_mean, oracle, n_states, hyper = CASES[case]
    rng = np.random.default_rng(len(case) + (rows or 0))
    p = rng.standard_normal(P).astype(f32)
    states = [np.zeros(P, f32) for _ in range(n_states)]
    want_p, want_states = p.copy(), [s.copy() for s in states]
    for step in range(3):
        scale = f32(1.0) if step == 0 else f32(0.7)
        grads = rng.standard_normal((rows or 1, P)).astype(f32)
        for lo, hi in SLICES:
            if rows is None:
                update(p, *states, grads[0], *hyper, scale, lo, hi)
            else:
                update_from_mean(p, *states, grads, *hyper, scale, lo, hi)
        g = grads[0] if rows is None else _mean(grads)
        oracle(want_p, want_states, g, *hyper, scale)
        np.testing.assert_array_equal(_bits(p), _bits(want_p))
        for got, want in zip(states, want_states):
            np.testing.assert_array_equal(_bits(got), _bits(want))


def test_lion_sign_of_zero_is_zero():
    """sign(0) = 0 (optax): a zero gradient on a zero momentum moves nothing."""
    p, m = np.ones(10, f32), np.zeros(10, f32)
    lion_update(p, m, np.zeros(10, f32), f32(0.1), f32(0.9), f32(0.99), f32(0.0), ONE, 0, 10)
    np.testing.assert_array_equal(p, np.ones(10, f32))


def test_the_drivers_leave_their_callers_cacheable():
    """A kernel passed through a compiled (not inlined) driver makes the caller hold a
    dynamic global, and Numba then refuses ``cache=True`` (it recompiles in every
    worker). The drivers are inlined so that this does not happen."""
    compiled = []
    for update, update_from_mean, _, n_states, hyper in CASES.values():
        p, states = np.zeros(8, f32), [np.zeros(8, f32) for _ in range(n_states)]
        update(p, *states, np.ones(8, f32), *hyper, ONE, 0, 8)
        update_from_mean(p, *states, np.ones((2, 8), f32), *hyper, ONE, 0, 8)
        compiled += [*update.overloads.values(), *update_from_mean.overloads.values()]
    assert not any(getattr(c.library, "has_dynamic_globals", False) for c in compiled)
