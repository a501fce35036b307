"""Approximate retrieval: the watch score as an inner product, candidates re-scored exactly, the
HNSW graph saved beside the model and verified, and the --index option of recommend, similar and
serve; on a run trained on the real MovieLens 100K."""

import json
import re
import shutil
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import random_interactions

import mtrec.serving.retrieval
from mtrec.cli import main
from mtrec.data import Interactions
from mtrec.io.checkpoint import model_digest
from mtrec.model import MultitaskModel
from mtrec.nn.network import SHARINGS, MultitaskNet
from mtrec.runs import check_complete
from mtrec.serving.recommender import Recommender
from mtrec.serving.retrieval import (
    AUTO_ITEMS,
    INDEX_FILENAMES,
    ExactIndex,
    HnswIndex,
    IndexConfig,
    ranked_candidates,
    watch_queries,
    watch_scores,
    watch_space,
)

HNSW = IndexConfig.of(kind="hnsw")
STAR_WARS = 50


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("retrieval") / "run"
    argv = ["train", "--no-progress", "--device", "cpu", "--preset", "seed", "--epochs", "2", "--data-dir", str(data_dir), "--logdir", str(run)]
    assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def exact(run_dir):
    return Recommender.load(run_dir, index=IndexConfig.of(kind="exact"))


@pytest.fixture(scope="module")
def graph(run_dir):
    return Recommender.load(run_dir, index=HNSW)


def items_of(result) -> list:
    return [row.item for row in result.items]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# The watch score as an inner product


@pytest.mark.parametrize("rating_bias", [False, True])
@pytest.mark.parametrize("sharing", SHARINGS)
def test_the_watch_score_is_an_inner_product_of_augmented_vectors_in_every_sharing_mode(sharing, rating_bias):
    torch.manual_seed(0)
    network = MultitaskNet(7, 11, embedding_dim=4, sharing=sharing, rating_bias=rating_bias)
    with torch.no_grad():  # every table non-zero: the biases, residuals and stitches start at zero or identity
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter))
    users = torch.arange(7)
    inner = watch_queries(network, users) @ watch_space(network).T + network.user_biases(users)
    assert torch.allclose(inner, network.all_watch_scores(users), atol=1e-5)
    items = torch.randint(0, 11, (7, 5))  # the rows of candidates the exact re-scoring scores
    pairs = network.watch_score(users.repeat_interleave(5), items.reshape(-1)).view(7, 5)
    assert torch.allclose(watch_scores(network, users, items), pairs, atol=1e-5)
    # The user's own constant a shifts a whole row: the order of the items is that of [u, 1]·[q, b].
    order = torch.argsort(watch_queries(network, users) @ watch_space(network).T, dim=1, descending=True)
    assert torch.equal(order, torch.argsort(network.all_watch_scores(users), dim=1, descending=True))


# ---------------------------------------------------------------------------------------------
# Candidates re-scored exactly


def brute_force(scores: torch.Tensor, seen_rows, seen_items, allowed, k):
    """Per row: the top k eligible items and, per pick, how many items of the catalogue score at least as high."""
    ranked = scores.clone()
    ranked[seen_rows, seen_items] = float("-inf")
    if allowed is not None:
        ranked[:, ~allowed] = float("-inf")
    top_p, top_items = torch.topk(ranked, k, dim=1)
    above = (scores[:, None, :] >= top_p[:, :, None]).sum(2)
    return top_p, top_items, above


def candidate_problem(seed=0, rows=20, items=500, dim=6):
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(items, dim, generator=generator)
    queries = torch.randn(rows, dim, generator=generator)
    counts = torch.randint(0, 100, (rows,), generator=generator)
    seen_rows = torch.repeat_interleave(torch.arange(rows), counts)
    seen_items = torch.cat([torch.randperm(items, generator=generator)[:c] for c in counts.tolist()])
    return vectors, queries, seen_rows, seen_items


def score_with(vectors, queries):
    return lambda rows, items: (vectors[items] @ queries[rows][:, :, None]).squeeze(-1)


@pytest.mark.parametrize("share", [None, 0.3, 0.02])
def test_candidates_of_an_exhaustive_index_give_the_exact_top_k_and_counts(share):
    vectors, queries, seen_rows, seen_items = candidate_problem()
    allowed = None if share is None else torch.rand(len(vectors), generator=torch.Generator().manual_seed(1)) < share
    top_p, top_items, above = ranked_candidates(
        ExactIndex(vectors), queries, score_with(vectors, queries), 10, len(vectors), (seen_rows, seen_items), allowed
    )
    want_p, want_items, want_above = brute_force(queries @ vectors.T, seen_rows, seen_items, allowed, 10)
    listed = torch.isfinite(want_p)
    assert torch.equal(torch.isfinite(top_p), listed)
    assert torch.equal(top_items[listed], want_items[listed])
    assert torch.allclose(top_p[listed], want_p[listed], atol=1e-5)
    if share is None:  # every item that outscores a pick is a candidate or a seen item: the exact count
        assert torch.equal(above[listed], want_above[listed])
    else:  # the items a filter refuses are counted where they were candidates: at least the picks above
        positions = torch.arange(1, 11).expand_as(above)
        assert bool(((above >= positions) & (above <= want_above))[listed].all())


@pytest.mark.parametrize("share", [None, 0.3, 0.02])
def test_one_query_alone_gets_the_picks_and_counts_it_gets_in_a_batch(share):
    # A single query takes the NumPy path, a batch the tensor path: the same candidates, picks and counts
    vectors, queries, seen_rows, seen_items = candidate_problem(seed=3, items=2000)
    allowed = None if share is None else torch.rand(len(vectors), generator=torch.Generator().manual_seed(2)) < share
    score = score_with(vectors, queries)
    batch = ranked_candidates(ExactIndex(vectors), queries, score, 10, len(vectors), (seen_rows, seen_items), allowed)
    for row in range(len(queries)):
        mine = seen_rows == row
        alone = ranked_candidates(
            ExactIndex(vectors), queries[row : row + 1], lambda rows, items, row=row: score(rows + row, items), 10, len(vectors),
            (torch.zeros(int(mine.sum()), dtype=torch.long), seen_items[mine]), allowed,
        )  # fmt: skip
        assert all(part.shape == (1, 10) for part in alone)
        assert torch.equal(alone[1][0], batch[1][row]) and torch.equal(alone[2][0], batch[2][row])
        assert torch.allclose(alone[0][0], batch[0][row], atol=1e-6)


def test_a_filter_that_rejects_most_candidates_asks_again_until_k_are_found():
    vectors, queries, _, _ = candidate_problem(rows=5, items=4000)
    allowed = torch.zeros(len(vectors), dtype=torch.bool)
    allowed[torch.argsort(queries[0] @ vectors.T)[:2000]] = True  # the first user's 2,000 worst items
    asked = []

    class Recording(ExactIndex):
        def search(self, q, n, exclude=None):
            asked.append(n)
            return super().search(q, n, exclude)

    top_p, top_items, _ = ranked_candidates(Recording(vectors), queries, score_with(vectors, queries), 10, len(vectors), None, allowed)
    none = torch.zeros(0, dtype=torch.long)
    want_p, want_items, _ = brute_force(queries @ vectors.T, none, none, allowed, 10)
    assert torch.equal(top_items, want_items)
    # (10 + 16) * 4000 / 2000 = 52 items first (searched as 64); the first user, finding none of its
    # allowed items there, is asked for 4 x 52 (256), then 4 x 208 (1,024), then gets all 2,000 scored
    assert asked == [64, 256, 1024]


@pytest.mark.parametrize("make", [ExactIndex, lambda vectors: HnswIndex.build(vectors, HNSW)], ids=["exact", "hnsw"])
def test_an_index_never_returns_the_items_it_is_told_to_leave_out(make):
    vectors, queries, _, _ = candidate_problem(rows=4, items=3000, dim=8)
    truth = ExactIndex(vectors).search(queries, 40)
    exclude = [truth[row, :15].numpy().astype(np.int64) for row in range(4)]  # each query's best 15
    exclude[2] = np.zeros(0, dtype=np.int64)  # and one query without any
    found = make(vectors).search(queries, 20, exclude)
    for row in range(4):
        assert not set(found[row].tolist()) & set(exclude[row].tolist()) and len(set(found[row].tolist())) == 20
        wanted = [i for i in truth[row].tolist() if i not in exclude[row]][:20]
        assert len(set(found[row].tolist()) & set(wanted)) >= 18  # the exact index finds all 20, the graph nearly
    tiny = make(vectors).search(queries[:1], 3000, [np.arange(2990, dtype=np.int64)])  # 10 items left: -1 past them
    assert sorted(tiny[0, :10].tolist()) == list(range(2990, 3000)) and set(tiny[0, 10:].tolist()) == {-1}


@pytest.mark.parametrize("batch", [False, True], ids=["one query", "a batch"])
def test_a_long_history_does_not_widen_the_search(batch):
    # The seen items are left out inside the search: k + MARGIN are asked for however many there are
    vectors, queries, _, _ = candidate_problem(rows=3, items=4000)
    asked = []

    class Recording(ExactIndex):
        def search(self, q, n, exclude=None):
            asked.append((n, [len(items) for items in exclude]))
            return super().search(q, n, exclude)

    best = torch.argsort(queries @ vectors.T, dim=1, descending=True)
    histories = [best[0, :1500], best[1, :40], best[2, :0]]  # the first user has seen their best 1,500
    rows = [0, 1, 2] if batch else [0]
    seen_rows = torch.cat([torch.full((len(histories[row]),), n) for n, row in enumerate(rows)])
    seen_items = torch.cat([histories[row] for row in rows])
    top_p, top_items, above = ranked_candidates(
        Recording(vectors), queries[rows], score_with(vectors, queries[rows]), 10, 4000, (seen_rows, seen_items)
    )
    assert [n for n, _ in asked] == [32] and asked[0][1] == [len(histories[row]) for row in rows]
    want_p, want_items, want_above = brute_force(queries[rows] @ vectors.T, seen_rows, seen_items, None, 10)
    assert torch.equal(top_items, want_items) and torch.equal(above, want_above)


def test_ties_count_every_item_scoring_as_high_as_a_pick():
    vectors = torch.tensor([[1.0], [1.0], [1.0], [0.5], [2.0]])
    queries = torch.tensor([[1.0]])
    seen = (torch.tensor([0]), torch.tensor([4]))
    top_p, top_items, above = ranked_candidates(ExactIndex(vectors), queries, score_with(vectors, queries), 2, 5, seen)
    assert top_p.tolist() == [[1.0, 1.0]] and set(top_items[0].tolist()) <= {0, 1, 2}
    assert above.tolist() == [[4, 4]]  # the seen item 4 and the three tied items


def test_a_list_is_short_only_when_fewer_items_are_left():
    vectors, queries, _, _ = candidate_problem(rows=3, items=30)
    seen = (torch.zeros(27, dtype=torch.long), torch.arange(27))  # the first user has seen all but 3
    top_p, top_items, _ = ranked_candidates(ExactIndex(vectors), queries, score_with(vectors, queries), 10, 30, seen)
    assert torch.isfinite(top_p).sum(1).tolist() == [3, 10, 10]
    assert set(top_items[0, :3].tolist()) == {27, 28, 29}


def test_the_exact_index_pads_with_minus_one_past_the_catalogue():
    found = ExactIndex(torch.eye(3)).search(torch.tensor([[0.0, 1.0, 0.0]]), 5)
    assert found.tolist()[0][0] == 1 and found.tolist()[0][3:] == [-1, -1]


# ---------------------------------------------------------------------------------------------
# Exact stays exact


def test_index_exact_answers_what_scoring_every_item_answers(run_dir, exact):
    files = set(run_dir.iterdir())
    model = MultitaskModel.load(run_dir)
    data = model.data_
    users = np.arange(0, data.num_users, 37)
    every = np.arange(data.num_items)
    for user in users:
        p, _ = model.predict(np.full_like(every, user), every)
        p[data.seen_indices[data.seen_indptr[user] : data.seen_indptr[user + 1]]] = -np.inf
        result = exact.recommend(data.user_ids[user], k=10)
        assert items_of(result) == data.item_ids[np.argsort(-p, kind="stable")[:10]].tolist()
    assert isinstance(exact.retrieval.index("watch"), ExactIndex) and set(run_dir.iterdir()) == files  # no graph written


@pytest.mark.parametrize("command", [["recommend", "--user", 196, "--genre", "Comedy"], ["similar", "--item", STAR_WARS]])
def test_the_command_line_with_index_exact_prints_what_it_printed_before(run_dir, capsys, command):
    code, before, _ = run_cli(capsys, *command, "--model", run_dir, "--format", "json")
    assert code == 0
    code, exact, _ = run_cli(capsys, *command, "--model", run_dir, "--format", "json", "--index", "exact")
    assert code == 0 and exact == before


def test_auto_is_exact_below_the_threshold_and_hnsw_from_it(run_dir, monkeypatch):
    assert IndexConfig().kind == "auto" and Recommender.load(run_dir).retrieval.kind == "exact"  # 1,682 items
    assert AUTO_ITEMS > 1682
    monkeypatch.setattr(mtrec.serving.retrieval, "AUTO_ITEMS", 1682)
    assert Recommender.load(run_dir).retrieval.kind == "hnsw"


# ---------------------------------------------------------------------------------------------
# HNSW: the graph's candidates, re-scored exactly


def test_hnsw_finds_the_exact_top_10_of_every_user(exact, graph):
    recall = []
    for user in exact.catalogue.user_ids:
        want, got = exact.recommend(user, k=10), graph.recommend(user, k=10)
        recall.append(len(set(items_of(want)) & set(items_of(got))) / 10)
        common = {row.item: row for row in want.items}
        for row in got.items:
            if row.item in common:  # the same exact numbers for the same item
                assert row.p == pytest.approx(common[row.item].p, abs=1e-5)
                assert row.rating_raw == pytest.approx(common[row.item].rating_raw, abs=1e-5)
        same = [(a, b) for a, b in zip(want.items, got.items) if a.item == b.item]
        assert [b.watch_score for _, b in same] == pytest.approx([a.watch_score for a, _ in same])
    assert np.mean(recall) >= 0.99


def test_hnsw_leaves_out_seen_items_and_applies_every_filter(exact, graph):
    model = graph.model
    user = int(np.argmax(np.diff(model.data_.seen_indptr)))  # 737 seen items
    raw = model.data_.user_ids[user]
    seen = set(model.data_.item_ids[model.data_.seen_indices[model.data_.seen_indptr[user] : model.data_.seen_indptr[user + 1]]].tolist())
    result = graph.recommend(raw, k=20)
    assert len(result.items) == 20 and not set(items_of(result)) & seen
    assert items_of(result) == items_of(exact.recommend(raw, k=20))
    for filters in ({"genres": ["Documentary"]}, {"include": [1, 2, 3, STAR_WARS, 181]}, {"exclude": items_of(result)[:5]}):
        assert items_of(graph.recommend(raw, k=10, **filters)) == items_of(exact.recommend(raw, k=10, **filters))


def test_hnsw_folds_in_a_new_user_and_finds_similar_items(exact, graph):
    history = [(STAR_WARS, 5), (181, 4), ("Fargo", None)]
    assert items_of(graph.recommend_history(history, k=10)) == items_of(exact.recommend_history(history, k=10))
    want, got = exact.similar(STAR_WARS, k=10), graph.similar(STAR_WARS, k=10)
    assert items_of(got) == items_of(want)
    assert [row.similarity for row in got.items] == pytest.approx([row.similarity for row in want.items], abs=1e-6)


def test_a_user_who_has_seen_almost_everything_gets_the_same_short_list():
    data = random_interactions(num_users=5, num_items=40, n=60, seed=3)
    keep = data.users != 0
    users = np.concatenate([data.users[keep], np.zeros(37, dtype=np.int64)])
    items = np.concatenate([data.items[keep], np.arange(37)])
    heavy = Interactions(users=users, items=items, ratings=np.full(len(users), 4.0, dtype=np.float32), timestamps=None, num_users=5,
                         num_items=40, user_ids=data.user_ids, item_ids=data.item_ids, rating_scale=(1.0, 5.0), name="heavy")  # fmt: skip
    model = MultitaskModel(embedding_dim=4, seed=0).fit(heavy, epochs=1)
    result = Recommender(model, HNSW).recommend(data.user_ids[0], k=10)
    assert items_of(result) == items_of(Recommender(model).recommend(data.user_ids[0], k=10))
    assert sorted(items_of(result)) == data.item_ids[37:].tolist()


def test_batch_export_with_hnsw_matches_the_exact_export(run_dir, tmp_path, capsys):
    for index in ("exact", "hnsw"):
        code, _, err = run_cli(capsys, "recommend", "--model", run_dir, "--all-users", "-k", 10, "--out", tmp_path / f"{index}.parquet",
                               "--no-progress", "--index", index, "--memory-budget", 1)  # fmt: skip
        assert code == 0, err
    exact, approximate = (pq.read_table(tmp_path / f"{index}.parquet").to_pydict() for index in ("exact", "hnsw"))
    assert len(exact["user"]) == len(approximate["user"]) == 943 * 10
    assert exact["user"] == approximate["user"]  # every user, in the same order
    pairs = lambda table: set(zip(table["user"], table["item"]))  # noqa: E731
    assert len(pairs(exact) & pairs(approximate)) / len(exact["user"]) >= 0.99


# ---------------------------------------------------------------------------------------------
# The graph beside the model: saved, verified, rebuilt with the reason


def test_the_graph_is_saved_beside_the_run_and_read_back_without_a_rebuild(run_dir, graph, monkeypatch):
    graph.retrieval.warm()
    for name in INDEX_FILENAMES:
        assert (run_dir / name).is_file()
    check_complete(run_dir)  # the run is still complete with its graphs beside it
    monkeypatch.setattr(HnswIndex, "build", lambda *args: pytest.fail("a saved graph was built again"))
    again = Recommender.load(run_dir, index=HNSW)
    again.retrieval.warm()
    assert items_of(again.recommend(196, k=10)) == items_of(graph.recommend(196, k=10))


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory, ml100k_split):
    train, _ = ml100k_split
    folder = tmp_path_factory.mktemp("models")
    MultitaskModel(embedding_dim=8, seed=0).fit(train, epochs=1).save(folder / "first")
    MultitaskModel(embedding_dim=8, seed=1).fit(train, epochs=1).save(folder / "second")
    Recommender.load(folder / "first", index=HNSW).retrieval.warm()
    return folder


@pytest.fixture
def two_models(trained_models, tmp_path):
    """A model folder whose graphs were built, and another model of the same data, both fresh copies."""
    shutil.copytree(trained_models, tmp_path, dirs_exist_ok=True)
    return tmp_path / "first", tmp_path / "second"


def test_a_graph_built_from_another_model_is_rebuilt_saying_so(two_models, capsys):
    first, second = two_models
    shutil.copy(second / "model.safetensors", first / "model.safetensors")  # the model replaced, its old graphs left
    code, out, err = run_cli(capsys, "recommend", "--model", first, "--user", 196, "--index", "hnsw", "--format", "json")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "model.watch.hnsw was built from another model" in lines[0] and lines[0].endswith("rebuilt it")
    assert lines[0].startswith("mtrec: warning: ")
    rebuilt = mtrec.serving.retrieval.read_index(first / "model.watch.hnsw", "watch", HNSW, model_digest(second))
    assert rebuilt[0] is not None and rebuilt[1] is None  # the file now belongs to the new model
    want = Recommender.load(second, index=IndexConfig.of(kind="exact")).recommend(196, k=10)
    assert len(set(row["item"] for row in json.loads(out)["items"]) & set(items_of(want))) >= 9


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda path: path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1])), "failed its integrity check"),
        (lambda path: path.write_bytes(b"not an index"), "is not a readable index"),
        (None, 'was built with {"ef_construction": 100, "m": 32}, not {"ef_construction": 100, "m": 8}'),
    ],
)
def test_a_damaged_or_different_graph_is_rebuilt_with_the_reason(two_models, spoil, reason):
    first, _ = two_models
    path = first / "model.watch.hnsw"
    config = HNSW if spoil else IndexConfig.of(kind="hnsw", m=8)
    if spoil:
        spoil(path)
    with pytest.warns(UserWarning, match=f"{re.escape(str(path))} .*{re.escape(reason)}.*: rebuilt it") as caught:
        Recommender.load(first, index=config).recommend(196, k=5)
    assert len(caught) == 1
    assert mtrec.serving.retrieval.read_index(path, "watch", config, model_digest(first))[1] is None


def test_a_graph_that_cannot_be_saved_is_still_used_saying_so(two_models, monkeypatch):
    _, second = two_models

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mtrec.serving.retrieval, "save_index", refuse)
    with pytest.warns(UserWarning, match="cannot save the watch index to .* \\(Permission denied\\): it is built again at each load"):
        result = Recommender.load(second, index=HNSW).recommend(196, k=5)
    assert len(result.items) == 5 and not (second / "model.watch.hnsw").exists()


# ---------------------------------------------------------------------------------------------
# Without the extra, and bad options


def test_hnsw_without_faiss_is_one_line_naming_the_extra(run_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    for command in (["recommend", "--user", 196], ["similar", "--item", STAR_WARS], ["serve"]):
        code, out, err = run_cli(capsys, *command, "--model", run_dir, "--index", "hnsw")
        assert code == 2 and out == ""
        assert err.strip().splitlines() == [
            f"mtrec {command[0]}: error: an HNSW index (--index hnsw) needs faiss, an optional extra: "
            'pip install "mtrec[ann]" (or pip install faiss-cpu)'
        ]


def test_auto_above_the_threshold_without_faiss_ranks_exactly_naming_the_extra(run_dir, exact, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setattr(mtrec.serving.retrieval, "AUTO_ITEMS", 1000)
    expected = r'1,682 items would be ranked faster by an HNSW index, but faiss is not installed: pip install "mtrec\[ann\]"'
    with pytest.warns(UserWarning, match=expected):
        recommender = Recommender.load(run_dir)
    assert recommender.retrieval.kind == "exact"
    assert items_of(recommender.recommend(196, k=10)) == items_of(exact.recommend(196, k=10))


@pytest.mark.parametrize(
    "option, value, message",
    [("--hnsw-m", 2, "index: m: input should be greater than or equal to 4"),
     ("--hnsw-ef-search", 0, "argument --hnsw-ef-search/--hnsw_ef_search: must be a positive whole number, got 0"),
     ("--index", "ivf", "argument --index: invalid choice: 'ivf'")],
)  # fmt: skip
def test_bad_index_options_are_one_line(run_dir, capsys, option, value, message):
    code, _, err = run_cli(capsys, "recommend", "--model", run_dir, "--user", 196, "--index", "hnsw", option, value)
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 2  # argparse adds its usage line


def test_each_serve_worker_ranks_with_the_index_it_was_given(run_dir, graph, monkeypatch):
    import mtrec.serving.http

    monkeypatch.setattr(mtrec.serving.http, "settle_heap", lambda: None)
    monkeypatch.setenv(mtrec.serving.http.ENVIRONMENT["model"], str(run_dir))
    monkeypatch.setenv(mtrec.serving.http.ENVIRONMENT["index"], IndexConfig.of(kind="hnsw", ef_search=64).model_dump_json())
    served = mtrec.serving.http.app_from_environment().state.recommender
    assert served.retrieval.kind == "hnsw" and served.retrieval.config.ef_search == 64
    assert len(set(items_of(served.recommend(196, k=10))) & set(items_of(graph.recommend(196, k=10)))) >= 9
