"""``mtrec predict``: watch score and predicted rating for (user, item) pairs."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from mtrec.cli._args import add_option
from mtrec.cli.recommend import WATCH_SCORE_HELP, add_format_option, add_model_option, emit, load_recommender
from mtrec.data.requests import read_pairs
from mtrec.errors import ConfigError

DESCRIPTION = """\
What a trained model predicts for one user and item (--user, --item) or for every pair
in a CSV/TSV file (--pairs: columns user and item, or the first two; header optional).
Items may be named by id or, where unambiguous, by title. A user the model never saw is
an error: it has no vector for them, so any prediction would be invented.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="watch score and rating for (user, item) pairs",
        description=DESCRIPTION,
        epilog=WATCH_SCORE_HELP + "\nexamples:\n  mtrec predict --model RUN_DIR --user 196 --item 'Star Wars (1977)'\n"
        "  mtrec predict --model RUN_DIR --pairs pairs.csv --format csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_option(parser)
    add_option(parser, "--user", help="raw user id")
    add_option(parser, "--item", help="raw item id or title")
    add_option(parser, "--pairs", metavar="FILE", help="CSV or TSV file of user,item pairs")
    add_format_option(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    single = args.user is not None or args.item is not None
    if args.pairs is not None and single:
        raise ConfigError("give either --user and --item, or --pairs FILE, not both")
    if args.pairs is None and (args.user is None or args.item is None):
        raise ConfigError("give --user and --item, or --pairs FILE")
    pairs = read_pairs(args.pairs) if args.pairs is not None else [(args.user, args.item)]
    rows = [asdict(prediction) for prediction in load_recommender(args).predict(pairs)]
    columns = [
        ("user", "user", "{}"),
        ("item", "item", "{}"),
        ("title", "title", "{}"),
        ("watch score", "watch_score", "{:.3f}"),
        ("rating", "rating", "{:.2f}"),
    ]
    emit(args, {"predictions": rows}, rows, "predicted watch scores and ratings", columns)
    return 0
