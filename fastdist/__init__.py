"""fastdist: data-parallel neural-network training on shared memory.

Public API; everything else is an implementation detail and may change.
"""

from fastdist.combiners import REGISTRY as COMBINERS
from fastdist.combiners import CombinedModel, Combiner, FinalizeInputs, Sync
from fastdist.config import compose
from fastdist.data import Dataset, load_dataset, make_synthetic
from fastdist.errors import ConfigError, DivergenceError, FastdistError, WorkerError
from fastdist.evaluate import evaluate, predict_proba
from fastdist.model import ParamLayout, init_params
from fastdist.shm import SharedArena
from fastdist.trainer import RunResult, train

__version__ = "0.1.0"

__all__ = [
    "COMBINERS",
    "CombinedModel",
    "Combiner",
    "ConfigError",
    "Dataset",
    "DivergenceError",
    "FastdistError",
    "FinalizeInputs",
    "ParamLayout",
    "RunResult",
    "SharedArena",
    "Sync",
    "WorkerError",
    "compose",
    "evaluate",
    "init_params",
    "load_dataset",
    "make_synthetic",
    "predict_proba",
    "train",
]
