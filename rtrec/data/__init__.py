"""Data sources: a seeded synthetic generator, MovieLens loaders, one Dataset schema."""

from rtrec.data.dataset import Dataset, load_dataset
from rtrec.data.ground_truth import GroundTruth, ground_truth
from rtrec.data.movielens import load_movielens
from rtrec.data.synthetic import ShiftConfig, SyntheticConfig, generate

__all__ = [
    "Dataset",
    "GroundTruth",
    "ShiftConfig",
    "SyntheticConfig",
    "generate",
    "ground_truth",
    "load_dataset",
    "load_movielens",
]
