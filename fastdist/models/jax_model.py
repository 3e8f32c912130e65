"""Bring your own JAX model: ``model=jax model.factory=my_pkg.my_module:make``.

``make(cfg)`` returns ``(init, apply)``: ``init(rng) -> params`` (any pytree of arrays)
and ``apply(params, x) -> logits``, with ``x`` of shape ``(batch, *input_shape)`` and
logits ``(batch, n_classes)``. ``cfg`` has the attributes ``input_shape`` and
``n_classes`` (from the dataset) plus every entry of ``model.options``. Plain JAX, or a
Flax/Equinox module wrapped that way.

fastdist flattens the pytree into its one float32 parameter vector with
``jax.flatten_util.ravel_pytree`` (the layout names each leaf by its pytree path), so
the workers, arena, optimizers and weight-space combiners treat it like any other
model; it trains under ``backend=jax`` only, and the coordinator evaluates it with JAX.
What the record cannot know is which axes may be permuted: aligned_avg refuses it.
Per-example gradients (Fisher) come from ``jax.vmap`` of a vector-Jacobian product.

The record carries only the factory's import path and options (it is pickled to the
workers); each process imports the factory and traces it when first needed.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from fastdist.conf import resolve
from fastdist.errors import ConfigError
from fastdist.models.base import FlatLayout, Model

__all__ = ["JaxModel", "jax_model"]


def _load_factory(path: str):
    module, sep, attr = str(path).partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"model.factory must read 'package.module:function', got {path!r}")
    factory = resolve(path, "model.factory")
    if not callable(factory):
        raise ConfigError(f"model.factory={path} is not callable")
    return factory


@functools.cache
def _functions(factory: str, options: tuple, input_shape: tuple, n_classes: int):
    """(init, apply, unravel, leaf shapes, tree structure) of a model, once per process."""
    import jax
    from jax.flatten_util import ravel_pytree

    cfg = types.SimpleNamespace(input_shape=input_shape, n_classes=n_classes, **dict(options))
    try:
        init, apply = _load_factory(factory)(cfg)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.factory={factory} failed: {exc}") from None

    def init32(rng):
        return jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a, jax.numpy.float32), init(rng))

    shapes = jax.eval_shape(init32, jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    named = tuple(
        (jax.tree_util.keystr(path) or "params", tuple(leaf.shape)) for path, leaf in leaves
    )
    zeros = jax.tree_util.tree_map(lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes)
    unravel = ravel_pytree(zeros)[1]
    # ravel_pytree packs the leaves in tree_flatten's order, the layout's order.
    return init32, apply, unravel, named, jax.tree_util.tree_structure(shapes)


@dataclass(frozen=True)
class JaxModel(Model):
    factory: str
    options: tuple[tuple[str, Any], ...]
    input_shape: tuple[int, ...]
    classes: int

    name = "jax"
    host_backend = "jax"

    def _fns(self):
        return _functions(self.factory, self.options, self.input_shape, self.classes)

    @cached_property
    def layout(self) -> FlatLayout:
        return FlatLayout(self._fns()[3])

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def n_classes(self) -> int:
        return self.classes

    def forward(self):
        """Traceable (flat params, x rows) -> logits."""
        _, apply, unravel, _, _ = self._fns()
        shape = self.input_shape

        def forward(flat, x):
            return apply(unravel(flat), x.reshape((x.shape[0], *shape)))

        return forward

    def tensor_forward(self):
        """Traceable (leaves by layout name, x rows) -> logits: what the kernel
        differentiates (w.r.t. the leaves, not the flat vector)."""
        import jax

        _, apply, _, named, tree = self._fns()
        names = [name for name, _ in named]
        shape = self.input_shape

        def forward(tensors, x):
            params = jax.tree_util.tree_unflatten(tree, [tensors[name] for name in names])
            return apply(params, x.reshape((x.shape[0], *shape)))

        return forward

    def init(self, seed: int, out: np.ndarray | None = None) -> np.ndarray:
        import jax
        from jax.flatten_util import ravel_pytree

        flat = np.asarray(ravel_pytree(self._fns()[0](jax.random.PRNGKey(int(seed))))[0])
        if out is None:
            return flat.astype(np.float32)
        out[:] = flat
        return out

    def kernel(self, backend: str, max_batch: int):
        if backend != "jax":
            raise ConfigError(f"model=jax runs under backend=jax only, not backend={backend}")
        from fastdist.models.kernels.jax_model import JaxModelKernel

        return JaxModelKernel(self, max_batch)

    # No NumPy twin of the user's code: the "reference" is the JAX kernel itself.

    def reference_loss_and_grad(self, params, x, y):
        grad = np.empty(self.layout.size, dtype=np.float32)
        loss, correct = _kernel(self, max(1, len(x))).loss_and_grad(params, x, y, grad)
        return loss, grad, correct

    def reference_logits(self, params, x):
        out = np.empty((len(x), self.n_classes), dtype=np.float32)
        _kernel(self, 256).logits(params, x, out)
        return out

    def describe(self) -> dict:
        return {"factory": self.factory, "options": dict(self.options), "size": self.layout.size}

    # Fisher: per-example gradients by vmap over vector-Jacobian products (float32).

    def per_example_forward(self, params, x):
        flat = np.asarray(params, dtype=np.float32)
        rows = np.asarray(x, dtype=np.float32)
        logits = np.asarray(self.forward()(flat, rows), dtype=np.float64)
        return logits, (flat, rows)

    def add_squared_grads(self, params, cache, dlogits, weights, out) -> None:
        from fastdist.models.kernels.jax_model import weighted_squared_grads

        flat, rows = cache
        out += weighted_squared_grads(self, flat, rows, dlogits, weights)


@functools.lru_cache(maxsize=8)
def _kernel(model: JaxModel, max_batch: int):
    return model.kernel("jax", max_batch)


def _frozen(value):
    """Lists as tuples, so the record hashes (kernels are cached per record)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        raise ConfigError("model.options values must be numbers, strings or lists")
    return value


def jax_model(
    factory: str = "",
    options: dict | None = None,
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
) -> JaxModel:
    """``model=jax``: ``model.factory=pkg.module:make`` names the function returning
    ``(init, apply)``; ``model.options`` (a dict) is passed to it with the data's
    ``input_shape`` and ``n_classes``."""
    if not factory:
        raise ConfigError("model=jax needs model.factory=package.module:function")
    if not isinstance(options or {}, dict):
        raise ConfigError(f"model.options must be a mapping, got {options!r}")
    record = JaxModel(
        str(factory),
        tuple(sorted((str(k), _frozen(v)) for k, v in (options or {}).items())),
        tuple(int(d) for d in input_shape),
        int(n_classes),
    )
    record.layout  # noqa: B018 (import and trace the factory now: errors surface here)
    return record
