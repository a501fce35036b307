"""The HTTP service, run for real by uvicorn on 127.0.0.1, with a model trained on MovieLens 100K."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from test_recommend import recommender, run_dir  # noqa: F401  (a model trained on ML-100K, once per module)

from mtrec.cli import main
from mtrec.errors import ModelFileError
from mtrec.serving.http import INLINE_SCORES, MAX_BATCH, MAX_K, create_app
from mtrec.serving.recommender import MAX_HISTORY


@pytest.fixture(scope="module")
def client(run_dir):
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        yield http
    server.should_exit = True
    thread.join(10)


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_model_describes_config_data_and_metrics(client):
    info = client.get("/model").json()
    assert info["dataset"] == "ml-100k" and (info["num_users"], info["num_items"]) == (943, 1682)
    assert info["rating_scale"] == [1.0, 5.0] and info["has_ratings"] is True
    assert info["config"]["embedding_dim"] == 32 and info["epochs_trained"] == 3
    assert info["metrics"]["final"]["epoch"] == 3 and info["metrics"]["final"]["train_loss"] > 0


@pytest.mark.parametrize("query, exclude_seen", [("k=7", True), ("k=7&exclude_seen=false", False)])
def test_recommendations_are_the_libraries(client, recommender, query, exclude_seen):
    response = client.get(f"/users/405/recommendations?{query}")
    assert response.status_code == 200
    assert response.json() == asdict(recommender.recommend(405, k=7, exclude_seen=exclude_seen))
    assert len(response.json()["items"]) == 7


def test_an_unknown_user_gets_popular_items_flagged_cold_start(client, recommender):
    response = client.get("/users/somebody-new/recommendations?k=3")
    body = response.json()
    assert response.status_code == 200 and body["cold_start"] is True and body["user"] == "somebody-new"
    assert [row["item"] for row in body["items"]] == [row.item for row in recommender.recommend("x", k=3).items]


@pytest.mark.parametrize("item", ["50", "Star Wars (1977)", "star wars"])
def test_one_prediction_by_id_or_title(client, recommender, item):
    response = client.get(f"/users/196/items/{quote(item)}")
    assert response.status_code == 200
    assert response.json() == asdict(recommender.predict([(196, 50)])[0])


def test_a_title_with_a_slash_is_found(client):
    response = client.get("/users/196/items/Face/Off (1997)")
    assert response.status_code == 200 and response.json()["title"] == "Face/Off (1997)"
    assert client.get("/items/Face/Off/similar?k=2").json()["item"] == 298


def test_batch_predictions(client, recommender):
    pairs = [(196, 50), (1, "Toy Story (1995)"), ("943", 1682)]
    response = client.post("/predict", json={"pairs": [{"user": u, "item": i} for u, i in pairs]})
    assert response.status_code == 200
    assert response.json() == {"predictions": [asdict(row) for row in recommender.predict(pairs)]}


def test_the_largest_batch_is_accepted(client):
    pairs = [{"user": 1 + n % 943, "item": 1 + n % 1682} for n in range(MAX_BATCH)]
    response = client.post("/predict", json={"pairs": pairs})
    assert response.status_code == 200 and len(response.json()["predictions"]) == MAX_BATCH


def test_an_oversized_batch_is_422_without_echoing_it(client):
    response = client.post("/predict", json={"pairs": [{"user": 1, "item": 1}] * (MAX_BATCH + 1)})
    assert response.status_code == 422
    assert f"at most {MAX_BATCH} items" in response.text and len(response.content) < 1000


def test_similar_items(client, recommender):
    response = client.get("/items/50/similar?k=4")
    assert response.status_code == 200 and response.json() == asdict(recommender.similar(50, k=4))


@pytest.mark.parametrize(
    "method, url, body, message",
    [
        ("GET", "/users/196/items/no such film", None, "unknown item 'no such film'"),
        ("GET", "/users/nobody/items/50", None, "unknown user 'nobody'"),
        ("GET", "/items/9999999/similar", None, "unknown item '9999999'"),
        ("POST", "/predict", {"pairs": [{"user": 196, "item": 50}, {"user": 196, "item": "zzz"}]}, "(pair 2 of 2)"),
    ],
)
def test_unknown_ids_are_404_with_a_json_error(client, method, url, body, message):
    response = client.request(method, url, json=body)
    assert response.status_code == 404 and message in response.json()["detail"]


def test_an_ambiguous_title_is_400_listing_the_candidates(client):
    response = client.get("/items/chasing amy/similar")
    assert response.status_code == 400
    assert response.json()["candidates"] == [[246, "Chasing Amy (1997)"], [268, "Chasing Amy (1997)"]]


@pytest.mark.parametrize("k", ["0", "-1", str(MAX_K + 1), "ten"])
@pytest.mark.parametrize("path", ["/users/196/recommendations", "/users/nobody/recommendations", "/items/50/similar"])
def test_a_bad_k_is_422(client, path, k):
    response = client.get(f"{path}?k={k}")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "k"]


def test_a_malformed_batch_is_422(client):
    assert client.post("/predict", json={"pairs": [{"user": 196}]}).status_code == 422
    assert client.post("/predict", content=b"not json", headers={"content-type": "application/json"}).status_code == 422


def test_concurrent_requests_get_the_same_answers_as_sequential_ones(client):
    # Batches above INLINE_SCORES run in worker threads while the event loop answers the rest.
    batch = {"pairs": [{"user": 1 + n % 943, "item": 1 + n % 1682} for n in range(INLINE_SCORES // 1682 + 44)]}
    requests = [("GET", f"/users/{user}/recommendations?k=10", None) for user in (1, 196, 405, 943, "new-user")]
    requests += [("GET", f"/users/{user}/items/{item}", None) for user, item in ((196, 50), (1, 1), (13, 100))]
    requests += [("GET", "/items/50/similar?k=5", None), ("POST", "/predict", batch)]
    workload = [requests[n % len(requests)] for n in range(64)]

    def send(request):
        method, url, body = request
        response = client.request(method, url, json=body)
        return response.status_code, response.json()

    sequential = [send(request) for request in workload]
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(send, workload))
    assert concurrent == sequential and {status for status, _ in sequential} == {200}


def schemas_of(schema: dict) -> dict:
    return schema["components"]["schemas"]


def test_the_docs_describe_every_endpoint_and_the_watch_score(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/health",
        "/model",
        "/users/{user}/recommendations",
        "/recommendations",
        "/users/{user}/items/{item}",
        "/predict",
        "/items/{item}/similar",
        "/users/{user}/history",  # the explorer's (tests/test_explorer.py)
        "/items",
        "/items/{item}/ratings",
    }
    parameters = {p["name"]: p for p in schema["paths"]["/users/{user}/recommendations"]["get"]["parameters"]}
    assert {"k", "exclude_seen", "exclude", "include", "genre"} <= set(parameters)
    assert "never to recommend" in parameters["exclude"]["description"]
    assert schemas_of(schema)["HistoryRequest"]["properties"]["history"]["maxItems"] == MAX_HISTORY
    assert "rank percentile of `p` among all items" in schema["info"]["description"]
    schemas = schema["components"]["schemas"]
    assert {"watch_score", "p", "rating", "rating_raw"} <= set(schemas["ScoredItem"]["properties"])
    assert schemas["PredictRequest"]["properties"]["pairs"]["maxItems"] == MAX_BATCH


def test_a_damaged_model_is_refused_when_the_app_is_created(run_dir, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes((run_dir / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        create_app(path)


def test_serve_reports_a_missing_model_before_listening(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", "1"]) == 1
    assert "mtrec serve: error: no model file at" in capsys.readouterr().err


def test_serve_help_documents_the_limits(capsys):
    assert main(["serve", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"k is 1 to {MAX_K}" in help_text and f"at most {MAX_BATCH:,} pairs" in help_text


HOT_PATH_URLS = [
    "/users/196/recommendations",
    "/users/196/recommendations?k=1000",
    "/users/196/recommendations?k=3&exclude_seen=false",
    "/users/196/recommendations?k=5&exclude_seen=0&exclude=151,216&genre=Comedy",
    "/users/196/recommendations?k=4&include=1,2,3,242",
    "/users/196/recommendations?k=4&include=",
    "/users/196/recommendations?genre=Telenovela",
    "/users/196/recommendations?exclude=no%20such%20film",
    "/users/196/recommendations?exclude=chasing%20amy",
    "/users/196/recommendations?k=2&k=3",
    "/users/196/recommendations?k=2&unknown=1",
    "/users/no-such-user/recommendations?k=3",
    # not plainly valid: FastAPI parses and answers these (422 or an unusual spelling)
    "/users/196/recommendations?k=1001",
    "/users/196/recommendations?k=0",
    "/users/196/recommendations?k=abc",
    "/users/196/recommendations?k=010",
    "/users/196/recommendations?exclude_seen=no",
    "/users/196/recommendations?exclude_seen=maybe",
    f"/users/{'u' * 257}/recommendations",
    "/users/196/items/242",
    "/users/196/items/Star Wars (1977)",
    "/users/196/items/chasing amy",
    "/users/no-such-user/items/242",
    "/users/196/items/no such film",
    f"/users/196/items/{'i' * 257}",
]


@pytest.mark.parametrize("url", HOT_PATH_URLS)
def test_the_hot_paths_answer_what_the_endpoints_answer(run_dir, url):
    from fastapi.testclient import TestClient

    fast, plain = TestClient(create_app(run_dir)), TestClient(create_app(run_dir, hot_paths=False))
    a, b = fast.get(url), plain.get(url)
    assert (a.status_code, a.headers["content-type"], a.json()) == (b.status_code, b.headers["content-type"], b.json())


def test_the_hot_paths_skip_fastapis_parameter_machinery(run_dir, monkeypatch):
    from fastapi.dependencies import utils
    from fastapi.testclient import TestClient

    calls = []
    original = utils.request_params_to_args
    monkeypatch.setattr(utils, "request_params_to_args", lambda *a, **k: calls.append(1) or original(*a, **k))
    fast = TestClient(create_app(run_dir))
    assert fast.get("/users/196/recommendations?k=5").status_code == 200 and not calls
    assert fast.get("/users/196/recommendations?k=5000").status_code == 422 and calls
