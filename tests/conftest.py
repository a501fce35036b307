"""Shared fixtures: the real MovieLens 100K (read from MTREC_DATA_DIR, never committed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()

# Tests run with one thread: they are small, and CI machines are shared.
torch.set_num_threads(1)


#: The fixtures that read the real MovieLens 100K; a test that uses one (directly or through
#: another fixture) is marked ``movielens``.
MOVIELENS_FIXTURES = {"data_dir", "ml100k"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MOVIELENS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.movielens)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "ml-100k" / "u.data").is_file():
        pytest.fail(f"MovieLens 100K not found under {DATA_DIR}: set MTREC_DATA_DIR to the folder holding ml-100k/")
    return DATA_DIR


@pytest.fixture(scope="session")
def ml100k(data_dir):
    from mtrec.data import load_movielens

    return load_movielens("100k", data_dir=data_dir)


@pytest.fixture(scope="session")
def ml100k_split(ml100k):
    from mtrec.data import random_split

    return random_split(ml100k, test_fraction=0.05, seed=0)


def random_interactions(num_users=30, num_items=40, n=400, seed=0, ratings=True):
    """A small random data set with unique (user, item) pairs."""
    from mtrec.data import Interactions

    rng = np.random.default_rng(seed)
    pairs = rng.choice(num_users * num_items, size=n, replace=False)
    users, items = np.divmod(pairs, num_items)
    return Interactions(
        users=users,
        items=items,
        ratings=rng.integers(1, 6, size=n).astype(np.float32) if ratings else None,
        timestamps=rng.integers(0, 10**6, size=n),
        num_users=num_users,
        num_items=num_items,
        user_ids=np.arange(1, num_users + 1),
        item_ids=np.arange(1, num_items + 1),
        rating_scale=(1.0, 5.0),
        name="random",
    )
