"""How fast, and in how much memory, rating files and DataFrames load: ML-25M-shaped data in every format.

Writes synthetic ratings shaped like MovieLens 25M (25,000,095 ratings, 162,541 users,
59,047 movies with sparse ids up to 209,171, half-star ratings, timestamps) as a tab-separated
``u.data``, a ``::``-separated ``ratings.dat``, a CSV with header and a Parquet file, then
loads each with :func:`mtrec.data.load_ratings_file` in a fresh process and reports its
time and peak RSS (``ru_maxrss`` of that process, interpreter and imports included).

The same ratings as a pandas and a polars DataFrame (read from the Parquet file, int32 ids,
float32 ratings, int64 times) are then loaded with :meth:`mtrec.data.Interactions.from_frame`,
each in a fresh process whose peak RSS is reset once the frame is built: their peak holds the
frame, as the user's process does. ``RSS before`` is what the process held when loading began
(interpreter, imports and, for a frame, the frame). The issue's target: a pandas frame in at most
1.2x the time and the peak RSS of the Parquet file.

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

#: The ratings as DataFrames: the Parquet file read by each library.
FRAMES = {"pandas DataFrame": "pandas", "polars DataFrame": "polars"}

# Loads argv[1] (a file, or with argv[2] a frame of that library read from the file) and prints its
# time, the RSS when loading began and the peak RSS since (reset after the frame is built).
CHILD = """
import json, sys, time
from pathlib import Path
import pyarrow as pa
from mtrec.data import Interactions, load_ratings_file

def status(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith(field)) / 1024

path, library = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
if library:
    frame = __import__(library).read_parquet(path)
    pa.default_memory_pool().release_unused()
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from here
before = status("VmRSS:")
start = time.perf_counter()
data = Interactions.from_frame(frame, rating_scale=(0.5, 5.0)) if library else load_ratings_file(path, rating_scale=(0.5, 5.0))
seconds = time.perf_counter() - start
print(json.dumps({"rows": len(data), "users": data.num_users, "items": data.num_items, "seconds": seconds,
                  "rss_before_mb": before, "peak_rss_mb": status("VmHWM:")}))
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


def load_in_child(path: Path, library: str | None = None) -> dict:
    """What loading ``path`` (or, with ``library``, a frame of it) took in a fresh process."""
    command = [sys.executable, "-c", CHILD, str(path), *([library] if library else [])]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def row(label: str, size: str, result: dict) -> str:
    return (
        f"{label:<18} {size:>8} {result['rows']:>12,} {result['users']:>8,} {result['items']:>7,} "
        f"{result['seconds']:>8.1f} {result['rss_before_mb']:>11.0f} {result['peak_rss_mb']:>12.0f}"
    )


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
        print(f"{'format':<18} {'file MB':>8} {'rows':>12} {'users':>8} {'items':>7} {'seconds':>8} {'RSS before':>11} {'peak RSS MB':>12}")
        results = {}
        for label, name in FORMATS.items():
            path = Path(tmp) / name
            results[label] = load_in_child(path)
            print(row(label, f"{path.stat().st_size / 2**20:.0f}", results[label]), flush=True)
        parquet = Path(tmp) / FORMATS["parquet"]
        for label, library in FRAMES.items():
            results[label] = load_in_child(parquet, library)
            print(row(label, "-", results[label]), flush=True)
        for label in FRAMES:
            time_ratio = results[label]["seconds"] / results["parquet"]["seconds"]
            peak_ratio = results[label]["peak_rss_mb"] / results["parquet"]["peak_rss_mb"]
            print(f"{label} / parquet: {time_ratio:.2f}x the time, {peak_ratio:.2f}x the peak RSS")


if __name__ == "__main__":
    main()
