"""Datasets (validated loaders, offline generators) and how they are cut into shards."""

from fastdist.data.base import Dataset, standardize
from fastdist.data.datasets import DATASETS, load_dataset, load_digits, make_synthetic, shard_bounds

__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "load_digits",
    "make_synthetic",
    "shard_bounds",
    "standardize",
]
