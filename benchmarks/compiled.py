"""The fused step's hand-written gradients against the autograd step, eager and under torch.compile.

Should mtrec keep a second, hand-derived copy of its model's gradients (``FusedStep``)? Only if
the autograd step cannot come close. This measures milliseconds per training step of:

* ``fused``: :class:`mtrec.train.steps.FusedStep` (hand-written gradients, fused Adam);
* ``autograd``: :class:`mtrec.train.steps.AutogradStep` (autograd through the objective, fused Adam);
* ``autograd + compile``: the same step with the objective (forward and, through AOTAutograd,
  backward) compiled by ``torch.compile`` (inductor, default mode), the optimiser's fused Adam
  unchanged;

for the seed's network (d = 32, MLP 96-64, hard sharing) at batch 256 with one negative (the
seed's settings) and at batch 4,096 with eight (the quality preset's), on ML-100K's sizes (943
users, 1,682 items). The batches are drawn uniformly (speed does not depend on which rows). The
variants are interleaved round by round (the machine's drift hits all alike); each figure is the
median over rounds of the mean step time of a round, after a warm-up that includes compilation.

    python benchmarks/compiled.py             # a few minutes, most of it compiling
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tables import table  # benchmarks/tables.py, beside this script

USERS, ITEMS = 943, 1682
#: (batch size, negatives per positive): the seed's and the quality preset's.
SHAPES = ((256, 1), (4096, 8))


def batches(size: int, negatives: int, count: int, seed: int = 0):
    from mtrec.nn.losses import Batch

    generator = torch.Generator().manual_seed(seed)
    shape = (size,) if negatives == 1 else (size, negatives)
    return [
        Batch(
            users=torch.randint(0, USERS, (size,), generator=generator),
            positives=torch.randint(0, ITEMS, (size,), generator=generator),
            negatives=torch.randint(0, ITEMS, shape, generator=generator),
            ratings=torch.randint(1, 6, (size,), generator=generator).float(),
        )
        for _ in range(count)
    ]


class CompiledAutogradStep:
    """The autograd step with its objective compiled: zero the gradients, the compiled loss, backward, Adam."""

    def __init__(self, network, objective, learning_rate: float) -> None:
        from mtrec.nn.losses import Batch
        from mtrec.train.steps import _adam

        self.optimizer = _adam([(list(network.parameters()), 0.0)], learning_rate)

        def loss(users, positives, negatives, ratings):
            return objective(network, Batch(users, positives, negatives, ratings))[1]

        self.loss = torch.compile(loss)

    def __call__(self, batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(batch.users, batch.positives, batch.negatives, batch.ratings).backward()
        self.optimizer.step()


def make_steps(learning_rate: float) -> dict[str, object]:
    from mtrec.nn.network import MultitaskNet
    from mtrec.nn.objective import JointObjective
    from mtrec.train.steps import AutogradStep, FusedStep

    def network():
        torch.manual_seed(0)
        return MultitaskNet(USERS, ITEMS, embedding_dim=32, layer_sizes=[96, 64], sharing="hard")

    objective = JointObjective({"watch": 0.99, "rating": 0.01})
    return {
        "fused": FusedStep(network(), objective, learning_rate),
        "autograd": AutogradStep(network(), objective, learning_rate),
        "autograd + compile": CompiledAutogradStep(network(), objective, learning_rate),
    }


def measure(size: int, negatives: int, rounds: int, steps: int) -> dict[str, float]:
    """Per variant: the median over rounds of the mean milliseconds per step, and the seconds its
    first 10 steps took (compiling, for the compiled step)."""
    variants = make_steps(1e-3)
    data = batches(size, negatives, steps)
    warm_up = {}
    for name, step in variants.items():  # compilation, allocator, caches
        started = time.perf_counter()
        for batch in data[:10]:
            step(batch)
        warm_up[name] = time.perf_counter() - started
    times = {name: [] for name in variants}
    for turn in range(rounds):
        for name in list(variants)[:: 1 if turn % 2 == 0 else -1]:
            started = time.perf_counter()
            for batch in data:
                variants[name](batch)
            times[name].append(1000 * (time.perf_counter() - started) / len(data))
    return {name: (statistics.median(values), warm_up[name]) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="steps per round and variant")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [["batch", "negatives", "step", "ms / step", "÷ fused", "first 10 steps s"]]
    for size, negatives in SHAPES:
        results = measure(size, negatives, args.rounds, args.steps)
        for name, (ms, first) in results.items():
            rows.append([f"{size:,}", str(negatives), name, f"{ms:.3f}", f"{ms / results['fused'][0]:.2f}×", f"{first:.1f}"])
    print(table(rows))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds of {args.steps} steps")


if __name__ == "__main__":
    main()
