"""The service and fold-in under hostile inputs and load: a history's ratings are checked once, for
the library, the command line and the service alike; ids are never coerced from other JSON types;
fold-ins wait in a bounded pool and beyond it are refused at once (503, Retry-After) while the
cheap requests are still answered; a body that is not JSON is a 415; every GET answers HEAD."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict

import httpx
import numpy as np
import pytest
import uvicorn

from mtrec.cli import main
from mtrec.errors import ConfigError, DataError
from mtrec.model import MultitaskModel
from mtrec.serving.foldin import RatingError, check_ratings, fold_in_model
from mtrec.serving.http import ENVIRONMENT, INLINE_SCORES, POOL_QUEUE, POOL_THREADS, RETRY_AFTER_SECONDS, create_app
from mtrec.serving.recommender import Recommender

#: Seconds a test waits for the server before it fails (a guard, not a measurement).
PATIENCE = 60
HISTORY = [(50, 5.0), (181, 4.0), ("Fargo (1996)", None)]
BAD_RATINGS = [
    (math.nan, "rating nan is not a finite number"),
    (math.inf, "rating inf is not a finite number"),
    (-math.inf, "rating -inf is not a finite number"),
    (1e308, "rating 1e+308 is outside the model's rating scale 1..5"),
    (0.0, "rating 0 is outside the model's rating scale 1..5"),
    (6.0, "rating 6 is outside the model's rating scale 1..5"),
    (-1.0, "rating -1 is outside the model's rating scale 1..5"),
    (5.01, "rating 5.01 is outside the model's rating scale 1..5"),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ml100k_split):
    train, _ = ml100k_split
    run = tmp_path_factory.mktemp("run")
    MultitaskModel(seed=0, embedding_dim=8, batch_size=4096, learning_rate=0.02).fit(train, epochs=1).save(run)
    return run


@pytest.fixture(scope="module")
def recommender(run_dir):
    return Recommender.load(run_dir)


@contextlib.contextmanager
def serving(app):
    """``app`` served by uvicorn on a free port of 127.0.0.1; a client for it."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + PATIENCE
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=PATIENCE) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def client(recommender):
    with serving(create_app(recommender)) as http:
        yield http


class Gated(Recommender):
    """A real recommender whose fold-ins start only once the test opens ``gate``: the pool's places
    stay taken for exactly as long as the test needs, without any timing."""

    def __init__(self, model: MultitaskModel) -> None:
        super().__init__(model)
        self.gate, self.started = threading.Event(), threading.Semaphore(0)

    def recommend_history(self, *args, **kwargs):
        self.started.release()
        assert self.gate.wait(PATIENCE), "the test never opened the gate"
        return super().recommend_history(*args, **kwargs)


@contextlib.contextmanager
def opened_at_exit(gated: Gated):
    """The block; after it, ``gated``'s gate is open whatever happened in it, so that a failed assertion
    leaves no fold-in (nor the sender waiting on it) blocked until PATIENCE runs out."""
    try:
        yield
    finally:
        gated.gate.set()


def history_body(history=HISTORY, k: int = 5) -> dict:
    return {"history": [{"item": item, "rating": rating} for item, rating in history], "k": k}


# ---------------------------------------------------------------------------------------------
# 3a. A history's ratings: finite and on the model's scale, in the library, the CLI and the service


@pytest.mark.parametrize("rating, problem", BAD_RATINGS)
def test_the_library_refuses_a_rating_not_finite_or_off_the_scale_naming_the_entry(recommender, rating, problem):
    history = [(50, 5.0), (181, None), (172, rating)]
    with pytest.raises(RatingError, match=f"^{re.escape(f'history entry 3 of 3: {problem}')}$") as raised:
        recommender.recommend_history(history, 5)
    assert isinstance(raised.value, DataError) and raised.value.position == 2
    with pytest.raises(RatingError, match=re.escape(problem)):  # the fold-in entry point itself, whoever calls it
        fold_in_model(recommender.model, [49, 180, 171], [5.0, None, rating])


def test_ratings_on_the_scale_and_missing_ones_are_accepted_as_they_are():
    assert check_ratings([1, 5, None, np.float32(2.5), 3.0], (1.0, 5.0)) == [1.0, 5.0, None, 2.5, 3.0]
    assert check_ratings([0.5, 100.0], None) == [0.5, 100.0]  # a model without a scale: any finite number
    with pytest.raises(RatingError, match="history entry 2 of 2: rating True is not a number"):
        check_ratings([5.0, True], (1.0, 5.0))
    with pytest.raises(RatingError, match="history entry 1 of 1: rating '5' is not a number"):
        check_ratings(["5"], (1.0, 5.0))


def test_a_refused_rating_leaves_the_recommender_as_it_was(recommender):
    before = recommender.recommend_history(HISTORY, 10)
    with pytest.raises(RatingError):
        recommender.recommend_history([*HISTORY, (172, math.nan)], 10)
    assert recommender.recommend_history(HISTORY, 10) == before
    assert recommender.recommend_history([(50, 1), (181, 5)], 3).cold_start is False  # the scale's own ends


def test_fold_in_checks_ratings_even_when_the_model_fits_none():
    from conftest import random_interactions

    model = MultitaskModel(seed=0, embedding_dim=4, regression_weight=0.0, factorization_weight=1.0)
    model.fit(random_interactions(), epochs=1)
    with pytest.raises(RatingError, match="history entry 1 of 2: rating nan is not a finite number"):
        fold_in_model(model, [0, 1], [math.nan, 4.0])
    with pytest.raises(ConfigError, match="1 ratings for 2 items"):
        fold_in_model(model, [0, 1], [4.0])


@pytest.mark.parametrize(
    "text, problem",
    [
        ("nan", "rating nan is not a finite number"),
        ("inf", "rating inf is not a finite number"),
        ("1e400", "rating inf is not a finite number"),
        ("five", "rating 'five' is not a number"),
        ("1e308", "rating 1e+308 is outside the model's rating scale 1..5"),
        ("0", "rating 0 is outside the model's rating scale 1..5"),
        ("6", "rating 6 is outside the model's rating scale 1..5"),
        ("-1", "rating -1 is outside the model's rating scale 1..5"),
    ],
)
def test_a_history_file_with_a_bad_rating_is_a_one_line_error(run_dir, tmp_path, capsys, text, problem):
    history = tmp_path / "history.csv"
    contents = f"item,rating\n\n50,5\n181,{text}\nFargo (1996),4\n"  # a blank line: lines are counted, not entries
    history.write_text(contents)
    assert main(["recommend", "--model", str(run_dir), "--history", str(history), "--format", "json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"mtrec recommend: error: {history}, line 4: {problem}\n"
    assert history.read_text() == contents


@pytest.mark.parametrize(
    "literal, problem",
    [
        ("NaN", "rating nan is not a finite number"),
        ("Infinity", "rating inf is not a finite number"),
        ("-Infinity", "rating -inf is not a finite number"),
        ("1e400", "rating inf is not a finite number"),
        ("1e308", "rating 1e+308 is outside the model's rating scale 1..5"),
        ("0", "rating 0 is outside the model's rating scale 1..5"),
        ("6", "rating 6 is outside the model's rating scale 1..5"),
        ("-1", "rating -1 is outside the model's rating scale 1..5"),
    ],
)
def test_the_service_refuses_a_bad_rating_with_the_entrys_position(client, recommender, literal, problem):
    body = '{"history": [{"item": 50, "rating": 5}, {"item": 181}, {"item": 172, "rating": 4}, {"item": 1, "rating": %s}], "k": 5}'
    response = client.post("/recommendations", content=body % literal, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {
        "detail": [{"type": "value_error", "loc": ["body", "history", 3, "rating"], "msg": f"history entry 4 of 4: {problem}"}]
    }
    good = client.post("/recommendations", json=history_body())
    assert good.status_code == 200 and good.json() == asdict(recommender.recommend_history(HISTORY, 5))


# ---------------------------------------------------------------------------------------------
# 3b. Ids (and every other value of a body) are taken as sent, never coerced


@pytest.mark.parametrize(
    "url, body, loc",
    [
        ("/predict", {"pairs": [{"user": True, "item": 50}]}, ["body", "pairs", 0, "user"]),
        ("/predict", {"pairs": [{"user": 196, "item": False}]}, ["body", "pairs", 0, "item"]),
        ("/predict", {"pairs": [{"user": 196.0, "item": 50}]}, ["body", "pairs", 0, "user"]),
        ("/predict", {"pairs": [{"user": 196, "item": [50]}]}, ["body", "pairs", 0, "item"]),
        ("/recommendations", {"history": [{"item": True}]}, ["body", "history", 0, "item"]),
        ("/recommendations", {"history": [{"item": 50, "rating": True}]}, ["body", "history", 0, "rating"]),
        ("/recommendations", {"history": [{"item": 50, "rating": "5"}]}, ["body", "history", 0, "rating"]),
        ("/recommendations", {"history": [{"item": 50}], "exclude": [True]}, ["body", "exclude", 0]),
        ("/recommendations", {"history": [{"item": 50}], "include": [1, False]}, ["body", "include", 1]),
        ("/recommendations", {"history": [{"item": 50}], "k": True}, ["body", "k"]),
        ("/recommendations", {"history": [{"item": 50}], "k": 5.0}, ["body", "k"]),
    ],
)
def test_booleans_and_other_non_ids_are_422_naming_the_field(client, url, body, loc):
    response = client.post(url, json=body)
    assert response.status_code == 422
    assert all(problem["loc"][: len(loc)] == loc for problem in response.json()["detail"])


def test_ids_as_whole_numbers_or_strings_are_the_same_ids(client, recommender):
    by_number = client.post("/predict", json={"pairs": [{"user": 1, "item": 50}]}).json()
    by_string = client.post("/predict", json={"pairs": [{"user": "1", "item": "50"}]}).json()
    assert by_number == by_string == {"predictions": [asdict(recommender.predict([(1, 50)])[0])]}


# ---------------------------------------------------------------------------------------------
# 4. Fold-ins (and large batches) in a bounded pool; beyond it, 503 with Retry-After at once


def test_beyond_the_pools_threads_and_queue_fold_ins_are_refused_at_once_with_retry_after(recommender):
    gated, threads, queue, excess = Gated(recommender.model), 1, 2, 2
    with serving(create_app(gated, pool_threads=threads, pool_queue=queue)) as http, ThreadPoolExecutor(8) as senders, opened_at_exit(gated):
        sent = [senders.submit(http.post, "/recommendations", json=history_body()) for _ in range(threads + queue + excess)]
        finished = as_completed(sent, timeout=PATIENCE)
        refused = [next(finished).result() for _ in range(excess)]  # the admitted ones wait at the gate
        assert [r.status_code for r in refused] == [503] * excess
        assert all(r.headers["retry-after"] == str(RETRY_AFTER_SECONDS) for r in refused)
        assert "the service is busy: 1 heavy requests (fold-ins, large batches) are running and 2 waiting" in refused[0].json()["detail"]
        assert sum(future.done() for future in sent) == excess  # the admitted ones are still waiting
        gated.gate.set()
        answers = [future.result() for future in sent]
        assert Counter(r.status_code for r in answers) == {200: threads + queue, 503: excess}
        expected = asdict(recommender.recommend_history(HISTORY, 5))
        assert all(r.json() == expected for r in answers if r.status_code == 200)
        assert http.post("/recommendations", json=history_body()).json() == expected  # every place is free again


def test_get_requests_are_answered_while_the_pool_is_full(recommender):
    gated = Gated(recommender.model)
    with serving(create_app(gated, pool_threads=1, pool_queue=0)) as http, ThreadPoolExecutor(1) as senders, opened_at_exit(gated):
        pending = senders.submit(http.post, "/recommendations", json=history_body())
        assert gated.started.acquire(timeout=PATIENCE)  # the fold-in runs: the pool's one place is taken
        assert http.post("/recommendations", json=history_body()).status_code == 503
        large = {"pairs": [{"user": 1 + n % 943, "item": 1 + n % 1682} for n in range(INLINE_SCORES // 1682 + 1)]}
        assert http.post("/predict", json=large).status_code == 503  # large batches share the pool
        answers = {
            "/health": http.get("/health"),
            "/model": http.get("/model"),
            "/users/196/recommendations?k=5": http.get("/users/196/recommendations?k=5"),
            "/users/196/items/50": http.get("/users/196/items/50"),
            "/items/50/similar?k=3": http.get("/items/50/similar?k=3"),
            "/predict": http.post("/predict", json={"pairs": [{"user": 196, "item": 50}]}),
        }
        assert {url: r.status_code for url, r in answers.items()} == dict.fromkeys(answers, 200)
        assert answers["/users/196/recommendations?k=5"].json() == asdict(recommender.recommend(196, 5))
        assert not pending.done()  # answered while the fold-in was running
        gated.gate.set()
        assert pending.result().json() == asdict(recommender.recommend_history(HISTORY, 5))


def test_a_failed_check_while_fold_ins_wait_at_the_gate_fails_at_once_and_frees_them(recommender):
    gated, began = Gated(recommender.model), time.monotonic()
    with pytest.raises(AssertionError, match="a check that fails"):
        with serving(create_app(gated, pool_threads=1, pool_queue=0)) as http, ThreadPoolExecutor(1) as senders, opened_at_exit(gated):
            pending = senders.submit(http.post, "/recommendations", json=history_body())
            assert gated.started.acquire(timeout=PATIENCE)  # the fold-in waits at the gate
            raise AssertionError("a check that fails")
    assert pending.result().status_code == 200 and time.monotonic() - began < PATIENCE / 4


def test_a_failed_fold_in_frees_its_place_in_the_pool(recommender):
    with serving(create_app(recommender, pool_threads=1, pool_queue=0)) as http:
        assert http.post("/recommendations", json=history_body([("no such film", 5.0)])).status_code == 404
        assert http.post("/recommendations", json=history_body([(50, 9.0)])).status_code == 422
        assert http.post("/recommendations", json={**history_body(), "genres": ["Telenovela"]}).status_code == 422
        assert http.post("/recommendations", json=history_body()).status_code == 200


def recorded_trims(monkeypatch) -> list[str]:
    """The names of the threads :func:`mtrec.serving.http.trim_heap` runs on from now on (in place of trimming)."""
    import mtrec.serving.http

    trims: list[str] = []
    monkeypatch.setattr(mtrec.serving.http, "trim_heap", lambda: trims.append(threading.current_thread().name))
    return trims


def settled(trims: list[str], count: int) -> list[str]:
    """``trims`` once it holds ``count`` (a trim runs on a pool thread just after the request's answer), and
    a moment more: no further one comes."""
    deadline = time.monotonic() + PATIENCE
    while len(trims) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    return trims


def test_the_heap_is_trimmed_once_when_the_pool_empties(recommender, monkeypatch):
    trims = recorded_trims(monkeypatch)
    gated = Gated(recommender.model)
    with serving(create_app(gated, pool_threads=3, pool_queue=0)) as http, ThreadPoolExecutor(3) as senders, opened_at_exit(gated):
        pending = [senders.submit(http.post, "/recommendations", json=history_body()) for _ in range(3)]
        for _ in range(3):  # all three admitted and running
            assert gated.started.acquire(timeout=PATIENCE)
        assert trims == []
        gated.gate.set()
        assert [future.result().status_code for future in pending] == [200] * 3
        assert len(settled(trims, 1)) == 1 and trims[0].startswith("mtrec-pool")


@pytest.mark.slow
@pytest.mark.parametrize("interval, expected", [(3600.0, 1), (0.0, 3)])
def test_under_serial_load_the_heap_is_trimmed_at_most_once_an_interval(recommender, monkeypatch, interval, expected):
    import mtrec.serving.http

    monkeypatch.setattr(mtrec.serving.http, "TRIM_INTERVAL_SECONDS", interval)
    trims = recorded_trims(monkeypatch)
    with serving(create_app(recommender, pool_threads=2, pool_queue=0)) as http:
        for count in range(1, 4):  # the pool empties after each one
            assert http.post("/recommendations", json=history_body()).status_code == 200
            settled(trims, min(count, expected))
    assert len(trims) == expected and all(name.startswith("mtrec-pool") for name in trims)


def test_a_request_done_before_its_callback_is_added_trims_on_a_pool_thread_not_the_event_loop(monkeypatch):
    from concurrent.futures import wait

    from mtrec.serving.http import Pool

    trims, pool = recorded_trims(monkeypatch), Pool(1, 0)
    submit = pool._executor.submit

    def finished_before_it_returns(function, *args):
        future = submit(function, *args)
        wait([future])
        return future

    monkeypatch.setattr(pool._executor, "submit", finished_before_it_returns)
    assert asyncio.run(pool.run(sum, [1, 2])) == 3
    assert settled(trims, 1) == ["mtrec-pool_0"]


def test_a_request_the_pool_cannot_start_gives_its_place_back(monkeypatch):
    from mtrec.serving.http import Pool

    def no_thread(*args):
        raise RuntimeError("can't start new thread")

    trims, pool = recorded_trims(monkeypatch), Pool(1, 0)
    submit = pool._executor.submit
    monkeypatch.setattr(pool._executor, "submit", no_thread)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="can't start new thread"):
            asyncio.run(pool.run(sum, [1, 2]))
    monkeypatch.setattr(pool._executor, "submit", submit)
    assert asyncio.run(pool.run(sum, [1, 2])) == 3  # its one place is free: not a PoolFull
    assert settled(trims, 1) == ["mtrec-pool_0"]  # a request that never started is no reason to trim


@pytest.mark.parametrize(
    "threads, queue, problem",
    [
        (0, 1, "pool threads must be a whole number of at least 1, got 0"),
        (1, -1, "pool queue must be a whole number of at least 0, got -1"),
        (True, 1, "pool threads must be a whole number of at least 1, got True"),
    ],
)
def test_a_pool_of_no_threads_or_a_negative_queue_is_refused(tmp_path, threads, queue, problem):
    with pytest.raises(ConfigError, match=problem):
        create_app(tmp_path / "no model needed", pool_threads=threads, pool_queue=queue)


def test_serve_documents_the_pool_options_and_refuses_bad_ones(capsys):
    assert main(["serve", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"--pool_threads N threads for fold-ins and large batches, each with --threads PyTorch threads (default {POOL_THREADS})" in help_text
    assert f"more get a 503 (default {POOL_QUEUE})" in help_text and "Retry-After" in help_text
    assert main(["serve", "--model", "x", "--pool-threads", "0"]) == 2
    assert "argument --pool-threads/--pool_threads: must be a positive whole number, got 0" in capsys.readouterr().err
    assert main(["serve", "--model", "x", "--pool-queue", "-1"]) == 2
    assert "argument --pool-queue/--pool_queue: must be 0 or more, got -1" in capsys.readouterr().err


def test_each_worker_process_gets_the_pool_sizes(run_dir, monkeypatch):
    import mtrec.serving.http

    monkeypatch.setattr(mtrec.serving.http, "settle_heap", lambda: None)
    for name, value in {"model": str(run_dir), "pool_threads": "3", "pool_queue": "0"}.items():
        monkeypatch.setenv(ENVIRONMENT[name], value)
    pool = mtrec.serving.http.app_from_environment().state.pool
    assert (pool.threads, pool.queue) == (3, 0)


# ---------------------------------------------------------------------------------------------
# 6. HTTP: 415 for a body that is not JSON; HEAD on every GET endpoint


@pytest.mark.parametrize("url", ["/recommendations", "/predict"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml; charset=utf-8", None])
def test_a_body_that_is_not_json_is_415_naming_both_types(client, url, content_type):
    body = json.dumps(history_body() if url == "/recommendations" else {"pairs": [{"user": 196, "item": 50}]})
    headers = {} if content_type is None else {"content-type": content_type}
    request = client.build_request("POST", url, content=body, headers=headers)
    assert request.headers.get("content-type") == content_type
    response = client.send(request)
    got = "no Content-Type" if content_type is None else f"Content-Type '{content_type}'"
    assert response.status_code == 415
    assert response.json() == {"detail": f"the request body must be application/json, got {got}"}


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"])
def test_json_by_any_of_its_names_is_read(client, recommender, content_type):
    body = json.dumps({"pairs": [{"user": 196, "item": 50}]})
    response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == 200 and response.json() == {"predictions": [asdict(recommender.predict([(196, 50)])[0])]}


HEAD_URLS = {
    "/health": "/health",
    "/model": "/model",
    "/users/{user}/recommendations": "/users/196/recommendations?k=3",  # a hot path
    "/users/{user}/items/{item}": "/users/196/items/50",  # a hot path
    "/items/{item}/similar": "/items/50/similar?k=3",
    "/users/{user}/history": "/users/196/history?k=3",  # the explorer's
    "/items": "/items?query=star&k=3",
    "/items/{item}/ratings": "/items/50/ratings?bins=4",
}
MORE_HEAD_URLS = [
    "/users/196/recommendations?k=0",  # a 422, from FastAPI
    "/users/nobody/items/50",  # a 404 on a hot path
    "/items/no such film/similar",  # a 404 from FastAPI
    "/docs",
    "/openapi.json",
]


def test_every_get_endpoint_is_checked_for_head(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {path for path, methods in paths.items() if "get" in methods} == set(HEAD_URLS)


@pytest.mark.parametrize("hot_paths", [True, False])
@pytest.mark.parametrize("url", [*HEAD_URLS.values(), *MORE_HEAD_URLS])
def test_head_answers_every_get_with_its_status_and_headers_and_no_body(recommender, url, hot_paths):
    from fastapi.testclient import TestClient

    http = TestClient(create_app(recommender, hot_paths=hot_paths))
    got, head = http.get(url), http.head(url)
    assert head.status_code == got.status_code and head.content == b""
    assert dict(head.headers) == dict(got.headers) and int(head.headers["content-length"]) == len(got.content) > 0


def test_head_over_the_wire_has_no_body_and_keeps_the_connection(client):
    got = client.get("/users/196/recommendations?k=3")
    for _ in range(2):  # the same keep-alive connection: no stray body bytes between answers
        head = client.head("/users/196/recommendations?k=3")
        assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", str(len(got.content)))
    assert client.get("/health").json() == {"status": "ok"}
    assert client.head("/predict").status_code == 405 and client.head("/predict").headers["allow"] == "POST"
