"""Run by torchrun in the distributed tests: trains a small model on every process and writes, per
process, digests of the model and optimiser state after initialisation and after each epoch, and
the metrics of distributed and single-process evaluation, to OUT/rank-<r>.json."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import random_interactions  # noqa: E402

from mtrec.eval.evaluation import Evaluator  # noqa: E402
from mtrec.model import MultitaskModel  # noqa: E402
from mtrec.train.callbacks import Checkpoints  # noqa: E402
from mtrec.train.distributed import Distributed  # noqa: E402


def digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        sha.update(name.encode())
        sha.update(tensors[name].detach().contiguous().cpu().numpy().tobytes())
    return sha.hexdigest()


def main(out: Path, batch_size: int, weighting: str, exchange: str, sharing: str) -> None:
    torch.set_num_threads(1)
    distributed = Distributed.start("gloo", exchange=exchange)
    data = random_interactions(num_users=50, num_items=60, n=1500, seed=3)
    test = random_interactions(num_users=50, num_items=60, n=300, seed=4)
    model = MultitaskModel(
        embedding_dim=8,
        batch_size=batch_size,
        learning_rate=0.01,
        weighting=weighting,
        seed=5,
        sharing=sharing,
        rating_bias=sharing == "separate",
        negatives=2,
        l2=1e-4,
    )
    record = {"init": digest(model.build_network(50, 60).state_dict()), "epochs": []}

    def dump(trainer) -> None:
        tensors, _ = trainer.state()
        record["epochs"].append(digest({k: v for k, v in tensors.items() if not k.startswith("sampler")}))

    exchanges = [0]
    sum_rows = distributed.sum_rows

    def counted(*args) -> None:
        exchanges[0] += 1
        sum_rows(*args)

    distributed.sum_rows = counted
    model.fit(data, 3, test=test, distributed=distributed, callbacks=[Checkpoints(1, dump)])
    record["row_exchanges"] = exchanges[0]
    record["history"] = [r.to_json() | {"seconds": 0} for r in model.history_]
    record["distributed_eval"] = Evaluator(test, data, distributed=distributed).evaluate(model.network_)
    record["single_eval"] = Evaluator(test, data).evaluate(model.network_)
    (out / f"rank-{distributed.rank}.json").write_text(json.dumps(record))
    distributed.close()
    # The process group's threads, joined by close(): none may outlive it into the interpreter's finalization.
    threads = sorted(Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in os.listdir("/proc/self/task"))
    (out / f"threads-{distributed.rank}.json").write_text(json.dumps(threads))


if __name__ == "__main__":
    options = sys.argv[3:] + ["fixed", "dense", "hard"][len(sys.argv) - 3 :]
    main(Path(sys.argv[1]), int(sys.argv[2]), *options)
