"""model=jax: a researcher's own JAX model (examples/jax_model.py) trained by fastdist's
workers, arena and combiners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdist
from fastdist.combiners.fisher import diagonal_fisher
from fastdist.errors import ConfigError
from fastdist.run.records import build_model
from fastdist.run.saved_overrides import check_saved_overrides

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["model=jax", "model.factory=examples.jax_model:make", "backend=jax"]


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))


def _model(*extra):
    cfg = fastdist.compose([*MODEL, *extra])
    return build_model(cfg.model, (8, 8), 10)


def test_the_pytree_becomes_the_flat_layout():
    model = _model("+model.options.hidden=[5]")
    assert model.layout.shapes == (
        ("[0]['b']", (5,)),
        ("[0]['w']", (64, 5)),
        ("[1]['b']", (10,)),
        ("[1]['w']", (5, 10)),
    )
    theta = model.init(3)
    assert theta.dtype == np.float32 and theta.shape == (model.layout.size,)
    np.testing.assert_array_equal(theta, model.init(3))
    # the gradient is the flat gradient of the user's own apply, checked by finite differences
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    y = rng.integers(0, 10, 4).astype(np.int32)
    _, grad, _ = model.reference_loss_and_grad(theta, x, y)
    for i in rng.choice(model.layout.size, 3, replace=False):
        step = np.zeros_like(theta)
        step[i] = 1e-2
        up = model.reference_loss_and_grad(theta + step, x, y)[0]
        down = model.reference_loss_and_grad(theta - step, x, y)[0]
        assert grad[i] == pytest.approx((up - down) / 2e-2, rel=2e-2, abs=1e-4)


@pytest.mark.parametrize("combiner", ["grad_avg", "weight_avg"])
def test_trains_end_to_end(combiner):
    cfg = fastdist.compose([*MODEL, f"combiner={combiner}", "workers=2", "steps=40"])
    metrics = fastdist.train(cfg).metrics
    assert metrics["test_accuracy"] > 0.9, metrics  # digits; chance is 0.1
    assert metrics["backend"] == "jax"


def test_fisher_per_example_gradients_match_brute_force():
    model = _model("+model.options.hidden=[4]")
    theta = model.init(1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    brute = np.mean(
        [
            model.reference_loss_and_grad(theta, x[i : i + 1], y[i : i + 1])[1] ** 2
            for i in range(6)
        ],
        axis=0,
    )
    got = diagonal_fisher(model, theta, x, y, n_samples=6, labels="true")
    np.testing.assert_allclose(got, brute, rtol=1e-3, atol=1e-9)


def test_what_it_cannot_do_is_a_config_error():
    with pytest.raises(ConfigError, match="backend=jax only"):
        fastdist.train(fastdist.compose([*MODEL, "backend=numba", "steps=1"]))
    with pytest.raises(ConfigError, match="needs model.factory"):
        build_model(fastdist.compose(["model=jax"]).model, (8, 8), 10)
    with pytest.raises(ConfigError, match="cannot be imported"):
        _model("model.factory=examples.no_such_module:make")
    with pytest.raises(ConfigError, match="package.module:function"):
        _model("model.factory=examples.jax_model.make")
    # a run directory may not name code to import
    with pytest.raises(ConfigError, match="not allowed"):
        check_saved_overrides(["model.factory=examples.jax_model:make"])


def test_aligned_avg_refuses_it_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "fastdist", *MODEL, "combiner=aligned_avg",
         f"hydra.run.dir={tmp_path}"],  # fmt: skip
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "aligned_avg" in lines[0] and "Traceback" not in proc.stderr
