"""JAX kernel against the NumPy reference and the Numba kernel; compile-once and
in-place behaviour."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")

from fastdist.errors import ConfigError  # noqa: E402
from fastdist.models.kernels.jax_mlp import (  # noqa: E402
    JaxKernel,
    configure_jax_threads,
    enable_compilation_cache,
)
from fastdist.models.kernels.numba_mlp import NumbaKernel  # noqa: E402
from fastdist.models.kernels.reference_mlp import forward_logits, loss_and_grad  # noqa: E402
from fastdist.models.mlp import MLP  # noqa: E402

SHAPES = [
    ((5, 3), 7),
    ((5, 7, 3), 4),
    ((12, 16, 9, 4), 33),
    ((32, 64, 10), 16),
    ((3, 2), 1),  # batch of one
]


def _problem(sizes, batch, seed):
    rng = np.random.default_rng(seed)
    layout = MLP(sizes)
    params = layout.init(seed)
    params += 0.01 * rng.standard_normal(layout.size).astype(np.float32)  # non-zero biases
    x = rng.standard_normal((batch, layout.n_inputs)).astype(np.float32)
    y = rng.integers(0, layout.n_classes, batch).astype(np.int32)
    return layout, params, x, y


def test_registered_as_the_jax_backend():
    assert isinstance(MLP((3, 2)).kernel("jax", 4), JaxKernel)
    assert JaxKernel.name == "jax"


def test_missing_jax_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # what an absent package looks like
    monkeypatch.delitem(sys.modules, "fastdist.models.kernels.jax_mlp")
    with pytest.raises(ConfigError, match=r"pip install 'fastdist\[jax\]'"):
        importlib.import_module("fastdist.models.kernels.jax_mlp")


@pytest.mark.parametrize(("sizes", "batch"), SHAPES)
def test_matches_reference_and_numba(sizes, batch):
    layout, params, x, y = _problem(sizes, batch, seed=sum(sizes) + batch)
    loss_ref, grad_ref, correct_ref = loss_and_grad(layout, params, x, y)
    grad_numba = np.empty(layout.size, dtype=np.float32)
    loss_numba, correct_numba = NumbaKernel(layout, batch).loss_and_grad(params, x, y, grad_numba)

    kernel = JaxKernel(layout, max_batch=batch)
    grad = np.full(layout.size, np.nan, dtype=np.float32)
    loss, correct = kernel.loss_and_grad(params, x, y, grad)

    assert isinstance(loss, float) and isinstance(correct, int)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert loss == pytest.approx(loss_numba, rel=1e-5)
    assert correct == correct_ref == correct_numba
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad, grad_numba, rtol=1e-4, atol=1e-5)

    logits = np.empty((batch, layout.n_classes), dtype=np.float32)
    kernel.logits(params, x, logits)
    np.testing.assert_allclose(logits, forward_logits(layout, params, x), rtol=1e-5, atol=1e-5)


def test_zero_inputs_and_empty_batch():
    layout = MLP((6, 8, 3))
    params = layout.init(0)  # zero biases: every pre-activation is exactly 0
    x = np.zeros((5, 6), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1], dtype=np.int32)
    kernel = JaxKernel(layout, max_batch=5)
    grad = np.empty(layout.size, dtype=np.float32)
    loss, correct = kernel.loss_and_grad(params, x, y, grad)
    ref_loss, ref_grad, ref_correct = loss_and_grad(layout, params, x, y)
    numba_grad = np.empty_like(grad)
    NumbaKernel(layout, 5).loss_and_grad(params, x, y, numba_grad)
    assert loss == pytest.approx(np.log(3), rel=1e-6) == pytest.approx(ref_loss)
    assert correct == ref_correct == 2  # all logits tie: argmax picks class 0
    # ReLU'(0) must be 0 as in the reference, not 0.5
    np.testing.assert_allclose(grad, ref_grad, atol=1e-7)
    np.testing.assert_allclose(grad, numba_grad, atol=1e-7)

    loss0, correct0 = kernel.loss_and_grad(params, x[:0], y[:0], grad)
    assert (loss0, correct0) == (0.0, 0)
    assert not grad.any()


def test_predict_in_chunks_not_a_multiple_of_max_batch():
    layout, params, x, _ = _problem((4, 5, 3), 23, seed=2)
    kernel = JaxKernel(layout, max_batch=8)
    out = np.empty((23, 3), dtype=np.float32)
    kernel.logits(params, x, out)
    np.testing.assert_allclose(out, forward_logits(layout, params, x), rtol=1e-5, atol=1e-6)
    numba_out = np.empty_like(out)
    NumbaKernel(layout, 8).logits(params, x, numba_out)
    np.testing.assert_allclose(out, numba_out, rtol=1e-5, atol=1e-6)
    # the short last chunk is padded: one compiled program, also for other n
    assert kernel.compile_count == 1
    kernel.logits(params, x[:5], out[:5])
    kernel.logits(params, x[:16], out[:16])
    assert kernel.compile_count == 1
    np.testing.assert_allclose(out, forward_logits(layout, params, x), rtol=1e-5, atol=1e-6)


def test_no_recompilation_after_warm_up():
    layout, params, x, y = _problem((10, 12, 4), 8, seed=3)
    kernel = JaxKernel(layout, max_batch=8)
    grad = np.empty(layout.size, dtype=np.float32)
    assert kernel.compile_count == 0
    kernel.loss_and_grad(params, x, y, grad)
    warm = kernel.compile_count
    assert warm == 1
    rng = np.random.default_rng(0)
    for _ in range(5):
        # new values (params updated in place, new minibatch), same shapes
        params -= 0.01 * grad
        x[:] = rng.standard_normal(x.shape)
        y[:] = rng.integers(0, layout.n_classes, y.shape)
        loss, _ = kernel.loss_and_grad(params, x, y, grad)
        assert loss == pytest.approx(loss_and_grad(layout, params, x, y)[0], rel=1e-5)
    assert kernel.compile_count == warm


def test_grad_out_is_written_in_place():
    layout, params, x, y = _problem((5, 7, 3), 4, seed=4)
    kernel = JaxKernel(layout, max_batch=4)
    arena = np.zeros(2 * layout.size, dtype=np.float32)  # stands in for the shared slots
    slot = arena[layout.size :]
    before = slot.ctypes.data
    kernel.loss_and_grad(params, x, y, slot)
    assert slot.ctypes.data == before
    assert not arena[: layout.size].any()  # the neighbouring slot is untouched
    np.testing.assert_allclose(
        arena[layout.size :], loss_and_grad(layout, params, x, y)[1], rtol=1e-4, atol=1e-5
    )


def test_batch_larger_than_max_batch_is_an_error():
    layout = MLP((4, 3))
    kernel = JaxKernel(layout, max_batch=2)
    with pytest.raises(ValueError, match="exceeds the workspace"):
        kernel.loss_and_grad(
            np.zeros(layout.size, np.float32),
            np.zeros((3, 4), np.float32),
            np.zeros(3, np.int32),
            np.empty(layout.size, np.float32),
        )


def test_configure_jax_threads(monkeypatch, tmp_path):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=true")
    env = configure_jax_threads(1, None)
    assert env["JAX_PLATFORMS"] == "cpu"
    flags = env["XLA_FLAGS"].split()
    assert "--xla_dump_to=/tmp/x" in flags  # unrelated flags are kept
    assert "--xla_cpu_multi_thread_eigen=true" not in flags  # ours replace earlier values
    for flag in (
        "--xla_cpu_multi_thread_eigen=false",
        "intra_op_parallelism_threads=1",
        "--xla_force_host_platform_device_count=1",
    ):
        assert flags.count(flag) == 1
    assert "JAX_COMPILATION_CACHE_DIR" not in env

    monkeypatch.delenv("XLA_FLAGS")
    env = configure_jax_threads(4, str(tmp_path))
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
    assert float(env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]) == 0.0
    assert all(isinstance(v, str) for v in env.values())


def test_enable_compilation_cache(tmp_path):
    import jax

    saved = {
        key: getattr(jax.config, key)
        for key in (
            "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes",
        )
    }
    cache = tmp_path / "jax-cache"
    try:
        enable_compilation_cache(str(cache))
        assert cache.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(cache)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    finally:
        for key, value in saved.items():
            jax.config.update(key, value)


_CHILD = """
import numpy as np, jax
from fastdist.models.kernels.jax_mlp import JaxKernel
from fastdist.models.mlp import MLP
layout = MLP((4, 5, 3))
kernel = JaxKernel(layout, 2)
x, y, grad = np.ones((2, 4), np.float32), np.zeros(2, np.int32), np.empty(layout.size, np.float32)
kernel.loss_and_grad(layout.init(0), x, y, grad)
print(jax.default_backend(), jax.device_count(), jax.config.jax_compilation_cache_dir)
"""


def test_worker_environment_takes_effect_in_a_fresh_process(tmp_path):
    """The variables are real: a child started with them sees one CPU device and
    writes its compiled programs to the persistent cache."""
    cache = tmp_path / "cache"
    env = {**os.environ, **configure_jax_threads(1, str(cache))}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cpu", "1", str(cache)]
    assert any(cache.iterdir()), "no compiled program was written to the cache"
