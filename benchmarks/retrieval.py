"""Exact against approximate (HNSW) retrieval on large catalogues: recall, latency, batch export, build.

Catalogues: ML-25M-shaped (59,047 items) and a synthetic 1,000,000-item one, each at d = 32 and
d = 128, served by :class:`mtrec.serving.recommender.Recommender` (the library's own code path: candidates,
exact re-scoring, seen items, ratings) with ``--index exact`` and ``--index hnsw``.

How the vectors are made. A model is trained on MovieLens 100K with mtrec 0.3's quality preset at that d
(at most 30 epochs), and the catalogue is drawn from the distribution of its vectors by a smoothed
bootstrap: each new item is a trained item's ``[q, b]`` plus Gaussian noise with the trained items'
covariance times Silverman's bandwidth, rescaled so that the covariance is kept (a Gaussian kernel
density estimate). The new items keep the trained ones' norms, biases, their link to popularity
(a popular item has a long q and a high b) and their clusters: neither i.i.d. noise nor copies.
Users are drawn alike from the trained users' ``[u, a]``; the rating head is the trained one.
Each user has seen a number of items drawn from ML-25M's distribution (log-normal with its median
of 70 and mean of 153, at least 20), picked by the model's own preference (Gumbel top-c of p):
their median rank percentile, 3.6% (d = 32) and 3.8% (d = 128), is that of the real users'
rated items in the trained model (4.6% and 3.8%). So a list must reach past them, as in real data.

Measured, with exact and HNSW interleaved; HNSW at the library's default search width
(``ef_search`` 8 × (d + 2)) and at each ``--ef-per-dimension`` F (6 by default): the same graph
searched with F × (d + 2) candidates, recall traded for speed:

* recall@10: the share of the exact top 10 (seen items excluded) that the HNSW list holds;
* single-request latency: ``recommend(user, k=10)``, p50 and p99 over the sampled users, asked
  in blocks of ``--block`` users (50) of one index, then the same users of the other, the first
  alternating. A service ranks with one index; alternating at every request would start each
  HNSW search from a cache that the exact pass (a stream of every item's vector) has just
  flushed, a state no service is in (``--block 1`` measures it: at 1,000,000 items, d = 32, HNSW
  p50 1.6 ms instead of 1.0 ms; exact is unchanged);
* batch export: ``recommend_all`` (k = 10) of a sample of the users, in rounds alternating exact
  and HNSW; users/s is the median of the rounds and the time for ML-25M's 162,541 users is
  projected from it (the work is per user: the sample gives the rate);
* build: the graph's build time (on ``--build-threads``) and its size (the vectors and links it
  holds in memory, as saved beside a model), and the process's resident memory growth meanwhile.

Requests and batches run on ``--threads`` PyTorch threads (1 by default, ``mtrec serve``'s: on a
machine whose cores are shared, a second thread made both batch paths slower, not faster).

    python benchmarks/retrieval.py                               # the full table (about an hour on 2 cores)
    python benchmarks/retrieval.py --items 100000 --dims 32      # quick
    python benchmarks/retrieval.py --items 1000000 --dims 32 --save catalogues   # the model files (and their
        # graphs, beside them) instead of the table: catalogues/synthetic-1000000-d32/model.safetensors, for
        # python benchmarks/serve.py --model ... --serve-option=--index=hnsw
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tables import table  # benchmarks/tables.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data"))
ML25M_ITEMS, ML25M_USERS = 59_047, 162_541
#: ML-25M's ratings per user: median 70, mean 153, minimum 20; a log-normal with that median and mean.
SEEN_MEDIAN, SEEN_MEAN, SEEN_MIN = 70, 153, 20


def reference(dim: int):
    """A model trained on MovieLens 100K with mtrec 0.3's quality preset (an id user: a pure inner-product
    watch score, which an HNSW graph searches) at embedding dimension ``dim``."""
    from mtrec.config import preset
    from mtrec.data import load_movielens

    config = preset("quality-0.3", seed=0)
    train, validation, _ = config.data.load_split(DATA_DIR, data=load_movielens("100k", data_dir=DATA_DIR))
    model = config.build_model().set_params(embedding_dim=dim, layer_sizes=[3 * dim, 64])
    model.fit(train, min(config.epochs, 30), validation=validation, early_stopping=config.early_stopping, patience=config.patience)
    return model


def smoothed_bootstrap(rows: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` draws from a Gaussian kernel density estimate of ``rows`` (Silverman's bandwidth), variance kept."""
    n, width = rows.shape
    mean = rows.mean(0)
    covariance = torch.cov((rows - mean).T) + 1e-6 * torch.eye(width)
    bandwidth = (4 / (n * (width + 2))) ** (1 / (width + 4))
    picked = rows[torch.randint(0, n, (count,), generator=generator)]
    noise = torch.randn(count, width, generator=generator) @ torch.linalg.cholesky(covariance).T
    return mean + (picked - mean + bandwidth * noise) / math.sqrt(1 + bandwidth**2)


def seen_items(network, num_users: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each user's seen items (CSR: indptr, indices): ML-25M's counts, picked by Gumbel top-c of p."""
    sigma = math.sqrt(2 * math.log(SEEN_MEAN / SEEN_MEDIAN))
    counts = torch.exp(math.log(SEEN_MEDIAN) + sigma * torch.randn(num_users, generator=generator)).long().clamp(min=SEEN_MIN)
    indices = []
    chunk = max(1, 2**24 // network.item_biases.num_embeddings)
    with torch.inference_mode():
        for start in range(0, num_users, chunk):
            users = torch.arange(start, min(start + chunk, num_users))
            scores = network.all_watch_scores(users)
            scores -= torch.log(-torch.log(torch.rand(scores.shape, generator=generator).clamp(min=1e-12)))
            top = torch.topk(scores, int(counts[users].max()), dim=1).indices
            indices += [np.sort(row[: counts[user]].numpy()) for user, row in zip(users.tolist(), top)]
    return np.concatenate([[0], np.cumsum(counts.numpy())]), np.concatenate(indices)


def synthetic_model(trained, num_items: int, num_users: int, seed: int = 0):
    """A fitted model of ``num_items`` items and ``num_users`` users drawn from ``trained``'s vectors (see the module)."""
    from mtrec.io.fitted import FittedData
    from mtrec.model import MultitaskModel

    generator = torch.Generator().manual_seed(seed)
    source = trained.network_
    with torch.no_grad():
        items = smoothed_bootstrap(torch.cat([source.item_embeddings.weight, source.item_biases.weight], 1), num_items, generator)
        users = smoothed_bootstrap(torch.cat([source.user_embeddings.weight, source.user_biases.weight], 1), num_users, generator)
    model = MultitaskModel(**trained.get_params())
    network = model.build_network(num_users, num_items)
    with torch.no_grad():
        network.item_embeddings.weight.copy_(items[:, :-1])
        network.item_biases.weight.copy_(items[:, -1:])
        network.user_embeddings.weight.copy_(users[:, :-1])
        network.user_biases.weight.copy_(users[:, -1:])
        network.rating_mlp.load_state_dict(source.rating_mlp.state_dict())
    network.eval()
    indptr, indices = seen_items(network, num_users, generator)
    model.network_, model.history_, model.selected_epoch_ = network, [], None
    model.data_ = FittedData(
        num_users, num_items, np.arange(1, num_users + 1), np.arange(1, num_items + 1), indptr, indices,
        None, trained.data_.rating_scale, True, f"synthetic-{num_items}",
    )  # fmt: skip
    return model


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(model, users: int, batch_users: int, rounds: int, config, threads: int, block: int, widths: list[int]) -> dict[str, dict]:
    """The measurements of the module's docstring for ``model``: exact, and HNSW at each ``ef_search``
    of ``widths`` (one graph, searched with each; the library's default first)."""
    from mtrec.serving.recommender import Recommender
    from mtrec.serving.retrieval import HnswIndex, IndexConfig

    exact = Recommender(model, IndexConfig.of(kind="exact"))
    default = Recommender(model, config)
    before, started = resident_mb(), time.perf_counter()  # on the threads the caller set
    index = default.retrieval.index("watch")
    built = {"build_s": time.perf_counter() - started, "rss_mb": resident_mb() - before, "size_mb": index.to_array().nbytes / 2**20}
    contenders = {"exact": exact, f"hnsw ef={index.ef_search}": default}
    for width in widths:
        if f"hnsw ef={width}" not in contenders:
            searcher = Recommender(model, config.model_copy(update={"ef_search": width}))
            searcher.retrieval._indexes["watch"] = HnswIndex(index.graph, width)  # the same graph, searched wider or narrower
            contenders[f"hnsw ef={width}"] = searcher
    names = list(contenders)
    results = {name: {} for name in names}
    results[names[1]].update(built)
    ids = model.data_.user_ids[: max(users, batch_users)]
    torch.set_num_threads(threads)
    latency, lists = {name: [] for name in names}, {name: {} for name in names}
    asked = ids[:users].tolist()
    for turn, first in enumerate(range(0, len(asked), block)):
        for name in names[:: 1 if turn % 2 == 0 else -1]:
            for user in asked[first : first + block]:
                start = time.perf_counter()
                lists[name][user] = {row.item for row in contenders[name].recommend(user, k=10).items}
                latency[name].append(time.perf_counter() - start)
    rates = {name: [] for name in names}
    for turn in range(rounds):
        for name in names[:: 1 if turn % 2 == 0 else -1]:
            start = time.perf_counter()
            for _table in contenders[name].recommend_all(ids[:batch_users].tolist(), k=10):
                pass
            rates[name].append(batch_users / (time.perf_counter() - start))
    for name in names:
        results[name].update(p50_ms=1000 * float(np.percentile(latency[name], 50)), p99_ms=1000 * float(np.percentile(latency[name], 99)),
                             users_per_s=statistics.median(rates[name]))  # fmt: skip
        if name != "exact":
            results[name]["recall"] = float(np.mean([len(lists["exact"][u] & lists[name][u]) / len(lists["exact"][u]) for u in asked]))
            results[name]["p50_speedup"] = results["exact"]["p50_ms"] / results[name]["p50_ms"]
            results[name]["batch_speedup"] = statistics.median(h / e for h, e in zip(rates[name], rates["exact"]))
    return results


def save(model, folder: Path, config) -> None:
    """``model`` saved in ``folder`` with its graph beside it (built on the caller's threads)."""
    from mtrec.serving.recommender import Recommender

    path = model.save(folder / "model.safetensors")
    Recommender.load(path, index=config).retrieval.warm()
    print(f"saved {path} and its graph", flush=True)


def rows_of(name: str, dim: int, results: dict, batch_users: int) -> list[list[str]]:
    rows = []
    for index, r in results.items():
        projected = ML25M_USERS / r["users_per_s"] / 60
        speedup = f" ({r['p50_speedup']:.1f}×)" if "p50_speedup" in r else ""
        batch_speedup = f" ({r['batch_speedup']:.1f}×)" if "batch_speedup" in r else ""
        rows.append([
            name, str(dim), index,
            f"{r['recall']:.4f}" if "recall" in r else "1 (reference)",
            f"{r['p50_ms']:.2f}{speedup}", f"{r['p99_ms']:.2f}",
            f"{r['users_per_s']:,.0f}{batch_speedup}", f"{projected:.1f} (from {batch_users:,})",
            f"{r['build_s']:.0f}" if "build_s" in r else "-",
            f"{r['size_mb']:,.0f} ({r['rss_mb']:,.0f})" if "size_mb" in r else "-",
        ])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[ML25M_ITEMS, 1_000_000], help="catalogue sizes")
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 128], help="embedding dimensions")
    parser.add_argument("--users", type=int, default=500, help="users asked one at a time (recall, latency)")
    parser.add_argument("--batch-users", type=int, default=1000, help="users of each batch export")
    parser.add_argument("--block", type=int, default=50, help="users asked of one index before the other (see above)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads of requests and batches")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count(), help="threads that build the graph")
    parser.add_argument("--rounds", type=int, default=3, help="batch export rounds, alternating exact and HNSW")
    parser.add_argument("--m", type=int, default=None, help="HNSW links per item (default: the library's)")
    parser.add_argument("--ef-construction", type=int, default=None)
    parser.add_argument(
        "--ef-per-dimension", type=int, nargs="*", default=[6], metavar="F",
        help="search widths F × (d + 2) measured beside the library's default (the same graph searched with each)",
    )  # fmt: skip
    parser.add_argument("--save", type=Path, metavar="DIR", help="save each catalogue's model and graph under DIR instead of measuring")
    args = parser.parse_args()
    from mtrec.serving.retrieval import EF_PER_DIMENSION, IndexConfig

    given = {"m": args.m, "ef_construction": args.ef_construction}
    config = IndexConfig.of(kind="hnsw", **{name: value for name, value in given.items() if value is not None})
    header = ["catalogue", "d", "index", "recall@10", "p50 ms (× exact)", "p99 ms", "batch users/s (× exact)",
              f"{ML25M_USERS:,} users, min (projected)", "build s", "graph MB (RSS growth)"]  # fmt: skip
    rows = [header]
    for dim in args.dims:
        torch.set_num_threads(args.build_threads)
        started = time.perf_counter()
        trained = reference(dim)
        print(f"d={dim}: reference model trained on MovieLens 100K in {time.perf_counter() - started:.0f} s", flush=True)
        for items in args.items:
            name = "ML-25M-shaped" if items == ML25M_ITEMS else f"synthetic {items:,}"
            torch.set_num_threads(args.build_threads)
            model = synthetic_model(trained, items, max(args.users, args.batch_users))
            if args.save:
                save(model, args.save / f"synthetic-{items}-d{dim}", config)
                continue
            results = measure(
                model, args.users, args.batch_users, args.rounds, config, args.threads, args.block, [f * (dim + 2) for f in args.ef_per_dimension]
            )
            rows += rows_of(f"{name} items", dim, results, args.batch_users)
            print(table([header, *rows_of(f"{name} items", dim, results, args.batch_users)]), flush=True)
            del model
    if args.save:
        return
    print(
        f"\nHNSW m={config.m}, ef_construction={config.ef_construction}, ef_search {EF_PER_DIMENSION} × (d + 2) by default; "
        f"{args.build_threads} threads build, {args.threads} answer; requests in blocks of {args.block} users"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
