"""How fast, and in how much memory, rating files load: ML-25M-shaped data in every format.

Writes synthetic ratings shaped like MovieLens 25M (25,000,095 ratings, 162,541 users,
59,047 movies with sparse ids up to 209,171, half-star ratings, timestamps) as a tab-separated
``u.data``, a ``::``-separated ``ratings.dat``, a CSV with header and a Parquet file, then
loads each with :func:`mtrec.data.load_ratings_file` in a fresh process and reports its
time and peak RSS (``ru_maxrss`` of that process, interpreter and imports included).

The files are written by a process of their own: on Linux a child's ``ru_maxrss`` starts
at its parent's peak (it survives fork and exec), so the parent must stay small.

    python benchmarks/load.py                  # full size (a few minutes, ~4 GB of disk)
    python benchmarks/load.py --rows 1000000   # quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROWS, USERS, ITEMS, MAX_ITEM_ID = 25_000_095, 162_541, 59_047, 209_171
FORMATS = {
    "tab (u.data)": "u.data",
    ":: (ratings.dat)": "ratings.dat",
    "csv + header": "ratings.csv",
    "parquet": "ratings.parquet",
}

CHILD = """
import json, resource, sys, time
from mtrec.data import load_ratings_file
start = time.perf_counter()
data = load_ratings_file(sys.argv[1], rating_scale=(0.5, 5.0))
seconds = time.perf_counter() - start
print(json.dumps({"rows": len(data), "users": data.num_users, "items": data.num_items, "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def synthetic_table(rows: int, seed: int = 0) -> pa.Table:
    """Unique (user, item) pairs with ML-25M's sizes; every user and item occurs at full size."""
    rng = np.random.default_rng(seed)
    item_ids = np.sort(rng.choice(np.arange(1, MAX_ITEM_ID + 1), size=ITEMS, replace=False))
    keys = rng.permutation(np.unique(rng.integers(0, USERS * ITEMS, size=int(rows * 1.01) + 1000)))[:rows]
    users, items = np.divmod(keys, ITEMS)
    return pa.table(
        {
            "userId": (users + 1).astype(np.int32),
            "movieId": item_ids[items].astype(np.int32),
            "rating": (rng.integers(1, 11, size=rows) / 2).astype(np.float32),
            "timestamp": rng.integers(789_652_009, 1_574_327_703, size=rows),
        }
    )


def write_text(table: pa.Table, path: Path, delimiter: str, header: bool) -> None:
    """Delimited text; ``::`` is written as tabs then replaced, batch by batch."""
    with open(path, "wb") as handle:
        for start in range(0, table.num_rows, 2_000_000):
            sink = pa.BufferOutputStream()
            options = pacsv.WriteOptions(
                include_header=header and start == 0,
                delimiter="\t" if delimiter == "::" else delimiter,
                quoting_style="none",
            )
            pacsv.write_csv(table.slice(start, 2_000_000), sink, write_options=options)
            data = sink.getvalue().to_pybytes()
            handle.write(data.replace(b"\t", b"::") if delimiter == "::" else data)


def write_all(table: pa.Table, folder: Path) -> None:
    write_text(table, folder / FORMATS["tab (u.data)"], "\t", header=False)
    write_text(table, folder / FORMATS[":: (ratings.dat)"], "::", header=False)
    write_text(table, folder / FORMATS["csv + header"], ",", header=True)
    pq.write_table(table, folder / FORMATS["parquet"])


def load_in_child(path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS, help=f"ratings to generate (default {ROWS:,})")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    parser.add_argument("--write", type=Path, default=None, help=argparse.SUPPRESS)  # the writer process
    args = parser.parse_args()
    if args.write:
        write_all(synthetic_table(args.rows), args.write)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--write", tmp], check=True)
        print(f"wrote {args.rows:,} ratings in 4 formats in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        print(
            f"{'format':<18} {'file MB':>8} {'rows':>12} {'users':>8} {'items':>7} {'seconds':>8} {'peak RSS MB':>12}"
        )
        for label, name in FORMATS.items():
            path = Path(tmp) / name
            result = load_in_child(path)
            print(
                f"{label:<18} {path.stat().st_size / 2**20:>8.0f} {result['rows']:>12,} {result['users']:>8,} "
                f"{result['items']:>7,} {result['seconds']:>8.1f} {result['peak_rss_mb']:>12.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
