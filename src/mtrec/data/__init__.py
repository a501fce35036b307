"""Data layer: datasets, readers, the :class:`Interactions` container and splits."""

from mtrec.data.interactions import Interactions, ItemMetadata
from mtrec.data.splits import random_split

__all__ = ["Interactions", "ItemMetadata", "random_split"]
