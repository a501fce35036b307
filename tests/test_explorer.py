"""The web explorer's JSON endpoints, its page and files, and ``mtrec explore``, without a browser
(tests/test_explorer_browser.py drives the page itself), on a small model trained from a ratings file
whose items file holds a title with markup in it."""

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mtrec.cli import main
from mtrec.serving.explorer import Explorer
from mtrec.serving.http import create_app
from mtrec.serving.recommender import Recommender

#: A title that would run script if the page ever wrote a title as markup.
EVIL_TITLE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> Evil (1999)'
GENRES = ("Drama", "Comedy", "Horror")
#: A user whose every rating falls after the temporal split's cutoff: known to the model, nothing in training.
LATE_USER = "late"


def item_title(n: int) -> str:
    return {0: "Star Wars (1977)", 1: "Star Trek (1979)", 2: EVIL_TITLE, 3: "Number Nine (1953)"}.get(n, f"Film number {n} ({1950 + n})")


def item_genres(n: int) -> list[str]:
    return [GENRES[n % 3], GENRES[(n + 1) % 3]] if n % 4 else [GENRES[n % 3]]


def explorer_ratings(folder: Path) -> tuple[Path, Path]:
    """A ratings file (25 users, 30 items, ratings 1 to 5, and :data:`LATE_USER`'s after the cutoff) and its items file."""
    items, ratings = folder / "items.csv", folder / "ratings.csv"
    with open(items, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item", "title", "genres"])
        writer.writerows([f"i{n}", item_title(n), "|".join(item_genres(n))] for n in range(30))
    rows = [(f"u{u}", f"i{(u * 7 + k) % 30}", 1 + (u + k) % 5, 1000 + k) for u in range(25) for k in range(12)]
    rows += [(LATE_USER, f"i{k}", 4, 2_000_000_000) for k in range(3)]
    with open(ratings, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "rating", "timestamp"])
        writer.writerows(rows)
    return ratings, items


def train_explorer_run(folder: Path) -> Path:
    """A finished run of :func:`explorer_ratings`, split in time so that :data:`LATE_USER` has no training ratings."""
    ratings, items = explorer_ratings(folder)
    run = folder / "run"
    argv = [
        "train",
        "--no-progress",
        "--device",
        "cpu",
        "--preset",
        "seed",
        "--ratings",
        str(ratings),
        "--items",
        str(items),
        "--split",
        "temporal",
        "--cutoff",
        "1500000000",
        "--epochs",
        "2",
        "--embedding-dim",
        "8",
        "--logdir",
        str(run),
    ]
    assert main(argv) == 0
    return run


def given_ratings(user: str) -> dict[str, float]:
    """The ratings ``user`` gave in :func:`explorer_ratings`'s training part."""
    return {f"i{(int(user[1:]) * 7 + k) % 30}": float(1 + (int(user[1:]) + k) % 5) for k in range(12)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_explorer_run(tmp_path_factory.mktemp("explorer"))


@pytest.fixture(scope="module")
def recommender(run_dir):
    return Recommender.load(run_dir)


@pytest.fixture(scope="module")
def client(recommender):
    return TestClient(create_app(recommender))


# ---------------------------------------------------------------------------------------------
# the page and its files


def test_the_page_is_served_at_the_root_with_its_script_and_style_from_the_service_only(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script src="explorer/app.js" defer></script>' in page.text and 'href="explorer/style.css"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere: it works offline
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    for name, media_type in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = client.get(f"/explorer/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        assert response.headers["x-content-type-options"] == "nosniff" and len(response.content) > 1000
    assert dict(client.head("/").headers) == dict(page.headers) and client.head("/").content == b""


@pytest.mark.parametrize("name", ["index.html", "../serve.py", "%2e%2e%2fserve.py", "nothing.js"])
def test_only_the_explorers_own_files_are_served(client, name):
    response = client.get(f"/explorer/{name}")
    assert response.status_code == 404 and response.json()["detail"] in ("no such file of the explorer", "Not Found")


def test_the_script_writes_data_as_text_never_as_markup():
    script = (Path(__file__).resolve().parents[1] / "src" / "mtrec" / "serving" / "web" / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert script.count("textContent") > 20


# ---------------------------------------------------------------------------------------------
# GET /users/{user}/history


def test_history_lists_the_users_training_ratings_best_first_with_the_models_view(client, recommender):
    body = client.get("/users/u3/history?k=1000").json()
    given = given_ratings("u3")
    assert body["user"] == "u3" and body["num_rated"] == len(given) == len(body["items"]) and body["ratings_known"] is True
    assert {row["item"]: row["given"] for row in body["items"]} == given
    assert [row["rank"] for row in body["items"]] == list(range(1, len(given) + 1))
    assert [row["given"] for row in body["items"]] == sorted(given.values(), reverse=True)
    for first, second in zip(body["items"], body["items"][1:]):  # ties: the model's predicted rating decides
        assert first["given"] > second["given"] or first["rating"] >= second["rating"]
    predictions = {p.item: p for p in recommender.predict([("u3", item) for item in given])}
    for row in body["items"]:
        assert row["watch_score"] == pytest.approx(predictions[row["item"]].watch_score, abs=1e-6)
        assert row["rating"] == pytest.approx(predictions[row["item"]].rating, abs=1e-6)
        assert row["num_ratings"] == np.sum(recommender.model.data_.seen_indices == recommender.item_index(row["item"]))
        assert row["title"] == item_title(int(row["item"][1:])) and row["genres"] == item_genres(int(row["item"][1:]))


def test_history_keeps_the_best_k_and_filters_by_genre(client):
    given = given_ratings("u3")
    best = client.get("/users/u3/history?k=4").json()
    assert best["num_rated"] == 12 and [row["given"] for row in best["items"]] == sorted(given.values(), reverse=True)[:4]
    horror = client.get("/users/u3/history?k=100&genre=Horror").json()["items"]
    assert {row["item"] for row in horror} == {item for item in given if "Horror" in item_genres(int(item[1:]))}


def test_a_known_user_without_training_ratings_has_an_empty_history(client):
    assert client.get(f"/users/{LATE_USER}/history").json() == {"user": LATE_USER, "num_rated": 0, "ratings_known": True, "items": []}


@pytest.mark.parametrize(
    "url, status, message",
    [
        ("/users/nobody/history", 404, "unknown user 'nobody'"),
        ("/users/u3/history?genre=Western", 422, "unknown genre 'Western'; the genres are Comedy, Drama, Horror"),
        ("/users/u3/history?k=0", 422, "greater than or equal to 1"),
        (f"/users/{'u' * 300}/history", 422, "at most 256 characters"),
    ],
)
def test_a_bad_history_request_says_why(client, url, status, message):
    response = client.get(url)
    assert response.status_code == status and message in json.dumps(response.json())


def test_the_users_ratings_travel_in_the_model_file(run_dir, recommender):
    data, user = recommender.model.data_, recommender.user_index("u3")
    start, stop = data.seen_indptr[user], data.seen_indptr[user + 1]
    got = dict(zip(data.item_ids[data.seen_indices[start:stop]].tolist(), data.seen_ratings[start:stop].tolist()))
    assert got == given_ratings("u3")
    assert data.seen_ratings.dtype == np.float32 and len(data.seen_ratings) == len(data.seen_indices)


def test_a_model_file_without_the_ratings_shows_the_rated_items_without_them(run_dir):
    old = Recommender.load(run_dir)
    old.model.data_.seen_ratings = None  # as a model saved before they were kept
    history = Explorer(old).history("u3", 100)
    assert history.ratings_known is False and len(history.items) == 12
    assert all(row.given is None for row in history.items)
    assert [row.rating for row in history.items] == sorted((row.rating for row in history.items), reverse=True)


# ---------------------------------------------------------------------------------------------
# GET /items?query=


def test_a_search_finds_the_titles_holding_the_text_in_any_case_the_most_rated_first(client, recommender):
    rows = client.get("/items", params={"query": "NUMBER 1", "k": 100}).json()["items"]
    assert {row["item"] for row in rows} == {f"i{n}" for n in range(10, 20)}
    popularity = np.bincount(recommender.model.data_.seen_indices, minlength=30)
    assert [row["num_ratings"] for row in rows] == sorted((popularity[recommender.item_index(row["item"])] for row in rows), reverse=True)
    assert rows[0]["title"] == item_title(int(rows[0]["item"][1:])) and rows[0]["genres"] == item_genres(int(rows[0]["item"][1:]))


def test_a_search_puts_the_titles_that_begin_with_the_text_before_those_that_hold_it(client):
    rows = client.get("/items", params={"query": "number", "k": 100}).json()["items"]
    assert len(rows) == 27 and rows[0]["title"] == "Number Nine (1953)"
    assert all(row["title"].startswith("Film number") for row in rows[1:])
    evil = client.get("/items", params={"query": "evil", "k": 5}).json()["items"]
    assert [row["title"] for row in evil] == [EVIL_TITLE]  # returned as it is: the page shows it as text


def test_a_search_by_an_item_id_puts_that_item_first(client):
    rows = client.get("/items", params={"query": "i2", "k": 3}).json()["items"]
    assert rows[0]["item"] == "i2" and rows[0]["title"] == EVIL_TITLE and len(rows) == 1


@pytest.mark.parametrize("query, k, count", [("zzz", 10, 0), ("", 10, 0), ("   ", 10, 0), ("film", 3, 3), ("(19", 1000, 30)])
def test_a_search_gives_at_most_k_items_and_none_for_no_text(client, query, k, count):
    assert len(client.get("/items", params={"query": query, "k": k}).json()["items"]) == count


@pytest.mark.parametrize("params", [{}, {"query": "x" * 257}, {"query": "star", "k": 0}, {"query": "star", "k": 1001}])
def test_a_search_needs_a_bounded_query_and_k(client, params):
    assert client.get("/items", params=params).status_code == 422


# ---------------------------------------------------------------------------------------------
# GET /items/{item}/ratings


def test_an_items_predicted_ratings_over_all_users_are_one_histogram(client, recommender):
    body = client.get("/items/i5/ratings?bins=8").json()
    users = torch.arange(recommender.model.data_.num_users)
    with torch.inference_mode():
        predicted = recommender.network.rating(users, torch.full_like(users, recommender.item_index("i5"))).clamp(1, 5)
    assert body["item"] == "i5" and body["title"] == item_title(5) and body["users"] == 26
    assert body["edges"] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert body["counts"] == np.histogram(predicted.numpy(), bins=8, range=(1, 5))[0].tolist()
    assert sum(body["counts"]) == 26 and body["mean"] == pytest.approx(float(predicted.mean()), abs=1e-5)


def test_an_items_ratings_by_title(client):
    assert client.get("/items/Star Wars/ratings").json()["item"] == "i0"


@pytest.mark.parametrize(
    "url, status, message",
    [
        ("/items/nothing/ratings", 404, "unknown item 'nothing'"),
        ("/items/i5/ratings?bins=1", 422, "greater than or equal to 2"),
        ("/items/i5/ratings?bins=101", 422, "less than or equal to 100"),
    ],
)
def test_a_bad_ratings_request_says_why(client, url, status, message):
    response = client.get(url)
    assert response.status_code == status and message in json.dumps(response.json())


def test_a_model_without_ratings_says_it_predicts_none(tmp_path):
    from conftest import random_interactions

    from mtrec.model import MultitaskModel

    model = MultitaskModel(embedding_dim=4, regression_weight=0.0, factorization_weight=1.0, seed=0)
    model.fit(random_interactions(ratings=False), epochs=1)
    response = TestClient(create_app(Recommender(model))).get("/items/1/ratings")
    assert response.status_code == 422 and response.json() == {"detail": "this model did not learn ratings, so it predicts none"}


# ---------------------------------------------------------------------------------------------
# GET /model: what the explorer shows of the model


def test_the_model_facts_hold_the_selected_epoch_the_genres_and_the_training_data(client, recommender):
    body = client.get("/model").json()
    assert body["metrics"]["selected"]["epoch"] == recommender.model.selected_epoch_ == 2
    assert body["genres"] == ["Comedy", "Drama", "Horror"] and body["train_ratings"] == 300
    assert body["example_user"] == "u0"  # the first user with training ratings: "late" has none
    assert body["config"]["embedding_dim"] == 8 and body["dataset"] == "ratings.csv"


def test_the_new_endpoints_are_documented(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/users/{user}/history", "/items", "/items/{item}/ratings"} <= set(paths)
    assert "/" not in paths and "/explorer/{name}" not in paths


# ---------------------------------------------------------------------------------------------
# mtrec explore


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_explore_serves_the_page_on_127_0_0_1_and_prints_its_address(run_dir):
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "mtrec", "explore", "--model", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()  # printed once the port is bound, before the model is served
        assert line.startswith(f"mtrec explore: the explorer of {run_dir} is at http://127.0.0.1:")
        address = line.split(" is at ")[1].split()[0]
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(address, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the explorer did not answer"
                time.sleep(0.1)
        assert page.status_code == 200 and "<title>mtrec explorer</title>" in page.text
        assert httpx.get(f"{address}users/u3/history?k=2").json()["num_rated"] == 12
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_explore_on_a_taken_port_is_a_one_line_error(run_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["explore", "--model", str(run_dir), "--port", str(taken.getsockname()[1])]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("mtrec explore: error: Address already in use") and captured.err.count("\n") == 1
    assert captured.out == ""


@pytest.mark.parametrize("port, problem", [("65536", "must be a port number, 1 to 65535, got 65536"), ("0", "must be a positive whole number")])
def test_explore_refuses_a_port_that_is_not_one(run_dir, capsys, port, problem):
    assert main(["explore", "--model", str(run_dir), "--port", port]) == 2
    assert problem in capsys.readouterr().err


def test_explore_of_a_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["explore", "--model", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mtrec explore: error: ") and err.count("\n") == 1
