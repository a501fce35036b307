"""Inference at scale: every user's top k to a file (the same lists as one user at a time), new users
folded in from their history, filters in the library, the command line and the service, and the
bad inputs of each."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtrec.cli import main
from mtrec.errors import ConfigError, UnknownItemError
from mtrec.model import MultitaskModel
from mtrec.serving.recommender import MAX_HISTORY, Recommender


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ml100k_split):
    train, _ = ml100k_split
    run = tmp_path_factory.mktemp("model")
    MultitaskModel(seed=0, batch_size=4096, learning_rate=0.016).fit(train, epochs=8).save(run)
    return run


@pytest.fixture(scope="module")
def recommender(run_dir):
    return Recommender.load(run_dir)


def column(table: pa.Table, user: str, name: str) -> list:
    return table.filter(pa.compute.equal(table["user"], user))[name].to_pylist()


# ---------------------------------------------------------------------------------------------
# Batch inference


def test_every_users_top_k_is_what_recommend_gives_one_user_at_a_time(recommender):
    table = pa.concat_tables(recommender.recommend_all(k=15, budget_bytes=2**21))  # many small blocks
    assert table.num_rows == 943 * 15
    assert table.column_names == ["user", "rank", "item", "title", "watch_score", "p", "rating", "rating_raw", "cold_start"]
    for user in ("1", "13", "405", "943"):
        single = recommender.recommend(user, 15)
        assert column(table, user, "item") == [str(i.item) for i in single.items]
        assert column(table, user, "watch_score") == pytest.approx([i.watch_score for i in single.items], abs=1e-12)
        assert column(table, user, "rating") == pytest.approx([i.rating for i in single.items], rel=1e-6)
        assert column(table, user, "title") == [i.title for i in single.items]


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 10, 1682])
def test_the_batch_watch_scores_are_exact_with_ties(run_dir, k):
    """The fast count (picks, seen items and ties with the last pick) against bucketing every score
    (the filtered path, forced by a filter that keeps every item), on scores rounded into many ties."""
    tied = Recommender.load(run_dir)
    network = tied.network
    original = network.all_watch_scores
    network.all_watch_scores = lambda users: (original(users) * 2).round() / 2
    fast = pa.concat_tables(tied.recommend_all(k=k, budget_bytes=2**22))
    every = [str(i) for i in tied.model.data_.item_ids]
    slow = pa.concat_tables(tied.recommend_all(k=k, include=every, budget_bytes=2**22))
    assert fast.num_rows == slow.num_rows and fast["watch_score"].to_pylist() == slow["watch_score"].to_pylist()
    assert fast["p"].to_pylist() == slow["p"].to_pylist()
    assert len(set(fast["p"].to_pylist())) < fast.num_rows / 10  # ties are the rule here
    single = tied.recommend("13", min(k, 50))
    assert column(fast, "13", "watch_score")[: len(single.items)] == [i.watch_score for i in single.items]


@pytest.mark.parametrize("filters", [{}, {"genres": ["Comedy"], "exclude": ["Toy Story (1995)"]}])
def test_one_users_watch_scores_by_comparison_and_by_the_batch_count_agree_with_ties(run_dir, filters, monkeypatch):
    """A small k x items comparison, or (for large catalogues) the batch path's count: the same list."""
    import mtrec.serving.ranker as ranker

    tied = Recommender.load(run_dir)
    original = tied.network.all_watch_scores
    tied.network.all_watch_scores = lambda users: (original(users) * 2).round() / 2
    history = [(50, 5.0), (181, None), ("Fargo (1996)", 4.0)]
    compared = [tied.recommend(user, 40, **filters) for user in ("13", "196")] + [tied.recommend_history(history, 40, **filters)]
    monkeypatch.setattr(ranker, "COMPARE_ELEMENTS", 0)
    counted = [tied.recommend(user, 40, **filters) for user in ("13", "196")] + [tied.recommend_history(history, 40, **filters)]
    for a, b in zip(compared, counted, strict=True):  # which of tied items is listed may differ; their scores not
        assert len(a.items) == len(b.items) == 40
        assert [i.p for i in a.items] == [i.p for i in b.items]
        assert [i.watch_score for i in a.items] == [i.watch_score for i in b.items]
    for a, b in zip(compared[:2], counted[:2]):
        assert {i.item for i in a.items if i.p > a.items[-1].p} == {i.item for i in b.items if i.p > b.items[-1].p}
    assert len({i.p for i in compared[0].items}) < 20  # ties are the rule here


def test_listed_users_and_filters_in_the_batch(recommender):
    filters = {"genres": ["Comedy"], "exclude": ["Toy Story (1995)"]}
    table = pa.concat_tables(recommender.recommend_all(["196", "a-stranger"], k=5, **filters))
    assert column(table, "196", "item") == [str(i.item) for i in recommender.recommend("196", 5, **filters).items]
    assert column(table, "a-stranger", "cold_start") == [True] * 5
    assert "Toy Story (1995)" not in table["title"].to_pylist()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_recommend_all_users_writes_the_file_atomically(run_dir, tmp_path, suffix, capsys):
    out = tmp_path / f"recs{suffix}"
    assert main(["recommend", "--model", str(run_dir), "--all-users", "-k", "3", "--out", str(out), "--no-progress"]) == 0
    assert "wrote 2,829 recommendations for 943 users" in capsys.readouterr().out
    table = pq.read_table(out) if suffix == ".parquet" else pa.csv.read_csv(out)
    assert table.num_rows == 2829 and set(table.column_names) >= {"user", "rank", "item", "title", "watch_score", "rating"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_out_path_that_cannot_be_written_fails_before_any_scoring(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Recommender, "recommend_all", lambda *a, **k: pytest.fail("scored"))
    assert main(["recommend", "--model", str(run_dir), "--all-users", "--out", str(tmp_path / "no" / "r.parquet")]) == 1
    assert "no such directory to write r.parquet in" in capsys.readouterr().err
    assert main(["recommend", "--model", str(run_dir), "--all-users", "--out", str(tmp_path / "r.txt")]) == 2
    assert "--out must end in .parquet or .csv" in capsys.readouterr().err
    assert main(["recommend", "--model", str(run_dir), "--all-users"]) == 2
    assert "write to a file: give --out" in capsys.readouterr().err


def test_an_existing_out_file_is_kept_unless_forced(run_dir, tmp_path, capsys):
    out = tmp_path / "recs.csv"
    out.write_text("precious\n")
    command = ["recommend", "--model", str(run_dir), "--all-users", "-k", "2", "--out", str(out), "--no-progress"]
    assert main(command) != 0
    assert "recs.csv exists: give --force" in capsys.readouterr().err
    assert out.read_text() == "precious\n"
    assert main([*command, "--force"]) == 0
    assert pa.csv.read_csv(out).num_rows == 943 * 2


# ---------------------------------------------------------------------------------------------
# Fold-in


def test_a_history_is_folded_in_deterministically_and_its_items_left_out(recommender):
    history = [(50, 5.0), (181, 5.0), (172, 4.5), ("Raiders of the Lost Ark (1981)", 5.0)]
    first, again = recommender.recommend_history(history, 10), recommender.recommend_history(history, 10)
    assert [i.item for i in first.items] == [i.item for i in again.items] and not first.cold_start
    assert {50, 181, 172, 174}.isdisjoint(i.item for i in first.items)
    scores = [i.p for i in first.items]
    assert scores == sorted(scores, reverse=True)
    items_only = recommender.recommend_history([(item, None) for item, _ in history], 10)
    assert items_only.items and all(i.rating is not None for i in items_only.items)


@pytest.mark.slow
def test_folded_in_users_rank_their_test_items_far_above_popularity(ml100k_split):
    from mtrec.config import QUALITY_MODEL
    from mtrec.eval.baselines import PopularityNet
    from mtrec.eval.evaluation import Evaluator
    from mtrec.serving.foldin import fold_in, user_parameter_names

    train, test = ml100k_split
    held = np.random.default_rng(0).choice(train.num_users, 40, replace=False)
    is_held = np.isin(np.arange(train.num_users), held)
    model = MultitaskModel(**{**QUALITY_MODEL, "item_item": False}, seed=0).fit(train.subset(~is_held[train.users]), epochs=15)
    network, evaluator = model.network_, Evaluator(test.subset(is_held[test.users]), [train], metrics=("mse", "mrr"))
    untrained = evaluator.evaluate(network)
    network.use_histories(*train.seen_items_csr())  # the held-out users' histories, which the history encoder reads
    params, names = dict(network.named_parameters()), user_parameter_names(network)
    for user in held:
        rows = train.users == user
        one = fold_in(network, model.objective(), train.items[rows].tolist(), train.ratings[rows].tolist(),
                      model.negatives, model.weight_decay()["embeddings"])  # fmt: skip
        with torch.no_grad():
            for name in names:
                params[name][user] = dict(one.named_parameters())[name][0]
    folded, popular = evaluator.evaluate(network), evaluator.evaluate(PopularityNet(train.subset(~is_held[train.users])))
    assert folded["mrr"] > 1.5 * popular["mrr"] and folded["mrr"] > 1.5 * untrained["mrr"]
    assert folded["mse"] < 0.8 * popular["mse"] and folded["mse"] < untrained["mse"]


def test_an_empty_history_gets_the_popular_items_and_an_unknown_item_is_named(recommender):
    assert recommender.recommend_history([], 5).cold_start
    with pytest.raises(UnknownItemError, match="unknown item 'no such film' \\(history entry 2 of 2\\)"):
        recommender.recommend_history([(50, 5.0), ("no such film", 4.0)], 5)


def test_recommend_history_on_the_command_line(run_dir, tmp_path, capsys):
    history = tmp_path / "history.csv"
    history.write_text("item,rating\n50,5\n181,5\nStar Wars (1977),5\n")
    assert main(["recommend", "--model", str(run_dir), "--history", str(history), "-k", "4", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["items"]) == 4 and not result["cold_start"]
    assert main(["recommend", "--model", str(run_dir), "--history", str(history), "-k", "4", "--format", "json", "--instant"]) == 0
    instant = json.loads(capsys.readouterr().out)
    assert len(instant["items"]) == 4 and not {item["item"] for item in instant["items"]} & {"50", "181"}
    assert main(["recommend", "--model", str(run_dir), "--user", "196", "--instant"]) == 2
    assert "--instant folds in a new user's history: give --history FILE too" in capsys.readouterr().err
    history.write_text("item\n" + "\n".join(str(i) for i in range(1, MAX_HISTORY + 2)) + "\n")
    assert main(["recommend", "--model", str(run_dir), "--history", str(history)]) == 1
    assert f"{history}, line {MAX_HISTORY + 2}: more than {MAX_HISTORY:,} items; a history holds at most {MAX_HISTORY:,}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Filters


def test_filters_exclude_include_and_genres(recommender):
    base = recommender.recommend("196", 20)
    excluded = recommender.recommend("196", 20, exclude=[base.items[0].item, base.items[1].title])
    assert [i.item for i in excluded.items[:5]] == [i.item for i in base.items[2:7]]
    candidates = [i.item for i in base.items[5:8]]
    assert [i.item for i in recommender.recommend("196", 10, include=candidates).items] == candidates
    comedies = recommender.recommend("196", 10, genres=["Comedy", "Romance"])
    assert all({"Comedy", "Romance"} & set(i.genres) for i in comedies.items)
    cold = recommender.recommend("somebody-new", 5, genres=["Horror"])
    assert cold.cold_start and all("Horror" in i.genres for i in cold.items)


def test_a_filter_that_excludes_everything_gives_an_empty_list(recommender):
    assert recommender.recommend("196", 10, include=[]).items == []
    assert recommender.recommend("196", 10, genres=["Film-Noir"], include=["Toy Story (1995)"]).items == []
    with pytest.raises(ConfigError, match="unknown genre 'Telenovela'; the genres are Action, Adventure"):
        recommender.recommend("196", 10, genres=["Telenovela"])
    with pytest.raises(UnknownItemError, match="\\(in exclude\\)"):
        recommender.recommend("196", 10, exclude=["no such film"])


def test_filters_on_the_command_line(run_dir, capsys):
    assert main(["recommend", "--model", str(run_dir), "--user", "196", "-k", "3", "--genre", "Horror", "--format", "json"]) == 0
    assert all("Horror" in item["genres"] for item in json.loads(capsys.readouterr().out)["items"])


# ---------------------------------------------------------------------------------------------
# The service


@pytest.fixture(scope="module")
def client(run_dir):
    import httpx
    import uvicorn

    from mtrec.serving.http import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(run_dir), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        yield http
    server.should_exit = True
    thread.join(timeout=10)


def test_the_service_folds_in_a_history_and_filters(client, recommender):
    body = {"history": [{"item": 50, "rating": 5}, {"item": "Raiders of the Lost Ark (1981)", "rating": 5}], "k": 5, "genres": ["Action"]}
    response = client.post("/recommendations", json=body)
    assert response.status_code == 200
    expected = recommender.recommend_history([(50, 5.0), ("Raiders of the Lost Ark (1981)", 5.0)], 5, genres=["Action"])
    assert [i["item"] for i in response.json()["items"]] == [i.item for i in expected.items]
    instant = client.post("/recommendations", json={**body, "instant": True})
    expected = recommender.recommend_history([(50, 5.0), ("Raiders of the Lost Ark (1981)", 5.0)], 5, genres=["Action"], instant=True)
    assert instant.status_code == 200 and [i["item"] for i in instant.json()["items"]] == [i.item for i in expected.items]
    assert client.post("/recommendations", json={**body, "instant": "sometimes"}).status_code == 422
    filtered = client.get("/users/196/recommendations?k=5&exclude=151,216&genre=Comedy").json()
    expected = recommender.recommend("196", 5, exclude=["151", "216"], genres=["Comedy"])
    assert [i["item"] for i in filtered["items"]] == [i.item for i in expected.items]
    assert client.get("/users/196/recommendations?include=").json()["items"] == []  # an empty candidate set


def test_the_service_names_bad_histories(client):
    unknown = client.post("/recommendations", json={"history": [{"item": "no such film"}]})
    assert unknown.status_code == 404 and "unknown item 'no such film' (history entry 1 of 1)" in unknown.json()["detail"]
    assert client.post("/recommendations", json={"history": []}).status_code == 422
    oversized = {"history": [{"item": 1}] * (MAX_HISTORY + 1)}
    assert client.post("/recommendations", json=oversized).status_code == 422
    assert client.get("/users/196/recommendations?genre=Telenovela").status_code == 422


@pytest.mark.slow
def test_serving_with_several_workers(run_dir, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrec", "serve", "--model", str(run_dir), "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, answers = time.time() + 90, []
        while time.time() < deadline and len(answers) < 20:
            try:
                answers.append(httpx.get(f"http://127.0.0.1:{port}/users/196/recommendations?k=3", timeout=2).json())
            except httpx.HTTPError:
                time.sleep(0.3)
        assert len(answers) == 20 and all(a == answers[0] for a in answers)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Started parent process" in process.stderr.read()
