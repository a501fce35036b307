"""The data options shared by the commands that train: which data, and how it is split."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from mtrec.cli._args import add_option, positive_int
from mtrec.data.datasets import RELEASES, load_movielens
from mtrec.data.interactions import Interactions
from mtrec.data.readers import load_ratings_file
from mtrec.data.splits import (
    CANONICAL_SPLITS,
    canonical_split,
    check_fraction,
    cold_start_counts,
    random_split,
    temporal_split,
    user_split,
)
from mtrec.errors import ConfigError

SPLITS = ("random", "user", "temporal", *CANONICAL_SPLITS)


#: The assignment's share of held-out ratings, for --split random, user and temporal.
DEFAULT_TEST_FRACTION = 0.05

def add_data_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the ``data`` option group: the data set or a ratings file, and the split."""
    group = parser.add_argument_group(
        "data",
        "MovieLens (--dataset, downloaded on first use) or your own ratings (--ratings), and the train/test split.",
    )
    add_option(
        group,
        "--dataset",
        default="100k",
        choices=list(RELEASES),
        help="MovieLens release (default 100k); see 'mtrec datasets list'",
    )
    add_option(
        group,
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where MovieLens releases live (default $MTREC_DATA_DIR, else ~/.cache/mtrec)",
    )
    add_option(
        group,
        "--ratings",
        default=None,
        metavar="FILE",
        help="your own ratings (CSV, TSV, '::' or Parquet) instead of --dataset; "
        "without a rating column only the watch-score head trains",
    )
    add_option(group, "--items", default=None, metavar="FILE", help="item titles (and genres) for --ratings")
    for role, names in (
        ("user", "user/userId/user_id/uid"),
        ("item", "item/itemId/item_id/movieId/movie_id/iid"),
        ("rating", "rating/score/stars"),
        ("time", "timestamp/time/ts/date"),
    ):
        add_option(
            group,
            f"--{role}-col",
            default=None,
            metavar="NAME",
            help=f"{role} column of --ratings, a name or 0-based position (default: found by name: {names})",
        )
    add_option(group, "--sep", default=None, help="field separator of --ratings (default: from extension or sniffed)")
    add_option(
        group,
        "--rating-scale",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="allowed ratings of --ratings; any outside is an error (default: the range in the file)",
    )
    add_option(
        group,
        "--split",
        default="random",
        choices=SPLITS,
        help="random: uniformly drawn test ratings (default); user: per user (--test-fraction or --leave-k); "
        "temporal: the latest (--test-fraction, --cutoff or --last-k); u1..u5, ua, ub: MovieLens 100K's own",
    )
    add_option(
        group,
        "--test-fraction",
        type=float,
        default=None,
        help=f"share of ratings held out, in (0, 1) (default {DEFAULT_TEST_FRACTION})",
    )
    add_option(group, "--leave-k", type=positive_int, default=None, metavar="K", help="--split user: K per user")
    add_option(
        group,
        "--cutoff",
        default=None,
        metavar="TIME",
        help="--split temporal: test from this time on (seconds since 1970 or an ISO date, e.g. 1998-03-01)",
    )
    add_option(
        group, "--last-k", type=positive_int, default=None, metavar="K", help="--split temporal: each user's latest K"
    )
    return group


def _check_options(args: argparse.Namespace) -> None:
    """Options that do not fit the chosen split or source are errors, not silently ignored."""
    for option, split in (("leave_k", "user"), ("cutoff", "temporal"), ("last_k", "temporal")):
        if getattr(args, option) is not None and args.split != split:
            raise ConfigError(f"--{option.replace('_', '-')} applies to --split {split}, not --split {args.split}")
    if args.ratings is None:
        for option in ("items", "user_col", "item_col", "rating_col", "time_col", "sep", "rating_scale"):
            if getattr(args, option) is not None:
                raise ConfigError(f"--{option.replace('_', '-')} applies to --ratings files only")
    if args.split in CANONICAL_SPLITS and (args.ratings is not None or args.dataset != "100k"):
        raise ConfigError(f"--split {args.split} is one of MovieLens 100K's own splits: use it with --dataset 100k")
    if args.test_fraction is not None:
        for option in ("leave_k", "cutoff", "last_k"):
            if getattr(args, option) is not None:
                raise ConfigError(f"--test-fraction and --{option.replace('_', '-')} are two ways to size the test set: give one")
        if args.split in CANONICAL_SPLITS:
            raise ConfigError(f"--test-fraction does not apply to --split {args.split}, whose test set is fixed")
        check_fraction("test_fraction", args.test_fraction)  # before any download or parse


def load_data(args: argparse.Namespace, progress: bool = True) -> Interactions:
    """The data the options name: a ratings file or a MovieLens release."""
    if args.ratings is None:
        return load_movielens(args.dataset, args.data_dir, progress=progress)
    return load_ratings_file(
        args.ratings,
        user_col=args.user_col,
        item_col=args.item_col,
        rating_col=args.rating_col,
        time_col=args.time_col,
        items_path=args.items,
        rating_scale=tuple(args.rating_scale) if args.rating_scale else None,
        sep=args.sep,
    )


def _test_fraction(args: argparse.Namespace) -> float:
    return DEFAULT_TEST_FRACTION if args.test_fraction is None else args.test_fraction


def split_data(args: argparse.Namespace, data: Interactions, seed: int) -> tuple[Interactions, Interactions]:
    if args.split == "random":
        return random_split(data, test_fraction=_test_fraction(args), seed=seed)
    if args.split == "user":
        if args.leave_k is not None:
            return user_split(data, leave_k=args.leave_k, seed=seed)
        return user_split(data, test_fraction=_test_fraction(args), seed=seed)
    if args.cutoff is not None or args.last_k is not None:
        return temporal_split(data, cutoff=args.cutoff, last_k=args.last_k)
    return temporal_split(data, test_fraction=_test_fraction(args))


def load_split(args: argparse.Namespace, seed: int, progress: bool = True) -> tuple[Interactions, Interactions, dict]:
    """Load the data the options name and split it; also a description for ``config.json``.

    Raises
    ------
    ConfigError
        For options that are out of range or do not fit together.
    DataError
        For data that cannot be read or split.
    """
    return split_loader(args, progress)(seed)


def split_loader(
    args: argparse.Namespace, progress: bool = True
) -> Callable[[int], tuple[Interactions, Interactions, dict]]:
    """:func:`load_split` for several seeds: the options are checked now, the data read once."""
    _check_options(args)
    data: list[Interactions] = []

    def load(seed: int) -> tuple[Interactions, Interactions, dict]:
        if args.split in CANONICAL_SPLITS:
            train, test = canonical_split(args.split, args.data_dir, progress=progress)
        else:
            if not data:
                data.append(load_data(args, progress))
            train, test = split_data(args, data[0], seed)
        return train, test, describe(args, train, test, seed)

    return load


def describe(args: argparse.Namespace, train: Interactions, test: Interactions, seed: int) -> dict[str, Any]:
    """What data a run used and how it was split (plain JSON values)."""
    if args.ratings is None:
        info: dict[str, Any] = {"dataset": args.dataset}
    else:
        info = {"ratings_file": str(args.ratings), "items_file": None if args.items is None else str(args.items)}
    split: dict[str, Any] = {"method": args.split}
    if args.split in ("random", "user", "temporal"):
        options = {"random": (), "user": ("leave_k",), "temporal": ("cutoff", "last_k")}[args.split]
        given = {option: getattr(args, option) for option in options if getattr(args, option) is not None}
        split.update(given or {"test_fraction": _test_fraction(args)})
        if args.split != "temporal":
            split["seed"] = seed
    info.update(
        {
            "name": train.name,
            "split": split,
            "num_users": train.num_users,
            "num_items": train.num_items,
            "train_size": len(train),
            "test_size": len(test),
            "has_ratings": train.has_ratings,
            "rating_scale": None if train.rating_scale is None else [float(v) for v in train.rating_scale],
            "cold_start": cold_start_counts(train, test),
        }
    )
    return info
