"""Data layer: datasets, readers, the :class:`Interactions` container and splits."""

from mtrec.data.datasets import RELEASES, download_release, load_movielens
from mtrec.data.interactions import Interactions
from mtrec.data.metadata import ItemMetadata
from mtrec.data.readers import load_ratings_file
from mtrec.data.splits import canonical_split, cold_start_counts, random_split, temporal_split, user_split

__all__ = [
    "RELEASES",
    "Interactions",
    "ItemMetadata",
    "canonical_split",
    "cold_start_counts",
    "download_release",
    "load_movielens",
    "load_ratings_file",
    "random_split",
    "temporal_split",
    "user_split",
]
