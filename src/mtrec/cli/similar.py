"""``mtrec similar``: the items nearest to an item in the model's item space."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from mtrec.cli._args import add_option, positive_int
from mtrec.cli.recommend import ITEM_COLUMNS, add_format_option, add_index_options, add_model_option, emit, index_config, load_recommender

DESCRIPTION = """\
The k items closest to an item by cosine similarity of the factorisation head's item
vectors (Q). The item may be named by id or, where unambiguous, by title (case-insensitive,
with or without the year).
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "similar",
        help="items similar to an item",
        description=DESCRIPTION,
        epilog="example:\n  mtrec similar --model RUN_DIR --item 'star wars' -k 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_option(parser)
    add_option(parser, "--item", required=True, help="raw item id or title")
    parser.add_argument("-k", type=positive_int, default=10, help="how many items (default 10)")
    add_index_options(parser)
    add_format_option(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = load_recommender(args, index_config(args)).similar(args.item, args.k)
    rows = [asdict(item) for item in result.items]
    heading = f"the {len(rows)} items most similar to {result.item} {result.title or ''}".rstrip()
    columns = [("rank", "rank", "{}"), *ITEM_COLUMNS, ("similarity", "similarity", "{:.3f}")]
    emit(args, asdict(result), rows, heading, columns)
    return 0
