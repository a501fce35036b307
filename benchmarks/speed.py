"""Training and evaluation speed of mtrec against a plain per-batch / per-user-loop baseline.

Processes run one after another, never two PyTorch processes at once (on a small machine
their thread pools fight). Peak RSS and metrics come from one fresh process per
configuration; the ML-100K timings from one process that interleaves every configuration
round by round (see :func:`measure_paired`), so that the machine's drift hits all alike.

    python benchmarks/speed.py                     # ML-100K table (about 3 minutes)
    python benchmarks/speed.py --time-to-quality   # + both runs to MRR >= 0.13 (about 10 minutes)
    python benchmarks/speed.py --scale             # + ML-25M-shaped synthetic data (several minutes)

The baseline is the plain way to train the same network: a per-sample Dataset and
DataLoader feeding the library's AutogradStep (autograd through the objective, PyTorch's
Adam), and MRR from a Python loop over users with an argsort per user. It draws the same
shuffles and negatives as mtrec, so both reach the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tables import table  # benchmarks/tables.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data"))
QUALITY_MRR = 0.13
#: The large-batch recipe: linear learning-rate scaling plus a little weight decay.
LARGE_BATCH_L2 = 5e-6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_metrics(evaluator, network) -> dict[str, float]:
    """Test MSE and MRR as the plain loop reports them."""
    metrics = evaluator.evaluate(network)
    return {"test_mse": metrics["mse"], "test_mrr": metrics["mrr"]}


def evaluator_of(test, train):
    """mtrec's evaluator, measuring what the plain loop measures (MSE and MRR)."""
    from mtrec.eval.evaluation import Evaluator

    return Evaluator(test, train, metrics=("mse", "mrr"))


def movielens_split():
    from mtrec.data import load_movielens, random_split

    return random_split(load_movielens("100k", data_dir=DATA_DIR), test_fraction=0.05, seed=0)


# ---------------------------------------------------------------- the plain baseline
class Triples(torch.utils.data.Dataset):
    """One epoch's training examples, one at a time: (user, positive, negative, rating)."""

    def __init__(self, users, items, negatives, ratings):
        self.users, self.items, self.negatives, self.ratings = users, items, negatives, ratings

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int):
        return self.users[index], self.items[index], self.negatives[index], self.ratings[index]


class PlainTrainer:
    """The straightforward loop: a per-sample Dataset and DataLoader feeding the library's
    AutogradStep (autograd, PyTorch's Adam), and MRR from a Python loop over users."""

    def __init__(self, train, factorization_weight=0.5, regression_weight=0.5, batch_size=256, seed=0):
        from mtrec.model import MultitaskModel
        from mtrec.nn.objective import JointObjective
        from mtrec.train.steps import AutogradStep

        self.net = MultitaskModel(seed=seed).build_network(train.num_users, train.num_items)  # mtrec's initial weights
        self.step = AutogradStep(self.net, JointObjective({"watch": factorization_weight, "rating": regression_weight}), learning_rate=1e-3)
        self.generator = torch.Generator().manual_seed(seed)
        self.train, self.batch_size = train, batch_size

    def epoch(self) -> None:
        from mtrec.nn.losses import Batch

        train, n = self.train, len(self.train)
        # The same draws as mtrec's sampler, so both reach the same numbers.
        order = torch.randperm(n, generator=self.generator)
        negatives = torch.randint(0, train.num_items, (n,), generator=self.generator)
        users, items = torch.as_tensor(train.users).long()[order], torch.as_tensor(train.items).long()[order]
        ratings = torch.as_tensor(train.ratings)[order]
        loader = torch.utils.data.DataLoader(Triples(users, items, negatives, ratings), batch_size=self.batch_size)
        for u, i, j, r in loader:
            self.step(Batch(u, i, j, r))

    @torch.no_grad()
    def evaluate(self, test, train) -> dict[str, float]:
        net = self.net
        users, items = torch.as_tensor(test.users).long(), torch.as_tensor(test.items).long()
        _, r_hat = net(users, items)
        mse = float(((r_hat.numpy() - test.ratings) ** 2).mean())
        all_items = torch.arange(test.num_items)
        per_user = []
        for user in np.unique(test.users):
            scores = net.watch_score(torch.full_like(all_items, int(user)), all_items).numpy().astype(np.float64)
            held = test.items[test.users == user]
            keep = scores[held]
            scores[train.items[train.users == user]] = -np.inf
            scores[held] = keep
            order = np.argsort(-scores, kind="stable")
            ranks = np.empty(len(scores))
            ranks[order] = np.arange(1, len(scores) + 1)
            # average rank of ties
            for item in held:
                tied = scores == scores[item]
                ranks[item] = ranks[tied].mean()
            per_user.append(np.mean(1.0 / ranks[held]))
        return {"test_mse": mse, "test_mrr": float(np.mean(per_user))}


# ---------------------------------------------------------------- measurements (one per process)
def measure_ml100k(variant: str, epochs: int, batch_size: int, threads: int | None) -> dict:
    from mtrec.model import MultitaskModel, scaled_learning_rate

    train, test = movielens_split()
    if threads:
        torch.set_num_threads(threads)
    if variant == "plain":
        trainer = PlainTrainer(train, batch_size=batch_size)
        trainer.epoch()  # warm-up
        epoch_times = []
        for _ in range(epochs):
            started = time.perf_counter()
            trainer.epoch()
            epoch_times.append(time.perf_counter() - started)
        evaluate = lambda: trainer.evaluate(test, train)  # noqa: E731
        repeats = 3
    else:
        lr = scaled_learning_rate(batch_size)
        model = MultitaskModel(batch_size=batch_size, learning_rate=lr, num_threads=threads, seed=0)
        model.fit(train, epochs=1)  # warm-up
        model.fit(train, epochs=epochs + 1)  # from scratch: as many epochs as the plain loop's, warm-up included
        epoch_times = [record.seconds for record in model.history_[1:]]
        evaluator = evaluator_of(test, train)
        torch.set_num_threads(os.cpu_count() or 1)
        evaluate = lambda: test_metrics(evaluator, model.network_)  # noqa: E731
        repeats = 21
    metrics = evaluate()
    eval_times = []
    for _ in range(repeats):
        started = time.perf_counter()
        evaluate()
        eval_times.append(time.perf_counter() - started)
    epoch_seconds, eval_seconds = float(np.median(epoch_times)), float(np.median(eval_times))
    return {"epoch_s": epoch_seconds, "eval_s": eval_seconds, "rss_mb": peak_rss_mb(), **metrics}


def measure_paired(rounds: int, large_batches: list[int]) -> dict:
    """Epoch and evaluation times of every configuration, interleaved in one process.

    The machine is shared and its speed drifts by a factor of two within minutes, so each
    round times one epoch of every configuration back to back, and a speed-up is the median
    over rounds of that round's ratio: a slow spell hits both sides of a ratio alike.
    """
    from mtrec.model import MultitaskModel, scaled_learning_rate

    train, test = movielens_split()
    cores = os.cpu_count() or 1
    plain = {threads: PlainTrainer(train) for threads in (1, cores)}
    configurations = {f"mtrec-256-{threads}": (256, threads) for threads in (1, cores)}
    configurations.update({f"mtrec-{batch}": (batch, cores) for batch in large_batches})
    evaluator = evaluator_of(test, train)
    fitted = MultitaskModel(seed=0).fit(train, epochs=1)
    times: dict[str, list[float]] = {}

    def timed(name: str, work) -> None:
        started = time.perf_counter()
        work()
        times.setdefault(name, []).append(time.perf_counter() - started)

    for threads, trainer in plain.items():  # warm-up
        torch.set_num_threads(threads)
        trainer.epoch()
    for _ in range(rounds):
        for threads, trainer in plain.items():
            torch.set_num_threads(threads)
            timed(f"plain-{threads}", trainer.epoch)
        for name, (batch, threads) in configurations.items():
            model = MultitaskModel(batch_size=batch, learning_rate=scaled_learning_rate(batch), num_threads=threads, seed=0)
            model.fit(train, epochs=2)  # the first epoch warms up; the second is timed
            times.setdefault(name, []).append(model.history_[-1].seconds)
        torch.set_num_threads(cores)
        timed("plain-eval", lambda: plain[cores].evaluate(test, train))
        for _ in range(3):
            timed("mtrec-eval", lambda: test_metrics(evaluator, fitted.network_))
    return {"times": times, "cores": cores}


def measure_time_to_quality(variant: str, batch_size: int, max_epochs: int) -> dict:
    """Shared 0.99/0.01, evaluation every epoch, until test MRR >= QUALITY_MRR.

    Reports the wall time (what the user waits for, each side with its own evaluation) and
    the evaluation time within it, so that training alone can be compared too.
    """
    from mtrec.model import MultitaskModel, scaled_learning_rate

    train, test = movielens_split()
    started = time.perf_counter()
    history = []
    evaluating = 0.0

    def evaluated(evaluate) -> dict:
        nonlocal evaluating
        began = time.perf_counter()
        metrics = evaluate()
        evaluating += time.perf_counter() - began
        return metrics

    if variant == "plain":
        trainer = PlainTrainer(train, factorization_weight=0.99, regression_weight=0.01, batch_size=batch_size)
        for epoch in range(1, max_epochs + 1):
            trainer.epoch()
            metrics = evaluated(lambda: trainer.evaluate(test, train))
            history.append((epoch, time.perf_counter() - started, metrics["test_mse"], metrics["test_mrr"]))
            if metrics["test_mrr"] >= QUALITY_MRR:
                break
    else:

        class Reached(Exception):
            pass

        evaluator = evaluator_of(test, train)  # what fit(test=...) does, timed apart

        def stop_at_quality(record):
            metrics = evaluated(lambda: test_metrics(evaluator, model.network_))
            history.append((record.epoch, time.perf_counter() - started, metrics["test_mse"], metrics["test_mrr"]))
            if metrics["test_mrr"] >= QUALITY_MRR:
                raise Reached

        model = MultitaskModel(
            factorization_weight=0.99,
            regression_weight=0.01,
            batch_size=batch_size,
            learning_rate=scaled_learning_rate(batch_size),
            l2=LARGE_BATCH_L2,
            seed=0,
        )
        try:
            model.fit(train, epochs=max_epochs, callbacks=[stop_at_quality])
        except Reached:
            pass
    epoch, seconds, mse, mrr = history[-1]
    return {
        "epochs": epoch,
        "seconds": seconds,
        "eval_seconds": evaluating,
        "test_mse": mse,
        "test_mrr": mrr,
        "reached": mrr >= QUALITY_MRR,
    }


def measure_scale(batch_size: int) -> dict:
    from mtrec.data import random_split
    from mtrec.data.synth import synthetic_interactions
    from mtrec.model import MultitaskModel, scaled_learning_rate

    started = time.perf_counter()
    data = synthetic_interactions(seed=0)
    train, test = random_split(data, test_fraction=0.05, seed=0)
    del data
    generate_seconds = time.perf_counter() - started
    model = MultitaskModel(batch_size=batch_size, learning_rate=scaled_learning_rate(batch_size), seed=0)
    started = time.perf_counter()
    model.fit(train, epochs=1)
    epoch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    metrics = test_metrics(evaluator_of(test, train), model.network_)
    eval_seconds = time.perf_counter() - started
    return {
        "ratings": len(train) + len(test),
        "users": train.num_users,
        "items": train.num_items,
        "generate_s": generate_seconds,
        "epoch_s": epoch_seconds,
        "eval_s": eval_seconds,
        "rss_mb": peak_rss_mb(),
        **metrics,
    }


# ---------------------------------------------------------------- orchestration
def in_fresh_process(*args: str) -> dict:
    command = [sys.executable, __file__, "--measure", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"measurement {' '.join(args)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs after the warm-up in each peak-memory and metrics process")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the ML-100K timings (medians taken)")
    parser.add_argument("--large-batch", type=int, nargs="+", default=[4096, 16384], help="large batch sizes; the first runs the time-to-quality")
    parser.add_argument("--time-to-quality", action="store_true")
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--scale-batch", type=int, default=65536)
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        kind, *rest = args.measure
        if kind == "ml100k":
            result = measure_ml100k(rest[0], int(rest[1]), int(rest[2]), int(rest[3]) or None)
        elif kind == "paired":
            result = measure_paired(int(rest[0]), [int(b) for b in rest[1:]])
        elif kind == "ttq":
            result = measure_time_to_quality(rest[0], int(rest[1]), int(rest[2]))
        else:
            result = measure_scale(int(rest[0]))
        print(json.dumps(result))
        return

    e = str(args.epochs)
    cores = os.cpu_count() or 1
    # Peak memory and the metrics, each configuration alone in a fresh process.
    alone = {f"plain-{t}": in_fresh_process("ml100k", "plain", e, "256", str(t)) for t in (1, cores)}
    alone.update({f"mtrec-256-{t}": in_fresh_process("ml100k", "mtrec", e, "256", str(t)) for t in (1, cores)})
    alone.update({f"mtrec-{b}": in_fresh_process("ml100k", "mtrec", e, str(b), "0") for b in args.large_batch})
    # The timings, interleaved round by round in one process (see measure_paired).
    paired = in_fresh_process("paired", str(args.rounds), *map(str, args.large_batch))
    times = {name: np.array(values) for name, values in paired["times"].items()}
    baseline = min((f"plain-{t}" for t in (1, cores)), key=lambda name: np.median(times[name]))
    mtrec_eval = np.median(times["mtrec-eval"].reshape(args.rounds, -1), axis=1)
    eval_ratio = np.median(times["plain-eval"] / mtrec_eval)

    def threads_label(t: int) -> str:
        return f"{t} thread{'s' if t > 1 else ''}"

    labels = {f"plain-{t}": f"plain loop, batch 256, {threads_label(t)}" for t in (1, cores)}
    labels.update({f"mtrec-256-{t}": f"mtrec, batch 256, {threads_label(t)}" for t in (1, cores)})
    labels.update({f"mtrec-{b}": f"mtrec, batch {b} (lr x{b // 256}), {threads_label(cores)}" for b in args.large_batch})
    rows = [["ML-100K (95,000 train / 5,000 test)", "train s/epoch", "speed-up", "eval s", "speed-up", "peak RSS MB"]]
    for name, label in labels.items():
        is_plain = name.startswith("plain")
        eval_s = np.median(times["plain-eval"]) if is_plain else np.median(mtrec_eval)
        rows.append(
            [
                label + (" (baseline)" if name == baseline else ""),
                f"{np.median(times[name]):.3f}",
                f"{np.median(times[baseline] / times[name]):.1f}x",
                f"{eval_s:.4f}",
                "1x" if is_plain else f"{eval_ratio:.0f}x",
                f"{alone[name]['rss_mb']:.0f}",
            ]
        )
    print(table(rows))
    print(
        f"(medians over {args.rounds} interleaved rounds; a speed-up is the median of each round's ratio to the "
        f"faster plain loop; evaluation of the plain loop at {threads_label(cores)})"
    )
    default = f"mtrec-256-{cores}"  # what MultitaskModel does with its defaults
    plain_total = 3 * 200 * (np.median(times[baseline]) + np.median(times["plain-eval"]))
    fast_total = 3 * 200 * (np.median(times[default]) + np.median(mtrec_eval))
    print(
        f"\nThree assignment experiments, 200 epochs each, evaluated every epoch (projected from the rows above, "
        f"mtrec with its default threads): plain {plain_total / 60:.1f} min, mtrec {fast_total / 60:.1f} min "
        f"({plain_total / fast_total:.1f}x)."
    )
    same = alone[baseline]
    mine = alone[default]
    print(
        f"Metrics after {args.epochs + 1} epochs at batch 256: plain MSE {same['test_mse']:.4f} MRR {same['test_mrr']:.4f}; "
        f"mtrec MSE {mine['test_mse']:.4f} MRR {mine['test_mrr']:.4f}."
    )

    if args.time_to_quality:
        slow = in_fresh_process("ttq", "plain", "256", "200")
        ttq_batch = args.large_batch[0]
        quick = in_fresh_process("ttq", "mtrec", str(ttq_batch), "200")
        rows = [["time to MRR >= 0.13 (shared 0.99/0.01, eval every epoch)", "epochs", "wall s", "of which eval s", "test MSE", "test MRR"]]
        for label, result in (
            ("plain loop, batch 256", slow),
            (f"mtrec, batch {ttq_batch}, lr x{ttq_batch // 256}, l2 {LARGE_BATCH_L2:g}", quick),
        ):
            rows.append(
                [
                    label,
                    str(result["epochs"]),
                    f"{result['seconds']:.1f}",
                    f"{result['eval_seconds']:.1f}",
                    f"{result['test_mse']:.4f}",
                    f"{result['test_mrr']:.4f}",
                ]
            )
        print()
        print(table(rows))
        if slow["reached"] and quick["reached"]:
            train_slow, train_quick = slow["seconds"] - slow["eval_seconds"], quick["seconds"] - quick["eval_seconds"]
            print(
                f"mtrec reaches it in {quick['seconds'] / slow['seconds']:.3f} of the plain loop's wall time; "
                f"training alone (evaluation left out on both sides) {train_quick / train_slow:.3f}."
            )
        else:
            print("Not reached within 200 epochs by: " + ", ".join(n for n, r in (("plain", slow), ("mtrec", quick)) if not r["reached"]))

    if args.scale:
        scale = in_fresh_process("scale", str(args.scale_batch))
        rows = [["ML-25M-shaped synthetic", "ratings", "generate s", "train s/epoch", "eval s", "peak RSS MB", "MSE", "MRR"]]
        rows.append(
            [
                f"batch {args.scale_batch}",
                f"{scale['ratings']:,}",
                f"{scale['generate_s']:.0f}",
                f"{scale['epoch_s']:.0f}",
                f"{scale['eval_s']:.0f}",
                f"{scale['rss_mb']:.0f}",
                f"{scale['test_mse']:.3f}",
                f"{scale['test_mrr']:.4f}",
            ]
        )
        print()
        print(table(rows))


if __name__ == "__main__":
    main()
