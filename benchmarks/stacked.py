"""Many runs as one job: the sequential path (``--stack 1``) against the stacked one (``--stack auto``).

Each item is one mtrec command, run twice in fresh processes with default threads, once per path,
in alternating order round by round (interleaved, so that the machine's drift falls on both);
the table shows each path's median wall time, their ratio, and the largest difference between the
two paths' selected test metrics over all runs (the stacked path trains each run as it trains
alone: 0 here, and within 1e-5 wherever the kernels round alike).

Items (``--items``, comma separated):

* ``experiments``: the assignment's experiments, ``mtrec experiments --seeds 3`` (4 configurations ×
  3 seeds, 200 epochs: two stacked groups of 6, shared and separate sharing);
* ``sweep``: the λ sweep, ``mtrec experiments --sweep --seeds 1`` (11 λF × 2 sharings; λF = 1 trains
  without ratings, so it makes groups of its own);
* ``seeds``: 5 seeds of mtrec 0.3's quality preset (fused step), ``mtrec train --preset quality-0.3 --seeds 0-4``;
* ``quality``: 5 seeds of the quality preset, ``mtrec train --seeds 0-4`` (the autograd step: these
  runs do not stack, and the job trains them one at a time, saying so);
* ``study``: the multi-task study, ``mtrec experiments --study multitask --preset quality-0.3
  --seeds 3`` (28 configurations × 3 seeds at batch 4,096: the fixed weights stack, the learned
  weightings train alone);
* ``tune``: a 50-trial search of the settings stacked runs may vary (learning rate and decay, loss
  weights, EMA) from the seed preset with a validation set, 15 epochs a trial,
  ``mtrec tune --trials 50 --preset seed --search ... --tune-seed R``: ``--stack auto`` asks for 10
  trials at a time. Round R searches with tuner seed R. The two searches pick different trials
  after the sampler's first 10, so instead of the largest difference the table shows each path's
  best validation criterion, averaged over the rounds (run it with ``--rounds 3``).

* ``steps``: why the speed-up is bounded on a CPU: one fused step of the seed's network at batches
  256, 6 × 256 and 12 × 256 (the same number of operations, 1, 6 and 12 times the arithmetic), in
  this process, interleaved; a least-squares line through them splits a step at batch 256 into
  overhead and arithmetic, and K stacked runs can be at most (overhead + arithmetic) / arithmetic
  times faster than one after another.

``--epochs N`` shortens every item (a quick look; the README's table is without it).

    python benchmarks/stacked.py                          # experiments and seeds: about 25 minutes
    python benchmarks/stacked.py --items sweep --epochs 50
    python benchmarks/stacked.py --items tune --rounds 3   # about 17 minutes
    python benchmarks/stacked.py --items study --epochs 10 # about 12 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()

ITEMS = {
    "experiments": ["experiments", "--seeds", "3", "--root", "{out}/run", "--out", "{out}/report"],
    "sweep": ["experiments", "--sweep", "--seeds", "1", "--root", "{out}/run", "--out", "{out}/report"],
    "seeds": ["train", "--preset", "quality-0.3", "--seeds", "0-4", "--logdir", "{out}/run"],
    "quality": ["train", "--seeds", "0-4", "--logdir", "{out}/run"],
    "study": ["experiments", "--study", "multitask", "--preset", "quality-0.3", "--seeds", "3", "--root", "{out}/run", "--out", "{out}/report"],
    "tune": ["tune", "--trials", "50", "--preset", "seed", "--valid-fraction", "0.05", "--lr-schedule", "exponential", "--epochs", "15",
             "--search", "learning_rate,lr_gamma,factorization_weight,regression_weight,ema", "--root", "{out}/run"],
}  # fmt: skip


def _command(item: str, out: Path, stack: str, epochs: int | None, round_: int = 0) -> list[str]:
    args = [part.format(out=out) for part in ITEMS[item]] + (["--tune-seed", str(round_)] if item == "tune" else [])
    extra = ["--stack", stack, "--no-progress", "--data-dir", str(DATA_DIR)]
    if epochs:
        extra += ["--epochs", str(epochs)]
    return [sys.executable, "-m", "mtrec", *args, *extra]


def _selected(root: Path) -> dict[str, dict[str, float]]:
    """Every run's selected test metrics under ``root``, by its path (a search: its best validation value)."""
    if (root / "study.db").is_file():
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return {"best": {"valid": optuna.load_study(study_name="mtrec", storage=f"sqlite:///{root / 'study.db'}").best_value}}
    found = {}
    for path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        chosen = metrics.get("model") or metrics["selected"]
        found[str(path.parent.relative_to(root))] = {k: v for k, v in chosen.items() if k.startswith("test_") and isinstance(v, float)}
    return found


def _run(item: str, stack: str, epochs: int | None, round_: int) -> tuple[float, dict[str, dict[str, float]]]:
    out = Path(tempfile.mkdtemp(prefix=f"mtrec-stacked-{item}-"))
    try:
        began = time.perf_counter()
        subprocess.run(_command(item, out, stack, epochs, round_), check=True, stdout=subprocess.DEVNULL, cwd=out)
        return time.perf_counter() - began, _selected(out / "run")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _steps(rounds: int) -> None:
    """The ``steps`` item: see the module docstring."""
    import torch

    from mtrec.config.presets import preset
    from mtrec.nn.batch import Batch
    from mtrec.train.sampling import EpochSampler

    config = preset("seed", dataset="100k")
    train, _, _ = config.data.load_split(DATA_DIR)
    model = config.build_model()
    multiples = (1, 6, 12)
    setups = []
    for multiple in multiples:
        network = model.build_network(train.num_users, train.num_items)
        step = model.make_step(network)
        draw = EpochSampler(train, 0, torch.device("cpu"), True, 1).draw()
        setups.append((multiple, step, draw))
    times: dict[int, list[float]] = {m: [] for m in multiples}
    for round_ in range(rounds + 1):  # the first round warms up
        for multiple, step, (users, items, negatives, ratings) in setups:
            size, count = 256 * multiple, 40
            began = time.perf_counter()
            for index in range(count):
                lo, hi = index * size % (len(users) - size), index * size % (len(users) - size) + size
                step(Batch(users[lo:hi], items[lo:hi], negatives[lo:hi], ratings[lo:hi]))
            if round_:
                times[multiple].append((time.perf_counter() - began) / count * 1000)
    medians = {m: statistics.median(t) for m, t in times.items()}
    slope = (medians[12] - medians[1]) / 11  # ms of arithmetic per 256 pairs
    overhead = medians[1] - slope
    print(f"{'batch':>6} {'ms / step':>10}")
    for multiple in multiples:
        print(f"{256 * multiple:>6} {medians[multiple]:>10.3f}")
    print(f"a step at batch 256: {overhead:.3f} ms overhead + {slope:.3f} ms arithmetic; "
          f"K stacked runs at most {(overhead + slope) / slope:.1f}× faster (K = 6: {6 * medians[1] / medians[6]:.2f}×)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="experiments,seeds", help=f"comma-separated, of {', '.join(ITEMS)}, steps (default experiments,seeds)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per item (default 1)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: each command's own)")
    args = parser.parse_args()
    items = [item for item in args.items.split(",") if item]
    if "steps" in items:
        items.remove("steps")
        _steps(max(args.rounds, 5))
    unknown = [item for item in items if item not in ITEMS]
    if unknown:
        parser.error(f"unknown item {', '.join(unknown)}; use {', '.join(ITEMS)}")
    rows = []
    if not items:
        return
    for item in items:
        times: dict[str, list[float]] = {"1": [], "auto": []}
        metrics: dict[str, dict] = {}
        best: dict[str, list[float]] = {"1": [], "auto": []}
        for round_ in range(args.rounds):
            for stack in ("1", "auto") if round_ % 2 == 0 else ("auto", "1"):
                seconds, metrics[stack] = _run(item, stack, args.epochs, round_)
                times[stack].append(seconds)
                extra = f", best validation {metrics[stack]['best']['valid']:.4f}" if item == "tune" else ""
                print(f"  {item} --stack {stack}: {seconds:.1f} s{extra}", file=sys.stderr, flush=True)
                if item == "tune":
                    best[stack].append(metrics[stack]["best"]["valid"])
        runs = 50 if item == "tune" else len(metrics["1"])
        assert metrics["1"].keys() == metrics["auto"].keys(), "the two paths trained different runs"
        if item == "tune":  # each path's best validation criterion, the mean over the rounds
            worst = f"{statistics.mean(best['1']):.4f} / {statistics.mean(best['auto']):.4f}"
        else:
            worst = f"{max((abs(a[k] - metrics['auto'][run][k]) for run, a in metrics['1'].items() for k in a), default=0.0):.2g}"
        sequential, stacked = statistics.median(times["1"]), statistics.median(times["auto"])
        rows.append((item, runs, sequential, stacked, sequential / stacked, worst))
    print(f"{'item':<12} {'runs':>5} {'sequential s':>13} {'stacked s':>10} {'speed-up':>9} {'max |Δ metric| (tune: best valid)':>34}")
    for item, runs, sequential, stacked, ratio, worst in rows:
        print(f"{item:<12} {runs:>5} {sequential:>13.1f} {stacked:>10.1f} {ratio:>8.2f}× {worst:>34}")


if __name__ == "__main__":
    main()
