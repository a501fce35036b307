"""Seeded train/test splits of an :class:`~mtrec.data.interactions.Interactions`."""

from __future__ import annotations

import numpy as np

from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError, DataError


def check_fraction(name: str, value: float) -> float:
    """``value`` if it lies strictly between 0 and 1, else a :class:`ConfigError`."""
    if not (0.0 < float(value) < 1.0):
        raise ConfigError(f"{name} must be in (0, 1), got {value}")
    return float(value)


def _split_at(data: Interactions, test_mask: np.ndarray) -> tuple[Interactions, Interactions]:
    if test_mask.all():
        raise DataError("the split leaves the train set empty")
    if not test_mask.any():
        raise DataError("the split leaves the test set empty")
    return data.subset(~test_mask), data.subset(test_mask)


def random_split(data: Interactions, test_fraction: float = 0.05, seed: int = 0) -> tuple[Interactions, Interactions]:
    """Hold out ``round(test_fraction * len(data))`` interactions drawn uniformly at random.

    The assignment's protocol. Both parts keep their original order and the full id maps.
    """
    check_fraction("test_fraction", test_fraction)
    n = len(data)
    n_test = int(round(n * test_fraction))
    test_mask = np.zeros(n, dtype=bool)
    test_mask[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return _split_at(data, test_mask)
