"""Optimizer records on flat float32 slices. See :mod:`fastdist.optim.base`."""

from fastdist.optim.base import Optimizer
from fastdist.optim.sgd import SGD, sgd

__all__ = ["Optimizer", "SGD", "sgd"]
