"""``mtrec synth``: write synthetic ratings with a planted structure (ML-25M-shaped by default)."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

from mtrec.cli._args import add_option, non_negative_int, positive_int
from mtrec.data.files import make_directory
from mtrec.data.synth import ML25M_SHAPE, synthetic_interactions
from mtrec.errors import ConfigError, DataError
from mtrec.io.files import atomic_output


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic ratings shaped like MovieLens 25M",
        description=(
            "Write seeded synthetic ratings (user, item, rating, timestamp) with latent taste clusters, "
            "a long-tailed popularity and low-rank ratings, as Parquet or CSV. Train on them with "
            "'mtrec train --ratings FILE'."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="output file: .parquet or .csv")
    add_option(parser, "--num-ratings", type=positive_int, default=ML25M_SHAPE["num_ratings"], help="rows (default ML-25M's 25,000,095)")
    add_option(parser, "--num-users", type=positive_int, default=ML25M_SHAPE["num_users"], help="users (default 162,541)")
    add_option(parser, "--num-items", type=positive_int, default=ML25M_SHAPE["num_items"], help="items (default 59,047)")
    add_option(parser, "--seed", type=non_negative_int, default=0, help="the same seed writes the same file")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = args.out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ConfigError(f"--out must end in .parquet or .csv, got {args.out.name}")
    # Where the file goes is checked before minutes of drawing, not after.
    make_directory(args.out.parent)
    if args.out.is_dir():
        raise DataError(f"{args.out}: {os.strerror(errno.EISDIR)}")
    data = synthetic_interactions(args.num_ratings, args.num_users, args.num_items, seed=args.seed)
    table = pa.table(
        {
            "userId": data.user_ids[data.users],
            "movieId": data.item_ids[data.items],
            "rating": data.ratings,
            "timestamp": data.timestamps,
        }
    )
    with atomic_output(args.out) as temporary:
        if suffix == ".parquet":
            pq.write_table(table, temporary)
        else:
            pacsv.write_csv(table, temporary)
    print(f"wrote {len(data):,} ratings of {data.num_users:,} users on {data.num_items:,} items to {args.out}")
    return 0
