"""``mtrec train --seeds``: one run per seed, trained as one job, and each metric's mean ± sd."""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from mtrec.config import RunConfig
from mtrec.runs import RunJob, train_runs
from mtrec.tracking import connect, tracked, tracked_training

#: The test metrics the summary shows, where the runs measured them.
SHOWN = ("mse", "rmse", "mae", "mrr", "ndcg@10", "recall@10", "hr@10", "map@10")


def train_seeds(args: argparse.Namespace, config: RunConfig, root: Path, tqdm) -> int:
    """Train ``config`` once per seed of ``args.seeds`` in ``root/seed-<k>``; print the mean ± sd."""
    seeds = args.seeds
    quiet = args.no_progress
    tracker = connect(args.tracker, args.tracking_uri, root.parent)  # before any work
    load = config.data.split_loader(args.data_dir)
    jobs = []
    bar = tqdm(total=len(seeds) * config.epochs, desc="train", unit="epoch", disable=quiet, file=sys.stderr, delay=0.5)

    def on_epoch(record) -> None:
        bar.update(1)

    with tracked(tracker, f"seeds {root}") as parent:
        for seed in seeds:
            train, validation, test, summary = load(seed)
            run_config = config.replace(seed=seed).for_data(train)
            path = root / f"seed-{seed}"

            def callbacks(run_config=run_config, path=path, seed=seed) -> contextlib.AbstractContextManager:
                return tracked_training(tracker, run_config, path, on_epoch, name=f"seed-{seed}", parent=parent)

            jobs.append(RunJob(f"seed {seed}", run_config, train, validation, test, path, summary, callbacks))
        try:
            results = train_runs(
                jobs, None if args.stack == "auto" else args.stack, force=args.force, checkpoint_every=args.checkpoint_every,
                resume=args.resume, on_note=lambda note: bar.write(f"mtrec train: {note}", file=sys.stderr),
            )  # fmt: skip
        finally:
            bar.close()
    how = "chosen on validation" if config.early_stopping else "the last"
    for seed, metrics in zip(seeds, results):
        selected = metrics["selected"]
        print(f"seed {seed}: epoch {selected['epoch']} ({how}): {_scores(selected)}")
    print(summary_table(results, len(seeds), root))
    return 0


def _scores(block: dict[str, Any]) -> str:
    return "  ".join(f"{name.upper()} {block[f'test_{name}']:.4f}" for name in ("mse", "mrr") if block.get(f"test_{name}") is not None)


def summary_table(results: list[dict[str, Any]], count: int, root: Path) -> str:
    """Each test metric's mean ± sd (the sample's, n − 1) over the runs, of the model each keeps."""
    kept = [metrics.get("model") or metrics["selected"] for metrics in results]
    lines = [f"test metrics over {count} seeds (mean ± sd; runs in {root}):"]
    for name in SHOWN:
        values = [block.get(f"test_{name}") for block in kept]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            continue
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"  {name:<10} {statistics.fmean(values):.4f} ± {sd:.4f}")
    return "\n".join(lines)
