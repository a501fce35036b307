"""Batch inference at ML-25M's size: every user's top-k to a file, its time and peak memory.

Builds an ML-25M-shaped model (162,541 users, 59,047 items: trained for one epoch on synthetic
ratings with ML-25M's sizes, from ``benchmarks/load.py``), then runs, in a fresh process,

    mtrec recommend --model MODEL --all-users -k 100 --out recs.parquet --no-progress

and reports its wall time and peak RSS (``ru_maxrss`` of that process, interpreter, imports and
model load included) for each ``--memory-budget``. The issue's target: top-100 for all users in
at most 2 minutes, peak RSS under 4 GB.

The model is built by a process of its own: on Linux a child's ``ru_maxrss`` starts at its
parent's peak (it survives fork and exec), so the parent must stay small.

    python benchmarks/batch.py                      # full size (~5 minutes with the model build)
    python benchmarks/batch.py --users 20000        # quick: fewer users, same items
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USERS, ITEMS = 162_541, 59_047

BUILD = """
import dataclasses, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from load import synthetic_table, ROWS, USERS
from mtrec.data.building import interaction_fields
from mtrec.data.interactions import Interactions
from mtrec.data.metadata import ItemMetadata
from mtrec.model import MultitaskModel
users, dim, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
table = synthetic_table(ROWS)
if users < USERS:
    table = table.filter(table["userId"].to_numpy() <= users)
columns = {"user": table["userId"], "item": table["movieId"], "rating": table["rating"]}
data = Interactions(**interaction_fields("synthetic", columns, rating_scale=(0.5, 5.0), name="ml-25m-shaped"))
years = [1900 + int(i) % 120 for i in data.item_ids]
titles = [f"Movie {i} ({y})" for i, y in zip(data.item_ids, years)]
data = dataclasses.replace(data, item_metadata=ItemMetadata(titles, years, [["Drama"]] * data.num_items))
start = time.perf_counter()
model = MultitaskModel(embedding_dim=dim, batch_size=65536, learning_rate=0.01, seed=0)
model.fit(data, epochs=1)
model.save(out)
print(f"built a {data.num_users:,} x {data.num_items:,} model (d={dim}) on {len(data):,} ratings, "
      f"trained one epoch in {time.perf_counter() - start:.0f} s", file=sys.stderr)
"""

RUN = """
import json, resource, sys, time
from mtrec.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def recommend_in_child(model: Path, out: Path, k: int, budget_mb: int) -> dict:
    command = [
        sys.executable, "-c", RUN, "recommend", "--model", str(model), "--all-users", "-k", str(k),
        "--out", str(out), "--no-progress", "--memory-budget", str(budget_mb),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"mtrec recommend failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=USERS, help=f"users in the model (default {USERS:,})")
    parser.add_argument("--dim", type=int, default=32, help="embedding dimension (default 32, the library's default)")
    parser.add_argument("-k", type=int, default=100, help="items per user (default 100)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024], metavar="MB",
                        help="--memory-budget values to run (default 256 512 1024)")  # fmt: skip
    parser.add_argument("--dir", type=Path, default=None, help="where to write the model and files (default: a temp dir)")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        model = Path(tmp) / "model"
        start = time.perf_counter()
        build = [sys.executable, "-c", BUILD, str(Path(__file__).parent), str(args.users), str(args.dim), str(model)]
        subprocess.run(build, check=True)
        print(f"model built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        print(f"top-{args.k} for every user of a {args.users:,} x {ITEMS:,} model (d={args.dim}), written to Parquet")
        print(f"{'memory budget MB':>16} {'rows':>12} {'file MB':>8} {'seconds':>8} {'users/s':>8} {'peak RSS MB':>12}")
        for budget in args.budgets:
            out = Path(tmp) / f"recs-{budget}.parquet"
            result = recommend_in_child(model, out, args.k, budget)
            rows = pq.ParquetFile(out).metadata.num_rows
            print(
                f"{budget:>16} {rows:>12,} {out.stat().st_size / 2**20:>8.0f} {result['seconds']:>8.1f} "
                f"{args.users / result['seconds']:>8,.0f} {result['peak_rss_mb']:>12.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
