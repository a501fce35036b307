"""``mtrec recommend``: the top-k items for a user; also the options and output shared by predict and similar."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mtrec.cli._args import add_option, positive_int
from mtrec.data.features import parse_feature_types, read_feature_file
from mtrec.data.requests import read_history, read_users
from mtrec.errors import ConfigError, DataError, RunExistsError
from mtrec.io.files import atomic_output
from mtrec.serving.foldin import RatingError
from mtrec.serving.recommender import Recommender
from mtrec.serving.retrieval import AUTO_ITEMS, EF_PER_DIMENSION, IndexConfig

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
The k items a trained model scores highest for a user (--user), seen items excluded. A user the
model never saw gets the most-rated items instead (cold start). --history FILE recommends for a
new user from the items they rated (fold-in: their vector is fitted, everything else frozen).
--all-users or --users FILE writes every user's top k to --out (Parquet or CSV), scored in blocks.
--exclude, --include (a candidate set) and --genre filter what is recommended.

With a model trained with features (--features items,users): --candidates FILE recommends among
the items of an item features file, those the model never saw scored by their attributes alone;
--user-features age=31 gender=F recommends for a new user by their attributes (with --history too,
by both).
"""


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """``--model`` (a run directory or model file) and ``--device``."""
    add_option(parser, "--model", required=True, metavar="RUN_DIR", help="run directory or model.safetensors file")
    add_option(parser, "--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")


def add_format_option(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--format", choices=("table", "json", "csv"), default="table", help="output (default table)")


def add_index_options(parser: argparse.ArgumentParser) -> None:
    """``--index`` and the HNSW graph's parameters (:mod:`mtrec.serving.retrieval`)."""
    defaults = IndexConfig()
    add_option(parser, "--index", choices=("auto", "exact", "hnsw"), default="auto",
               help=f"which items a list scores: exact, every one; hnsw, an HNSW graph's candidates, re-scored "
                    f"exactly (needs the ann extra; the graph is saved beside the model); auto (default), exact "
                    f"below {AUTO_ITEMS:,} items, else hnsw")  # fmt: skip
    add_option(
        parser,
        "--hnsw-m",
        type=positive_int,
        default=None,
        metavar="M",
        help=f"--index hnsw: links per item and layer of the graph; more, better recall, more memory (default {defaults.m})",
    )
    add_option(
        parser,
        "--hnsw-ef-construction",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"--index hnsw: candidates kept while the graph is built; more, a better graph (default {defaults.ef_construction})",
    )
    add_option(
        parser,
        "--hnsw-ef-search",
        type=positive_int,
        default=None,
        metavar="N",
        help="--index hnsw: candidates kept while a list is searched; more, better recall, slower "
        f"(default {EF_PER_DIMENSION} x the graph's dimension: 272 at d = 32)",
    )


def index_config(args: argparse.Namespace) -> IndexConfig:
    """The index the options of :func:`add_index_options` ask for."""
    given = {"kind": args.index, "m": args.hnsw_m, "ef_construction": args.hnsw_ef_construction, "ef_search": args.hnsw_ef_search}
    return IndexConfig.of(**{name: value for name, value in given.items() if value is not None})


def load_recommender(args: argparse.Namespace, index: IndexConfig | None = None) -> Recommender:
    return Recommender.load(args.model, args.device, index)


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
    who = parser.add_mutually_exclusive_group()
    add_option(who, "--user", help="raw user id, as in the training data")
    add_option(who, "--history", metavar="FILE", help="a new user's history: CSV or TSV of item[,rating] (ids or titles; header optional)")
    add_option(who, "--all-users", action="store_true", help="every user the model knows, to --out")
    add_option(who, "--users", metavar="FILE", help="the users listed in FILE (one raw id a line), to --out")
    parser.add_argument("-k", type=positive_int, default=10, help="how many items (default 10)")
    add_option(parser, "--include-seen", action="store_true", help="also rank the user's training items")
    add_option(
        parser,
        "--instant",
        action="store_true",
        help="with --history: read the new user's vector from the history through the model's encoder, without fitting "
        "(under a millisecond; ranks as well for a history-aware model, e.g. the quality preset's)",
    )
    add_option(
        parser,
        "--user-features",
        nargs="+",
        default=None,
        metavar="NAME=VALUE",
        help="a new user's attributes, for a model with user features (alone, or with --history): e.g. age=31 gender=F (a multi-valued one as a|b)",
    )
    add_option(
        parser,
        "--candidates",
        metavar="FILE",
        help="recommend among the items of this item features file (the model's item features' columns); "
        "items the model never saw are scored by their attributes alone (a model with item features)",
    )
    add_option(
        parser,
        "--candidate-types",
        metavar="TYPES",
        help="--candidates: the kinds of its columns, e.g. year:numeric (default: as the model read its item features)",
    )
    add_option(parser, "--exclude", nargs="+", default=(), metavar="ITEM", help="items never to recommend (ids or titles)")
    add_option(parser, "--include", nargs="+", default=None, metavar="ITEM", help="recommend only among these items")
    add_option(
        parser,
        "--genre",
        dest="genres",
        nargs="+",
        default=(),
        metavar="GENRE",
        help="recommend only items of one of these genres (where the data has genres)",
    )
    add_option(parser, "--out", metavar="FILE", help="--all-users / --users: the file to write, .parquet or .csv")
    add_option(parser, "--force", action="store_true", help="--out: replace the file if it exists")
    add_option(
        parser,
        "--memory-budget",
        type=positive_int,
        default=512,
        metavar="MB",
        help="--all-users / --users: memory for one block of users' scores (default 512 MB)",
    )
    add_option(parser, "--no-progress", action="store_true", help="no progress bar")
    add_index_options(parser)
    add_format_option(parser)
    parser.set_defaults(handler=run)
    return parser


def check_out(path: str | None, many: bool, force: bool = False) -> Path | None:
    """The --out file, checked before any scoring: where it can be written, and in a known format."""
    if not many:
        if path is not None:
            raise ConfigError("--out goes with --all-users or --users (one user's list is printed)")
        return None
    if path is None:
        raise ConfigError("--all-users and --users write to a file: give --out FILE.parquet or FILE.csv")
    out = Path(path)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ConfigError(f"--out must end in .parquet or .csv, got {out.name}")
    folder = out.parent
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory to write {out.name} in")
    if out.exists() and not out.is_dir() and not force:
        raise RunExistsError(f"{out} exists: give --force to replace it, or another --out")
    if not os.access(folder, os.W_OK) or (out.exists() and (out.is_dir() or not os.access(out, os.W_OK))):
        raise DataError(f"{out}: cannot be written")
    return out


def write_all(args: argparse.Namespace, recommender: Recommender, out: Path) -> int:
    """Every (or every listed) user's top k to ``out``, atomically, with a progress bar."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from tqdm import tqdm

    users = read_users(args.users) if args.users else None
    total = len(users) if users is not None else recommender.model.data_.num_users
    bar = tqdm(total=total, desc="recommend", unit="user", disable=args.no_progress, file=sys.stderr)
    rows = 0
    try:
        with atomic_output(out) as temporary:
            writer = None
            for table in recommender.recommend_all(
                users, args.k, not args.include_seen, args.exclude, args.include, args.genres,
                budget_bytes=args.memory_budget * 2**20, progress=bar.update,
            ):  # fmt: skip
                if writer is None:
                    parquet = out.suffix.lower() == ".parquet"
                    writer = pq.ParquetWriter(temporary, table.schema) if parquet else pacsv.CSVWriter(temporary, table.schema)
                writer.write_table(table)
                rows += table.num_rows
            if writer is not None:
                writer.close()
    finally:
        bar.close()
    print(f"wrote {rows:,} recommendations for {total:,} users to {out}")
    return 0


def _user_features(args: argparse.Namespace, recommender: Recommender) -> dict[str, Any] | None:
    """``--user-features``' NAME=VALUE pairs, numbers for the model's numeric columns."""
    if args.user_features is None:
        return None
    fitted = recommender.model.data_.features.get("users")
    if fitted is None:
        raise ConfigError("--user-features: this model was trained without user features (train it with --features users)")
    kinds = {column["name"]: column["kind"] for column in fitted.map.columns}
    record: dict[str, Any] = {}
    for pair in args.user_features:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--user-features takes NAME=VALUE pairs, got {pair!r}")
        if kinds.get(name) == "numeric":
            try:
                record[name] = float(value)
            except ValueError:
                raise ConfigError(f"--user-features: {name} is numeric, got {value!r}") from None
        else:
            record[name] = value
    return record


def run(args: argparse.Namespace) -> int:
    if not (args.user or args.history or args.all_users or args.users or args.user_features):
        raise ConfigError("say whom to recommend for: --user, --history, --user-features, --all-users or --users")
    if args.user_features is not None and (args.user or args.all_users or args.users):
        raise ConfigError("--user-features describes a new user: give it alone or with --history, not with --user, --all-users or --users")
    if args.instant and not args.history:
        raise ConfigError("--instant folds in a new user's history: give --history FILE too")
    if args.candidate_types and not args.candidates:
        raise ConfigError("--candidate-types describes the columns of --candidates FILE: give it too")
    if args.candidates and args.include is not None:
        raise ConfigError("--candidates and --include are two candidate sets: give one")
    out = check_out(args.out, args.all_users or args.users is not None, args.force)  # before any scoring
    history = read_history(args.history) if args.history else None  # before the model is loaded
    declared = parse_feature_types(args.candidate_types)
    recommender = load_recommender(args, index_config(args))
    if args.candidates:
        fitted = recommender.model.data_.features.get("items")
        if fitted is None:
            raise ConfigError("--candidates: this model was trained without item features (train it with --features items)")
        kinds = {column["name"]: column["kind"] for column in fitted.map.columns}  # as the model read them
        candidates = read_feature_file(args.candidates, "item", declared, defaults=kinds)
        recommender, args.include = recommender.with_candidates(candidates)
    features = _user_features(args, recommender)
    if out is not None:
        return write_all(args, recommender, out)
    filters = {"exclude": args.exclude, "include": args.include, "genres": args.genres}
    if history is not None or features is not None:
        try:
            result = recommender.recommend_history(history.entries if history else [], args.k, instant=args.instant, features=features, **filters)
        except RatingError as error:  # the library counts entries; the user knows the file's lines
            raise DataError(f"{args.history}, line {history.lines[error.position]}: {error.problem}") from None
    else:
        result = recommender.recommend(args.user, args.k, exclude_seen=not args.include_seen, **filters)
    rows = [{"user": result.user, "cold_start": result.cold_start, **asdict(item)} for item in result.items]
    who = f"the history in {args.history}" if history is not None else f"user {result.user}"
    if features is not None:
        who = f"{who} and the attributes given" if history is not None else "a new user with the attributes given"
    if result.cold_start:
        why = "an empty history" if history is not None else f"user {result.user!r} is unknown to the model"
        heading = f"{why} (cold start): the {len(rows)} most-rated items"
        columns = [("rank", "rank", "{}"), *ITEM_COLUMNS, ("ratings", "num_ratings", "{}")]
    else:
        seen = "seen items included" if args.include_seen else "seen items excluded"
        heading = f"top {len(rows)} for {who} ({seen})"
        columns = [("rank", "rank", "{}"), *ITEM_COLUMNS, *SCORE_COLUMNS]
    emit(args, asdict(result), rows, heading, columns)
    return 0
