"""fastdist: data-parallel neural-network training on shared memory.

Public API; everything else is an implementation detail and may change. Names are
imported on first use, so ``import fastdist`` (and every worker process) stays cheap.
"""

from __future__ import annotations

import importlib

from fastdist._version import __version__

_PUBLIC = {
    # running
    "train": "fastdist.run.api",
    "RunResult": "fastdist.run.coordinator",
    "compose": "fastdist.run.config",
    "load": "fastdist.run.saved_model",
    "SavedModel": "fastdist.run.saved_model",
    "FastdistConfig": "fastdist.run.config_schema",
    "HistoryConfig": "fastdist.run.history",
    "LoggerConfig": "fastdist.run.loggers",
    # records and what they exchange
    "Model": "fastdist.models.base",
    "FlatLayout": "fastdist.models.base",
    "PermutationSpec": "fastdist.models.base",
    "MLP": "fastdist.models.mlp",
    "Optimizer": "fastdist.optim.base",
    "SGD": "fastdist.optim.sgd",
    "AdamW": "fastdist.optim.adamw",
    "Lion": "fastdist.optim.lion",
    "Adagrad": "fastdist.optim.adagrad",
    "Schedule": "fastdist.optim.schedules",
    "LearningRate": "fastdist.optim.schedules",
    "Combiner": "fastdist.combiners.base",
    "CombinedModel": "fastdist.combiners.base",
    "FinalizeInputs": "fastdist.combiners.base",
    "Sync": "fastdist.combiners.exchange",
    "Exchange": "fastdist.combiners.exchange",
    "ExchangeView": "fastdist.combiners.exchange",
    "WorkerExchange": "fastdist.combiners.exchange",
    "evaluate": "fastdist.combiners.evaluate",
    "predict_proba": "fastdist.combiners.evaluate",
    # data and memory
    "Dataset": "fastdist.data.base",
    "load_dataset": "fastdist.data.datasets",
    "make_synthetic": "fastdist.data.datasets",
    "SharedArena": "fastdist.engine.shm",
    # errors
    "FastdistError": "fastdist.errors",
    "ConfigError": "fastdist.errors",
    "WorkerError": "fastdist.errors",
    "DivergenceError": "fastdist.errors",
}

__all__ = ["COMBINERS", "__version__", *sorted(_PUBLIC)]


def __getattr__(name: str):
    if name == "COMBINERS":
        from fastdist.conf import registered

        return registered("combiner")
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastdist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
