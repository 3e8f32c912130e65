"""MLP kernels behind one interface: ``Kernel(layout, max_batch)`` with
``loss_and_grad(params, x, y, grad_out) -> (loss, correct)`` and
``predict_logits(params, x, out)``. Backends are imported only when chosen, so a worker
using Numba never pays for importing JAX and the other way round."""

from __future__ import annotations

from importlib import import_module

from fastdist.errors import ConfigError

__all__ = ["BACKENDS", "get_kernel"]

BACKENDS = {
    "numba": ("fastdist.kernels.numba_mlp", "NumbaKernel"),
    "jax": ("fastdist.kernels.jax_mlp", "JaxKernel"),
    "reference": ("fastdist.kernels.reference", "ReferenceKernel"),
}


def get_kernel(name: str):
    """The kernel class of backend ``name``."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r} (choose from: {', '.join(BACKENDS)})")
    module, cls = BACKENDS[name]
    return getattr(import_module(module), cls)
