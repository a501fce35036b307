"""Splits: sizes, no overlap, seeded determinism, history for test users, no future leakage."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_interactions

from mtrec.data.splits import (
    canonical_split,
    cold_start_counts,
    random_split,
    temporal_split,
    user_split,
)
from mtrec.errors import ConfigError, DataError


def pairs(data) -> set[tuple[int, int]]:
    return set(zip(data.users.tolist(), data.items.tolist()))


def assert_partition(data, train, test) -> None:
    """Train and test are disjoint, together the whole data, and keep the full id maps."""
    assert len(train) + len(test) == len(data)
    assert not pairs(train) & pairs(test)
    assert pairs(train) | pairs(test) == pairs(data)
    for part in (train, test):
        assert part.num_users == data.num_users and part.num_items == data.num_items
        assert part.user_ids is data.user_ids and part.item_ids is data.item_ids


def test_random_split_is_the_assignments_95000_5000(ml100k, ml100k_split):
    train, test = ml100k_split
    assert (len(train), len(test)) == (95_000, 5_000)
    assert_partition(ml100k, train, test)


def test_random_split_is_seeded(ml100k):
    first, second, other = (random_split(ml100k, 0.1, seed=s)[1] for s in (3, 3, 4))
    np.testing.assert_array_equal(first.users, second.users)
    np.testing.assert_array_equal(first.items, second.items)
    assert pairs(first) != pairs(other)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_fractions_outside_zero_one_are_config_errors(ml100k, fraction):
    for split in (
        lambda: random_split(ml100k, fraction),
        lambda: user_split(ml100k, test_fraction=fraction),
        lambda: temporal_split(ml100k, test_fraction=fraction),
    ):
        with pytest.raises(ConfigError, match=rf"test_fraction must be in \(0, 1\), got {fraction}"):
            split()


def test_user_split_leave_one_out(ml100k):
    train, test = user_split(ml100k, leave_k=1, seed=0)
    assert_partition(ml100k, train, test)
    # Every ML-100K user has at least 20 ratings: each gives exactly one to test.
    assert len(test) == 943 and np.bincount(test.users).tolist() == [1] * 943
    assert cold_start_counts(train, test)["cold_users"] == 0


def test_user_split_keeps_training_history_and_small_users_in_train():
    data = random_interactions(num_users=40, num_items=60, n=600, seed=1)
    counts = np.bincount(data.users, minlength=data.num_users)
    train, test = user_split(data, leave_k=15, seed=2)
    assert_partition(data, train, test)
    test_counts = np.bincount(test.users, minlength=data.num_users)
    train_counts = np.bincount(train.users, minlength=data.num_users)
    assert (test_counts == np.where(counts > 15, 15, 0)).all()
    assert (train_counts[test_counts > 0] > 0).all()


def test_user_split_by_fraction(ml100k):
    train, test = user_split(ml100k, test_fraction=0.2, seed=5)
    assert_partition(ml100k, train, test)
    counts = np.bincount(ml100k.users)
    expected = np.minimum(np.round(0.2 * counts), counts - 1)
    np.testing.assert_array_equal(np.bincount(test.users, minlength=943), expected)
    assert len(test) == 20_000


def test_user_split_is_seeded(ml100k):
    first, second, other = (user_split(ml100k, leave_k=2, seed=s)[1] for s in (1, 1, 2))
    assert pairs(first) == pairs(second) != pairs(other)


def test_user_split_needs_exactly_one_option(ml100k):
    with pytest.raises(ConfigError, match="give exactly one of test_fraction, leave_k; got none"):
        user_split(ml100k)
    with pytest.raises(ConfigError, match="got test_fraction, leave_k"):
        user_split(ml100k, test_fraction=0.1, leave_k=1)
    with pytest.raises(ConfigError, match="leave_k must be a positive whole number, got 0"):
        user_split(ml100k, leave_k=0)


def test_user_split_that_holds_nothing_out_is_an_error():
    data = random_interactions(num_users=30, num_items=40, n=100)
    with pytest.raises(DataError, match="leaves the test set empty .every user has 50 or fewer"):
        user_split(data, leave_k=50)


def test_temporal_cutoff_has_no_future_in_train(ml100k):
    train, test = temporal_split(ml100k, cutoff="1998-03-01")
    assert_partition(ml100k, train, test)
    cutoff = int(np.datetime64("1998-03-01", "s").astype(np.int64))
    assert train.timestamps.max() < cutoff <= test.timestamps.min()
    assert len(test) == int((ml100k.timestamps >= cutoff).sum())
    assert pairs(temporal_split(ml100k, cutoff=cutoff)[1]) == pairs(test)
    assert pairs(temporal_split(ml100k, cutoff=str(cutoff))[1]) == pairs(test)  # as --cutoff passes it


def test_temporal_fraction_picks_the_time_quantile(ml100k):
    train, test = temporal_split(ml100k, test_fraction=0.1)
    assert_partition(ml100k, train, test)
    assert train.timestamps.max() < test.timestamps.min()
    assert 10_000 <= len(test) <= 10_010


def test_temporal_last_k_holds_out_each_users_latest(ml100k):
    train, test = temporal_split(ml100k, last_k=3)
    assert_partition(ml100k, train, test)
    assert np.bincount(test.users, minlength=943).tolist() == [3] * 943
    latest_train = np.full(943, -1)
    np.maximum.at(latest_train, train.users, train.timestamps)
    earliest_test = np.full(943, np.iinfo(np.int64).max)
    np.minimum.at(earliest_test, test.users, test.timestamps)
    assert (latest_train <= earliest_test).all()


def test_temporal_split_needs_timestamps(ml100k):
    untimed = ml100k.subset(np.arange(len(ml100k)))
    untimed.timestamps = None
    with pytest.raises(DataError, match="a temporal split needs timestamps, and ml-100k has none"):
        temporal_split(untimed, test_fraction=0.1)


def test_temporal_cutoff_before_all_data_leaves_train_empty(ml100k):
    with pytest.raises(DataError, match="leaves the train set empty .cutoff 0 vs. times 874724710..893286638"):
        temporal_split(ml100k, cutoff=0)
    with pytest.raises(ConfigError, match="cutoff must be seconds since 1970 or an ISO date, got 'soon'"):
        temporal_split(ml100k, cutoff="soon")


@pytest.mark.parametrize("name, sizes", [("u1", (80_000, 20_000)), ("u5", (80_000, 20_000)), ("ua", (90_570, 9_430))])
def test_canonical_splits(data_dir, ml100k, name, sizes):
    train, test = canonical_split(name, data_dir)
    assert (len(train), len(test)) == sizes
    assert train.num_users == 943 and train.num_items == 1682
    assert train.item_ids is test.item_ids
    np.testing.assert_array_equal(train.item_ids, ml100k.item_ids)
    assert not pairs(train) & pairs(test)
    assert train.item_metadata.titles[0] == "Toy Story (1995)"


def test_canonical_split_base_file_holds_the_first_rows(data_dir):
    train, _ = canonical_split("u1", data_dir)
    first = (data_dir / "ml-100k" / "u1.base").read_text().split("\n", 1)[0].split("\t")
    assert (train.user_ids[train.users[0]], train.item_ids[train.items[0]], train.ratings[0]) == (
        int(first[0]),
        int(first[1]),
        float(first[2]),
    )


def test_unknown_canonical_split(data_dir):
    with pytest.raises(ConfigError, match="unknown canonical split 'u9'; known: u1, u2, u3, u4, u5, ua, ub"):
        canonical_split("u9", data_dir)


def test_cold_start_counts_are_reported_not_dropped(data_dir):
    train, test = canonical_split("u1", data_dir)
    counts = cold_start_counts(train, test)
    assert counts == {
        "test_users": 459,
        "test_items": 1410,
        "test_ratings": 20_000,
        "cold_users": 0,
        "cold_items": 32,
        "cold_ratings": 32,
    }
    assert len(test) == 20_000  # the cold rows are still there


def test_cold_start_counts_by_hand():
    data = random_interactions(num_users=4, num_items=4, n=8, seed=0)
    train = data.subset(data.users != 3)
    test = data.subset(data.users == 3)
    counts = cold_start_counts(train, test)
    assert counts["cold_users"] == 1 and counts["cold_ratings"] == len(test) == counts["test_ratings"]
