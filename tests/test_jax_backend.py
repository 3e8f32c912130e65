"""backend=jax through the same pool, arena and combiners as backend=numba."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import small_run

import fastdist

TINY = small_run("model.hidden=[16,8]", "steps=20", "workers=2")

BLOCK_JAX = """
import sys
class _NoJax:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _NoJax())
"""


def test_without_jax_backend_jax_is_a_one_line_error(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_JAX)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "fastdist", *TINY, "backend=jax", f"hydra.run.dir={tmp_path}/r"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "fastdist: error: backend=jax needs JAX: pip install 'fastdist[jax]'"
    )


jax = pytest.importorskip("jax")


@pytest.mark.parametrize("combiner", ["grad_avg", "local_sgd"])
def test_jax_and_numba_train_the_same_parameters(combiner):
    runs = {
        backend: fastdist.train(
            fastdist.compose([*TINY, f"backend={backend}", f"combiner={combiner}"])
        )
        for backend in ("numba", "jax")
    }
    a, b = runs["numba"].worker_params, runs["jax"].worker_params
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-4
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    jax_metrics = runs["jax"].metrics
    assert jax_metrics["backend"] == "jax"
    assert jax_metrics["recompilations_after_warmup"] == 0  # compiled once per worker


def test_persistent_compilation_cache_is_written_where_configured(tmp_path):
    cache = tmp_path / "xla-cache"
    fastdist.train(fastdist.compose([*TINY, "backend=jax", f"backend.compilation_cache={cache}"]))
    assert cache.is_dir() and any(cache.iterdir())


def test_jax_workers_are_bound_to_their_own_cpus():
    metrics = fastdist.train(fastdist.compose([*TINY, "backend=jax"])).metrics
    affinity = metrics["worker_cpu_affinity"]
    assert [len(cpus) for cpus in affinity] == [1, 1]
    if len(os.sched_getaffinity(0)) >= 2:
        assert affinity[0] != affinity[1]
