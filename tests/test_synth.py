"""Synthetic data: exact shape, seeded, and a structure a model can learn."""

import numpy as np
import pytest

from mtrec.data import random_split
from mtrec.data.synth import synthetic_interactions
from mtrec.errors import ConfigError
from mtrec.model import MultitaskModel


def test_synthetic_data_has_the_requested_shape_and_distinct_pairs():
    data = synthetic_interactions(num_ratings=30_000, num_users=500, num_items=800, seed=3)
    assert len(data) == 30_000 and (data.num_users, data.num_items) == (500, 800)
    assert len(np.unique(data.users.astype(np.int64) * 800 + data.items)) == 30_000
    assert data.ratings.min() >= 0.5 and data.ratings.max() <= 5.0
    assert set(np.unique(data.ratings * 2)) <= set(range(1, 11))


def test_the_same_seed_gives_the_same_data():
    a, b = (synthetic_interactions(5_000, 200, 300, seed=9) for _ in range(2))
    assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
    assert np.array_equal(a.ratings, b.ratings)
    c = synthetic_interactions(5_000, 200, 300, seed=10)
    assert not np.array_equal(a.items, c.items)


def test_the_planted_structure_is_learnable():
    data = synthetic_interactions(num_ratings=40_000, num_users=400, num_items=1_000, seed=1)
    train, test = random_split(data, 0.1, seed=0)
    model = MultitaskModel(embedding_dim=16, batch_size=1024, learning_rate=4e-3, seed=0)
    model.fit(train, epochs=8, test=test)
    # Random ranking gives an MRR of about (ln 1000) / 1000 ~ 0.007.
    assert model.history_[-1].test_mrr > 0.03
    assert model.history_[-1].test_mse < np.var(test.ratings)


def test_too_many_ratings_for_the_shape_is_a_clear_error():
    with pytest.raises(ConfigError, match="do not fit"):
        synthetic_interactions(num_ratings=10_000, num_users=10, num_items=10)


def test_mtrec_synth_writes_a_file_that_mtrec_reads_back(tmp_path):
    from mtrec.cli import main
    from mtrec.data import load_ratings_file

    out = tmp_path / "synth.parquet"
    assert main(["synth", "--out", str(out), "--num-ratings", "3000", "--num-users", "100", "--num-items", "150"]) == 0
    data = load_ratings_file(out)
    expected = synthetic_interactions(3000, 100, 150, seed=0)
    assert len(data) == 3000 and np.array_equal(np.sort(data.ratings), np.sort(expected.ratings))
    assert [p.name for p in tmp_path.iterdir()] == ["synth.parquet"]
    assert main(["synth", "--out", str(tmp_path / "synth.txt"), "--num-ratings", "10"]) == 2


def test_the_sort_based_unique_equals_numpys():
    from mtrec.data.synth import _sorted_unique

    rng = np.random.default_rng(3)
    for values in (rng.integers(0, 50, 1000), rng.integers(0, 10**12, 5000), np.array([7]), np.array([], dtype=np.int64)):
        assert np.array_equal(_sorted_unique(values.copy()), np.unique(values))


def test_a_shape_whose_clusters_cannot_hold_the_pairs_is_an_error_not_an_endless_loop():
    with pytest.raises(ConfigError, match="1000 distinct pairs cannot be drawn: .* lower num_ratings or in_cluster"):
        synthetic_interactions(num_ratings=1000, num_users=50, num_items=100, in_cluster=1.0)
