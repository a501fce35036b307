"""Distributed training: seconds per epoch and communication per step, 1 process against 2,
with the dense and the row-sparse gradient exchange.

ML-25M-shaped synthetic ratings (written once to Parquet), the seed's network at batch 65,536 and
at batch 4,096, one thread per process, gloo on 127.0.0.1. Each configuration trains a number of
global batches (``--steps`` at batch 65,536, proportionally more at smaller batches); the epoch
time is projected from the time per step. The exchange time is the time spent summing the
gradients (``dense``: one ``all_reduce`` of every parameter's gradient; ``rows``: the embedding
rows each process's batch touched, gathered from every process, and an ``all_reduce`` of the
MLP's), measured in the processes themselves, with the bytes each process sends.

    python benchmarks/distributed.py                 # about 9 minutes
    python benchmarks/distributed.py --rounds 1 --steps 20 --batch-size 65536 4096 1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tables import table  # benchmarks/tables.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
#: Process counts of the projection, and its links: (name, bytes per second, seconds per message).
SHARES = (8, 64)
LINKS = (("10 GbE", 1.1e9, 50e-6), ("NVLink", 300e9, 10e-6))


def worker(path: Path, steps: int, batch_size: int, exchange: str, out: Path) -> None:
    """One process: train ``steps`` global batches and write its timings to ``out``."""
    from mtrec.data import load_ratings_file, random_split
    from mtrec.model import MultitaskModel, scaled_learning_rate
    from mtrec.nn.losses import Batch
    from mtrec.train.distributed import Distributed, launched_by_torchrun
    from mtrec.train.sampling import EpochSampler

    torch.set_num_threads(1)
    distributed = Distributed.start("gloo", exchange=exchange) if launched_by_torchrun() else None
    train, _ = random_split(load_ratings_file(path), test_fraction=0.05, seed=0)
    model = MultitaskModel(batch_size=batch_size, learning_rate=scaled_learning_rate(batch_size), seed=0)
    network = model.build_network(train.num_users, train.num_items)
    step = model.make_step(network)
    communication, sent = [0.0], [0.0]
    if distributed is not None:
        share = 2 * (distributed.world_size - 1) / distributed.world_size  # a ring all_reduce's bytes out, per byte

        def timed_sum(tensors):
            started = time.perf_counter()
            distributed.sum(tensors)
            communication[0] += time.perf_counter() - started
            sent[0] += share * sum(t.numel() * t.element_size() for t in tensors)

        def timed_rows(groups, dense):
            started = time.perf_counter()
            distributed.sum_rows(groups, dense)
            communication[0] += time.perf_counter() - started
            sent[0] += share * sum(t.numel() * t.element_size() for t in dense)
            # an all_gather sends this process's rows (values and ids) once to each of the others
            for indices, tables in groups:
                rows = torch.unique(indices).numel()
                sent[0] += (distributed.world_size - 1) * rows * (8 + sum(t.shape[1] * t.element_size() for t in tables))

        step.reduce = timed_sum
        if exchange == "rows":
            step.reduce_rows = timed_rows
    sampler = EpochSampler(train, 0, torch.device("cpu"), True)
    users, items, negatives, ratings = sampler.draw()
    touched = 0
    shares = dict.fromkeys(SHARES, 0)
    times = []
    for index in range(steps + 1):  # the first step warms up
        start, stop = index * batch_size, (index + 1) * batch_size
        count = stop - start
        if index == 1:
            communication[0] = sent[0] = 0.0
        began = time.perf_counter()
        lo, hi = distributed.share(start, stop) if distributed else (start, stop)
        step(Batch(users[lo:hi], items[lo:hi], negatives[lo:hi], ratings[lo:hi], count if distributed else None))
        if index:
            times.append(time.perf_counter() - began)
            rows = torch.unique(users[start:stop]).numel() + torch.unique(torch.cat([items[start:stop], negatives[start:stop]])).numel()
            touched += rows
            if distributed is None and index <= 10:  # the rows each of N processes would send
                for world in SHARES:
                    for rank in range(world):
                        lo_r, hi_r = start + rank * count // world, start + (rank + 1) * count // world
                        shares[world] += (
                            torch.unique(users[lo_r:hi_r]).numel()
                            + torch.unique(torch.cat([items[lo_r:hi_r], negatives[lo_r:hi_r].reshape(-1)])).numel()
                        )
    if distributed is not None:
        distributed.barrier()
    adam = []
    for _ in range(10):  # the fixed part of a step: Adam over every parameter, whatever the batch
        began = time.perf_counter()
        step.optimizer.step()
        adam.append(time.perf_counter() - began)
    gradient_bytes = sum(t.numel() * t.element_size() for t in step.gradient_tensors())
    result = {
        "step_s": sum(times) / len(times),
        "communication_s": communication[0] / steps,
        "sent_bytes": sent[0] / steps,
        "steps_per_epoch": -(-len(train) // batch_size),
        "gradient_bytes": gradient_bytes,
        "touched_rows": touched / steps,
        "adam_s": sorted(adam)[len(adam) // 2],
        "share_rows": {world: rows / min(steps, 10) for world, rows in shares.items()},
        "row_bytes": 8 + 4 * (model.embedding_dim + 1),
        "mlp_bytes": sum(p.numel() * 4 for p in network.rating_mlp.parameters()),
        "ratings": len(train),
    }
    rank = 0 if distributed is None else distributed.rank
    (out / f"rank-{rank}.json").write_text(json.dumps(result))
    if distributed is not None:
        distributed.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="global batches timed at batch 65,536 (default 30)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[65536, 4096])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every configuration (medians taken)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        data, steps, exchange, out = args.worker
        worker(Path(data), int(steps), args.batch_size[0], exchange, Path(out))
        return

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    configurations = [(batch, 1, "dense") for batch in args.batch_size]
    configurations += [(batch, 2, exchange) for batch in args.batch_size for exchange in ("dense", "rows")]
    configurations.sort(key=lambda c: -c[0])
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = folder / "synth-25m.parquet"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mtrec", "synth", "--out", str(data)], check=True, env=env, stdout=subprocess.DEVNULL)
        print(f"ML-25M-shaped synthetic ratings written in {time.perf_counter() - started:.0f} s")
        for round_ in range(args.rounds):  # every configuration once a round: the machine's drift hits all alike
            results = {}
            for batch, processes, exchange in configurations:
                out = folder / f"r{round_}-b{batch}-p{processes}-{exchange}"
                out.mkdir()
                steps = args.steps * max(1, 65536 // batch // 4)
                command = [__file__, "--batch-size", str(batch), "--worker", str(data), str(steps), exchange, str(out)]
                if processes == 1:
                    command = [sys.executable, *command]
                else:
                    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *command]
                subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
                ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
                # the slowest process sets the pace
                for key in ("step_s", "communication_s", "sent_bytes"):
                    ranks[0][key] = max(r[key] for r in ranks)
                results[batch, processes, exchange] = ranks[0]
            rounds.append(results)
    median = statistics.median
    results = {}
    for config in configurations:
        merged = dict(rounds[0][config])
        for key in ("step_s", "communication_s", "sent_bytes", "adam_s"):
            merged[key] = median(r[config][key] for r in rounds)
        results[config] = [merged]
    rows = [
        [
            "batch",
            "processes x threads",
            "exchange",
            "s / step",
            "s / epoch (projected)",
            "speed-up",
            "exchange s / step",
            "MB sent / step / process",
            "gradient MB",
            "touched rows / step",
        ]
    ]
    for (batch, processes, exchange), (r,) in results.items():
        one = results[batch, 1, "dense"][0]
        speedup = median(rd[batch, 1, "dense"]["step_s"] / rd[batch, processes, exchange]["step_s"] for rd in rounds)
        rows.append([
            f"{batch:,}", f"{processes} x 1", exchange if processes > 1 else "–", f"{r['step_s']:.4f}",
            f"{r['step_s'] * r['steps_per_epoch']:.0f}", f"{speedup:.2f}x",
            f"{r['communication_s']:.4f}" if processes > 1 else "–", f"{r['sent_bytes'] / 1e6:.1f}" if processes > 1 else "–",
            f"{r['gradient_bytes'] / 1e6:.1f}", f"{r['touched_rows']:,.0f}",
        ])  # fmt: skip
    print(
        f"{one['ratings']:,} training ratings; one thread per process, gloo on 127.0.0.1; "
        f"{args.steps} steps timed at batch 65,536 (more at smaller batches) after one of warm-up; "
        f"medians of {args.rounds} interleaved rounds (a speed-up: the median of each round's ratio):"
    )
    print(table(rows))
    print()
    print(projection(results, args.batch_size))


def projection(results: dict, batch_sizes: list[int]) -> str:
    """Step time on N processes: the batch's computation over N, Adam's fixed part, and the exchange.

    The exchange of V bytes on a ring: V / bandwidth + messages × latency, with V per process
    2(N-1)/N × the gradient for ``dense`` (2(N-1) messages), and (N-1)/N × the rows all N shares
    touch (measured on the batches above) × their bytes, plus the MLP's all_reduce, for ``rows``
    (five all_gathers of N-1 messages and an all_reduce).
    """
    rows = [["batch", "processes", "link", "exchange", "MB sent / process", "exchange ms", "step ms", "speed-up"]]
    for batch in batch_sizes:
        one = results[batch, 1, "dense"][0]
        fixed, per_batch = one["adam_s"], one["step_s"] - one["adam_s"]
        for world in SHARES:
            for link, bandwidth, latency in LINKS:
                for exchange in ("dense", "rows"):
                    if exchange == "dense":
                        volume, messages = 2 * (world - 1) / world * one["gradient_bytes"], 2 * (world - 1)
                    else:
                        volume = (world - 1) / world * one["share_rows"][str(world)] * one["row_bytes"]
                        volume += 2 * (world - 1) / world * one["mlp_bytes"]
                        messages = 7 * (world - 1)
                    exchange_s = volume / bandwidth + messages * latency
                    step_s = per_batch / world + fixed + exchange_s
                    rows.append(
                        [
                            f"{batch:,}",
                            str(world),
                            link,
                            exchange,
                            f"{volume / 1e6:.1f}",
                            f"{exchange_s * 1e3:.1f}",
                            f"{step_s * 1e3:.1f}",
                            f"{one['step_s'] / step_s:.1f}x",
                        ]
                    )
    adam = ", ".join(f"{results[b, 1, 'dense'][0]['adam_s'] * 1e3:.1f} ms at batch {b:,}" for b in batch_sizes)
    head = (
        f"Projected (from the single process's step, its Adam part ({adam}), and the volumes above; "
        "10 GbE: 1.1 GB/s and 50 us a message, NVLink: 300 GB/s and 10 us):"
    )
    return head + "\n" + table(rows)


if __name__ == "__main__":
    main()
