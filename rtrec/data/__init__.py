"""Data sources: a seeded synthetic generator, MovieLens loaders, one Dataset schema."""

from rtrec.data.dataset import Dataset, load_dataset
from rtrec.data.movielens import load_movielens
from rtrec.data.synthetic import ShiftConfig, SyntheticConfig, generate

__all__ = [
    "Dataset",
    "ShiftConfig",
    "SyntheticConfig",
    "generate",
    "load_dataset",
    "load_movielens",
]
