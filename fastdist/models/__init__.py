"""Model records: an architecture's flat layout, initialisation, kernels per backend,
NumPy reference, and what combiners may ask of it. See :mod:`fastdist.models.base`."""

from fastdist.models.base import BACKENDS, FlatLayout, Kernel, Model, PermutationSpec
from fastdist.models.mlp import MLP, mlp

__all__ = ["BACKENDS", "FlatLayout", "Kernel", "MLP", "Model", "PermutationSpec", "mlp"]
