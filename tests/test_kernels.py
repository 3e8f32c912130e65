"""Numba kernel against the NumPy reference, and the reference against finite
differences."""

from __future__ import annotations

import numpy as np
import pytest

from fastdist.models.kernels.numba_mlp import NumbaKernel
from fastdist.models.kernels.reference_mlp import forward_logits, loss_and_grad
from fastdist.models.mlp import MLP

SHAPES = [
    ((5, 3), 7),
    ((5, 7, 3), 4),
    ((12, 16, 9, 4), 33),
    ((64, 256, 256, 10), 64),
    ((3, 2), 1),  # batch of one
]


def _batch(rng, layout, n):
    x = rng.standard_normal((n, layout.n_inputs)).astype(np.float32)
    y = rng.integers(0, layout.n_classes, n).astype(np.int32)
    return x, y


@pytest.mark.parametrize(("sizes", "batch"), SHAPES)
def test_numba_matches_reference(sizes, batch):
    rng = np.random.default_rng(sum(sizes) + batch)
    layout = MLP(sizes)
    params = layout.init(1)
    params += 0.01 * rng.standard_normal(layout.size).astype(np.float32)  # non-zero biases
    x, y = _batch(rng, layout, batch)
    loss_ref, grad_ref, correct_ref = loss_and_grad(layout, params, x, y)

    kernel = NumbaKernel(layout, max_batch=batch)
    grad = np.full(layout.size, np.nan, dtype=np.float32)
    loss, correct = kernel.loss_and_grad(params, x, y, grad)

    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert correct == correct_ref
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-6)

    logits = np.empty((batch, layout.n_classes), dtype=np.float32)
    kernel.logits(params, x, logits)
    np.testing.assert_allclose(logits, forward_logits(layout, params, x), rtol=1e-5, atol=1e-5)


def test_zero_inputs_and_smaller_batches_reuse_the_workspace():
    layout = MLP((6, 8, 3))
    params = layout.init(0)
    kernel = NumbaKernel(layout, max_batch=16)
    x = np.zeros((5, 6), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1], dtype=np.int32)
    grad = np.empty(layout.size, dtype=np.float32)
    loss, _ = kernel.loss_and_grad(params, x, y, grad)
    ref_loss, ref_grad, _ = loss_and_grad(layout, params, x, y)
    assert loss == pytest.approx(np.log(3), rel=1e-6) == pytest.approx(ref_loss)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-7)
    # zero rows: defined, zero gradient, zero loss
    loss0, correct0 = kernel.loss_and_grad(params, x[:0], y[:0], grad)
    assert (loss0, correct0) == (0.0, 0)
    assert not grad.any()


def test_predict_in_chunks_larger_than_the_workspace():
    layout = MLP((4, 5, 3))
    params = layout.init(2)
    x = np.random.default_rng(0).standard_normal((23, 4)).astype(np.float32)
    out = np.empty((23, 3), dtype=np.float32)
    NumbaKernel(layout, max_batch=8).logits(params, x, out)
    np.testing.assert_allclose(out, forward_logits(layout, params, x), rtol=1e-5, atol=1e-6)


def test_batch_larger_than_workspace_is_an_error():
    layout = MLP((4, 3))
    kernel = NumbaKernel(layout, max_batch=2)
    with pytest.raises(ValueError, match="exceeds the workspace"):
        kernel.loss_and_grad(
            layout.init(0),
            np.zeros((3, 4), np.float32),
            np.zeros(3, np.int32),
            np.empty(layout.size, np.float32),
        )


def test_reference_gradient_matches_finite_differences():
    layout = MLP((4, 6, 5, 3))
    rng = np.random.default_rng(3)
    params = layout.init(3).astype(np.float64)
    params += 0.1 * rng.standard_normal(layout.size)
    x = rng.standard_normal((9, 4))
    y = rng.integers(0, 3, 9)
    _, grad, _ = loss_and_grad(layout, params, x, y)
    eps = 1e-6
    for i in rng.choice(layout.size, size=40, replace=False):
        bumped = params.copy()
        bumped[i] += eps
        up = loss_and_grad(layout, bumped, x, y)[0]
        bumped[i] -= 2 * eps
        down = loss_and_grad(layout, bumped, x, y)[0]
        assert grad[i] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7)


def test_layout_views_cover_the_vector_exactly_once():
    layout = MLP((5, 7, 3))
    flat = np.arange(layout.size, dtype=np.float32)
    seen = np.concatenate([v.ravel() for v in layout.layout.unflatten(flat).values()])
    np.testing.assert_array_equal(np.sort(seen), flat)
    assert layout.weight(flat, 1).shape == (7, 3)
    assert np.shares_memory(layout.weight(flat, 0), flat)


def test_unknown_backend_is_a_config_error():
    from fastdist.errors import ConfigError

    with pytest.raises(ConfigError, match="no kernel for backend 'cuda'"):
        MLP((4, 3)).kernel("cuda", 8)


def test_reference_backend_is_the_oracle_behind_the_kernel_calls():
    layout = MLP((6, 5, 3))
    rng = np.random.default_rng(4)
    params = layout.init(4)
    x, y = _batch(rng, layout, 7)
    kernel = layout.kernel("reference", 7)
    grad = np.empty(layout.size, np.float32)
    assert kernel.loss_and_grad(params, x, y, grad) == pytest.approx(
        loss_and_grad(layout, params, x, y)[::2]
    )
    np.testing.assert_array_equal(grad, loss_and_grad(layout, params, x, y)[1])
    out = np.empty((7, 3), np.float32)
    kernel.logits(params, x, out)
    np.testing.assert_array_equal(out, forward_logits(layout, params, x))
