"""``mtrec recommend``: the top-k items for a user; also the options and output shared by predict and similar."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict
from typing import Any

from mtrec.cli._args import add_option, positive_int
from mtrec.recommend import Recommender

WATCH_SCORE_HELP = """\
watch score: the rank percentile of the model's raw score p among all items for the user,
i.e. the fraction of the other items in the catalogue this item outscores (1 = the user's
best, 0 = the worst); json and csv also give the raw p. Predicted ratings are clipped to
the data's rating scale (rating_raw is unclipped).
"""

#: A table column: header, key in the row, format of a number.
Column = tuple[str, str, str]

ITEM_COLUMNS: list[Column] = [("item", "item", "{}"), ("title", "title", "{}"), ("genres", "genres", "{}")]
SCORE_COLUMNS: list[Column] = [("watch score", "watch_score", "{:.3f}"), ("rating", "rating", "{:.2f}")]


DESCRIPTION = """\
The k items a trained model scores highest for a user, seen items excluded. A user the
model never saw gets the most-rated items instead (cold start).
"""


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """``--model`` (a run directory or model file) and ``--device``."""
    add_option(parser, "--model", required=True, metavar="RUN_DIR", help="run directory or model.safetensors file")
    add_option(parser, "--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")


def add_format_option(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--format", choices=("table", "json", "csv"), default="table", help="output (default table)")


def load_recommender(args: argparse.Namespace) -> Recommender:
    return Recommender.load(args.model, args.device)


def format_table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """Rows as aligned text; numbers right-aligned, missing values as '-'."""
    cells = [[_cell(row[key], number) for _, key, number in columns] for row in rows]
    widths = [max([len(header)] + [len(line[i]) for line in cells]) for i, (header, _, _) in enumerate(columns)]
    numeric = [any(isinstance(row[key], (int, float)) for row in rows) for _, key, _ in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)).rstrip()

    return "\n".join([line([header for header, _, _ in columns]), *(line(values) for values in cells)])


def _cell(value: Any, number: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(value)
    if isinstance(value, (int, float)):
        return number.format(value)
    return str(value)


def emit(
    args: argparse.Namespace,
    document: dict[str, Any],
    rows: list[dict[str, Any]],
    heading: str,
    columns: list[Column],
) -> None:
    """Print ``document`` as JSON, ``rows`` as CSV, or ``heading`` and a table of ``rows``, as --format says."""
    if args.format == "json":
        print(json.dumps(document, indent=2))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "|".join(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    else:
        print(heading)
        print(format_table(rows, columns))


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "recommend",
        help="top-k items for a user",
        description=DESCRIPTION,
        epilog=WATCH_SCORE_HELP + "\nexample:\n  mtrec recommend --model run/shared=True_LF=0.5_LR=0.5 --user 196 -k 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_option(parser)
    add_option(parser, "--user", required=True, help="raw user id, as in the training data")
    parser.add_argument("-k", type=positive_int, default=10, help="how many items (default 10)")
    add_option(parser, "--include-seen", action="store_true", help="also rank the user's training items")
    add_format_option(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = load_recommender(args).recommend(args.user, args.k, exclude_seen=not args.include_seen)
    rows = [{"user": result.user, "cold_start": result.cold_start, **asdict(item)} for item in result.items]
    if result.cold_start:
        heading = f"user {result.user!r} is unknown to the model (cold start): the {len(rows)} most-rated items"
        columns = [("rank", "rank", "{}"), *ITEM_COLUMNS, ("ratings", "num_ratings", "{}")]
    else:
        seen = "seen items included" if args.include_seen else "seen items excluded"
        heading = f"top {len(rows)} for user {result.user} ({seen})"
        columns = [("rank", "rank", "{}"), *ITEM_COLUMNS, *SCORE_COLUMNS]
    emit(args, asdict(result), rows, heading, columns)
    return 0
