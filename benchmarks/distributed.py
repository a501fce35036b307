"""Distributed training: seconds per epoch and communication per step, 1 process against 2.

ML-25M-shaped synthetic ratings (written once to Parquet), the seed's network at batch 65,536,
one thread per process, gloo on 127.0.0.1. Each configuration trains the same number of global
batches (``--steps``, a part of an epoch); the epoch time is projected from the time per step.
The communication time is the time spent in the gradient's ``all_reduce`` (dense: every parameter,
every step), measured in the processes themselves; the volume of a row-sparse exchange (only the
rows a batch touches) is counted beside it.

    python benchmarks/distributed.py                 # about 8 minutes
    python benchmarks/distributed.py --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def worker(path: Path, steps: int, batch_size: int, out: Path) -> None:
    """One process: train ``steps`` global batches and write its timings to ``out``."""
    from mtrec.data import load_ratings_file, random_split
    from mtrec.distributed import Distributed, launched_by_torchrun
    from mtrec.losses import Batch
    from mtrec.model import MultitaskModel, scaled_learning_rate
    from mtrec.sampling import EpochSampler

    torch.set_num_threads(1)
    distributed = Distributed.start("gloo") if launched_by_torchrun() else None
    train, _ = random_split(load_ratings_file(path), test_fraction=0.05, seed=0)
    model = MultitaskModel(batch_size=batch_size, learning_rate=scaled_learning_rate(batch_size), seed=0)
    network = model.build_network(train.num_users, train.num_items)
    step = model.make_step(network)
    communication = [0.0]
    if distributed is not None:
        def timed_sum(tensors):
            started = time.perf_counter()
            distributed.sum(tensors)
            communication[0] += time.perf_counter() - started

        step.reduce = timed_sum
    sampler = EpochSampler(train, 0, torch.device("cpu"), True)
    users, items, negatives, ratings = sampler.draw()
    touched = 0
    times = []
    for index in range(steps + 1):  # the first step warms up
        start, stop = index * batch_size, (index + 1) * batch_size
        count = stop - start
        if index == 1:
            communication[0] = 0.0
        began = time.perf_counter()
        lo, hi = distributed.share(start, stop) if distributed else (start, stop)
        step(Batch(users[lo:hi], items[lo:hi], negatives[lo:hi], ratings[lo:hi], count if distributed else None))
        if index:
            times.append(time.perf_counter() - began)
            rows = torch.unique(users[start:stop]).numel() + torch.unique(torch.cat([items[start:stop], negatives[start:stop]])).numel()
            touched += rows
    if distributed is not None:
        distributed.barrier()
    gradient_bytes = sum(t.numel() * t.element_size() for t in step.gradient_tensors())
    result = {
        "step_s": sum(times) / len(times),
        "communication_s": communication[0] / steps,
        "steps_per_epoch": -(-len(train) // batch_size),
        "gradient_bytes": gradient_bytes,
        "touched_rows": touched / steps,
        "row_bytes": 4 * (model.embedding_dim + 1),
        "ratings": len(train),
    }
    rank = 0 if distributed is None else distributed.rank
    (out / f"rank-{rank}.json").write_text(json.dumps(result))
    if distributed is not None:
        distributed.close()


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="global batches timed per configuration (default 40)")
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), int(args.worker[1]), args.batch_size, Path(args.worker[2]))
        return

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = folder / "synth-25m.parquet"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mtrec", "synth", "--out", str(data)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        print(f"ML-25M-shaped synthetic ratings written in {time.perf_counter() - started:.0f} s")
        results = {}
        for processes in (1, 2):
            out = folder / f"p{processes}"
            out.mkdir()
            command = [__file__, "--batch-size", str(args.batch_size), "--worker", str(data), str(args.steps), str(out)]
            if processes == 1:
                command = [sys.executable, *command]
            else:
                command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *command]
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
            results[processes] = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    one = results[1][0]
    rows = [["processes x threads", "s / step", "s / epoch (projected)", "speed-up", "all_reduce s / step",
             "gradient MB / step", "touched rows / step", "row-sparse MB / step"]]
    for processes, ranks in results.items():
        step_s = max(r["step_s"] for r in ranks)
        communication = max(r["communication_s"] for r in ranks)
        r = ranks[0]
        rows.append([
            f"{processes} x 1", f"{step_s:.3f}", f"{step_s * r['steps_per_epoch']:.0f}",
            f"{one['step_s'] / step_s:.2f}x", f"{communication:.3f}" if processes > 1 else "–",
            f"{r['gradient_bytes'] / 1e6:.1f}", f"{r['touched_rows']:,.0f}",
            f"{r['touched_rows'] * (r['row_bytes'] + 8) / 1e6:.1f}",
        ])  # fmt: skip
    print(f"{one['ratings']:,} training ratings, batch {args.batch_size:,} ({one['steps_per_epoch']} steps an epoch), "
          f"{args.steps} steps timed after one of warm-up:")
    print(table(rows))


if __name__ == "__main__":
    main()
