"""Optimizer records on flat float32 slices, learning-rate schedules and clipping.
See :mod:`fastdist.optim.base`."""

from fastdist.optim.adagrad import Adagrad, adagrad
from fastdist.optim.adamw import AdamW, adamw
from fastdist.optim.base import Optimizer
from fastdist.optim.lion import Lion, lion
from fastdist.optim.schedules import LearningRate, Schedule, lr_scale
from fastdist.optim.sgd import SGD, sgd

__all__ = [
    "Adagrad",
    "adagrad",
    "AdamW",
    "LearningRate",
    "Lion",
    "Optimizer",
    "SGD",
    "Schedule",
    "adamw",
    "lion",
    "lr_scale",
    "sgd",
]
