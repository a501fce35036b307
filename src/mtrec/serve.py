"""The HTTP service: a FastAPI app that answers from one :class:`~mtrec.recommend.Recommender`.

The model is loaded once, when the app is created; requests only read its tensors, so they
are served concurrently without locks. OpenAPI docs are at ``/docs``.

``GET /health``, ``GET /model``, ``GET /users/{user}/recommendations?k=10&exclude_seen=true``
(with ``exclude``, ``include`` and ``genre`` filters, comma-separated), ``POST /recommendations``
(a new user's history, folded in; at most :data:`~mtrec.recommend.MAX_HISTORY` items),
``GET /users/{user}/items/{item}``, ``POST /predict`` (at most :data:`MAX_BATCH` pairs) and
``GET /items/{item}/similar?k=10``. ``k`` is 1 to :data:`MAX_K`. An unknown user gets the
most-rated items with ``"cold_start": true``; an unknown item (or, for predictions, user) is
a 404, an ambiguous title a 400, a bad ``k`` or an oversized batch a 422, each with a JSON
body ``{"detail": ...}``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter
from starlette.concurrency import run_in_threadpool

from mtrec import __version__
from mtrec.errors import AmbiguousItemError, ConfigError, UnknownItemError, UnknownUserError
from mtrec.recommend import MAX_HISTORY, Prediction, Recommendations, Recommender, SimilarItems
from mtrec.fitted import summarize

#: Largest ``k`` a request may ask for.
MAX_K = 1000
#: Longest user id, item id or title a request may name.
MAX_ID_LENGTH = 256
#: Largest request body, by default: room for the largest batch of the longest ids. A larger
#: body is refused with 413 before any of it is parsed.
MAX_BODY_BYTES = 8 * 2**20
#: Most (user, item) pairs in one ``POST /predict``.
MAX_BATCH = 10_000
#: Batches whose scoring touches up to this many (pair, catalogue item) scores are answered on
#: the event loop (256 pairs on MovieLens 100K), larger ones in a thread so that they cannot
#: stall it: each pair's watch score ranks it against the user's whole catalogue.
INLINE_SCORES = 256 * 1682

DESCRIPTION = """\
Recommendations from a multi-task model: a likelihood head (raw score `p`) and a rating head.

* `watch_score` is the rank percentile of `p` among all items for that user: the fraction of
  the other items in the catalogue this item outscores, in [0, 1], 1 = the user's best. The raw
  `p` (an unscaled ranking score) is given beside it.
* `rating` is the predicted rating clipped to the data's rating scale; `rating_raw` is unclipped.
* Items are named by raw id or, where unambiguous, by title (exact, or without the year).
* An unknown user gets the most-rated items with `cold_start: true`. A prediction for an
  unknown user is a 404: the model has no vector for them, so any number would be invented.
"""


class Health(BaseModel):
    status: str = "ok"


class ModelInfo(BaseModel):
    """What the served model is: its hyper-parameters, data and training metrics."""

    config: dict[str, Any]
    dataset: str
    num_users: int
    num_items: int
    rating_scale: tuple[float, float] | None
    has_ratings: bool
    epochs_trained: int
    metrics: dict[str, Any] = Field(description="final-epoch metrics and the best test MSE/MRR with their epochs")


Id = Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)]
PathId = Annotated[str, Path(max_length=MAX_ID_LENGTH, description=f"raw id (or, for an item, title), at most {MAX_ID_LENGTH} characters")]


class Pair(BaseModel):
    user: int | Id
    item: int | Id = Field(description="raw item id or title")


class PredictRequest(BaseModel):
    pairs: list[Pair] = Field(max_length=MAX_BATCH, description=f"at most {MAX_BATCH:,} (user, item) pairs")


class HistoryEntry(BaseModel):
    item: int | Id = Field(description="raw item id or title")
    rating: float | None = Field(None, description="the rating given, if known")


class HistoryRequest(BaseModel):
    """A user the model never saw, by the items they rated: fold-in fits their vector."""

    history: list[HistoryEntry] = Field(
        min_length=1, max_length=MAX_HISTORY, description=f"1 to {MAX_HISTORY:,} items the user rated (or watched)"
    )
    k: int = Field(10, ge=1, le=1000)
    exclude: list[int | Id] = Field(default_factory=list, max_length=MAX_HISTORY, description="items never to recommend")
    include: list[int | Id] | None = Field(None, max_length=MAX_BATCH, description="recommend only among these items")
    genres: list[Id] = Field(default_factory=list, max_length=100, description="recommend only items of one of these")


@dataclass
class Predictions:
    predictions: list[Prediction]


class ErrorBody(BaseModel):
    detail: str
    candidates: list[tuple[int | str, str]] | None = None


ERRORS = {
    404: {"model": ErrorBody, "description": "unknown item (or, for a prediction, unknown user)"},
    400: {"model": ErrorBody, "description": "a title shared by several items; candidates lists them"},
}
K = Query(10, ge=1, le=MAX_K, description=f"how many items, 1 to {MAX_K}")


MAX_FILTER_LENGTH = MAX_BODY_BYTES // 8


def _filter(what: str):
    # One Query per parameter: FastAPI keys parameters by their FieldInfo, so a shared
    # instance would make every filter read the first one's value.
    return Query(None, max_length=MAX_FILTER_LENGTH, description=f"a comma-separated list of {what}")


def _listed(text: str | None) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else []


def _filters(exclude: str | None, include: str | None, genre: str | None) -> dict[str, Any]:
    """The filters of a GET recommendation, from its comma-separated query values."""
    return {"exclude": _listed(exclude), "include": None if include is None else _listed(include), "genres": _listed(genre)}


#: The library's errors that are the request's fault, answered 400, 404 or 422.
LIBRARY_ERRORS = (AmbiguousItemError, UnknownItemError, UnknownUserError, ConfigError)


def _error_response(error: Exception) -> JSONResponse:
    """The answer to a library error: the same from the app's handlers and from the hot paths."""
    if isinstance(error, AmbiguousItemError):
        return JSONResponse({"detail": str(error), "candidates": error.candidates}, status_code=400)
    if isinstance(error, (UnknownItemError, UnknownUserError)):
        return JSONResponse({"detail": str(error)}, status_code=404)
    return JSONResponse({"detail": str(error)}, status_code=422)  # ConfigError


#: The query values ``exclude_seen`` may take on the hot path (others go through FastAPI's parsing).
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_RECOMMENDATIONS = re.compile(r"^/users/(?P<user>[^/]+)/recommendations$")
_PREDICTION = re.compile(r"^/users/(?P<user>[^/]+)/items/(?P<item>.*)$")
_WHOLE = re.compile(r"^[1-9][0-9]{0,3}$")


class HotPaths:
    """ASGI middleware: the two most frequent requests, answered without FastAPI's per-request
    parameter machinery (about 0.2 ms a request, as much as the model's share).

    ``GET /users/{user}/recommendations`` and ``GET /users/{user}/items/{item}`` are answered
    here when every parameter is plainly valid: the same library calls, the same serialiser, the
    same error bodies as the app's endpoints. Anything else (a value out of range, an id too long,
    an unusual spelling of a number or a boolean) goes on to the app, which answers it as
    documented, 422s included. A test checks both ways give the same answers.
    """

    def __init__(self, app, recommender: Recommender) -> None:
        self.app, self.recommender = app, recommender

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            response = self._answer(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _answer(self, scope) -> Response | None:
        path = scope["path"]
        if not path.startswith("/users/"):
            return None
        matched = _RECOMMENDATIONS.match(path)
        if matched is not None:
            return self._recommendations(matched["user"], scope["query_string"])
        matched = _PREDICTION.match(path)
        if matched is not None and len(matched["user"]) <= MAX_ID_LENGTH and len(matched["item"]) <= MAX_ID_LENGTH:
            try:
                return _json(self.recommender.predict([(matched["user"], matched["item"])])[0])
            except LIBRARY_ERRORS as error:
                return _error_response(error)
        return None

    def _recommendations(self, user: str, query_string: bytes) -> Response | None:
        if len(user) > MAX_ID_LENGTH:
            return None
        query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)) if query_string else {}
        k = query.get("k", "10")
        seen = _BOOLEANS.get(query.get("exclude_seen", "true").lower())
        if not _WHOLE.match(k) or int(k) > MAX_K or seen is None:
            return None
        texts = [query.get(name) for name in ("exclude", "include", "genre")]
        if any(text is not None and len(text) > MAX_FILTER_LENGTH for text in texts):
            return None
        try:
            return _json(self.recommender.recommend(user, int(k), seen, **_filters(*texts)))
        except LIBRARY_ERRORS as error:
            return _error_response(error)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is a 413, refused before it is parsed.

    The declared Content-Length is checked before anything is read. A body sent without one
    (chunked) is read here, at most ``max_bytes`` of it, and refused as soon as it passes the
    limit; what was read is handed on to the app. No oversized body is ever held in memory.
    """

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = [{"type": "http.request", "body": b"".join(parts), "more_body": False}]

        async def replay():
            return replayed.pop() if replayed else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": f"request body over {self.max_bytes:,} bytes"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(
    recommender: Recommender | str | FilePath, max_body_bytes: int = MAX_BODY_BYTES, hot_paths: bool = True
) -> FastAPI:
    """The service for ``recommender``, or for the model saved at that path (a file or run directory).

    ``max_body_bytes`` bounds a request's body (413 beyond it, before parsing). ``hot_paths``
    answers plainly valid GET recommendations and predictions without FastAPI's parameter
    machinery (:class:`HotPaths`); the answers are the same either way.
    """
    if not isinstance(recommender, Recommender):
        recommender = Recommender.load(recommender)
    app = FastAPI(title="mtrec", version=__version__, description=DESCRIPTION)
    if hot_paths:
        app.add_middleware(HotPaths, recommender=recommender)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.recommender = recommender
    model_info = _model_info(recommender)

    @app.exception_handler(UnknownItemError)
    @app.exception_handler(UnknownUserError)
    @app.exception_handler(ConfigError)
    @app.exception_handler(AmbiguousItemError)
    async def library_error(request: Request, error: Exception) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each bad input back: a whole batch, for an oversized one.
        problems = [{key: value for key, value in problem.items() if key != "input"} for problem in error.errors()]
        return JSONResponse({"detail": jsonable_encoder(problems)}, status_code=422)

    # Queries of a few milliseconds run on the event loop: a thread hop and the GIL hand-offs
    # that follow cost more than they take. Only large batches go to the thread pool, so
    # that they cannot stall the loop.
    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health()

    @app.get("/model", response_model=ModelInfo)
    async def model() -> ModelInfo:
        return model_info

    @app.get("/users/{user}/recommendations", response_model=Recommendations, responses=ERRORS)
    async def recommendations(
        user: PathId,
        k: int = K,
        exclude_seen: bool = True,
        exclude: str | None = _filter("item ids or titles never to recommend"),
        include: str | None = _filter("item ids or titles to choose from"),
        genre: str | None = _filter("genres, any of which an item must have"),
    ) -> Response:
        """The top-k items for `user`; seen items excluded unless `exclude_seen=false`. `exclude`, `include`
        (a candidate set) and `genre` are comma-separated lists of item ids (or titles) and genres."""
        return _json(recommender.recommend(user, k, exclude_seen, **_filters(exclude, include, genre)))

    @app.post("/recommendations", response_model=Recommendations, responses=ERRORS)
    async def recommendations_for_history(request: HistoryRequest) -> Response:
        """Recommendations for a new user from their history (fold-in); 404 names an unknown item."""
        history = [(entry.item, entry.rating) for entry in request.history]
        result = await run_in_threadpool(
            recommender.recommend_history, history, request.k, request.exclude, request.include, request.genres
        )
        return _json(result)

    @app.get("/users/{user}/items/{item:path}", response_model=Prediction, responses=ERRORS)
    async def prediction(user: PathId, item: PathId) -> Response:
        """Watch score and rating of one item (id or title) for one user."""
        return _json(recommender.predict([(user, item)])[0])

    @app.post("/predict", response_model=Predictions, responses=ERRORS)
    async def predict(request: PredictRequest) -> Response:
        """Watch scores and ratings for a batch of (user, item) pairs; 404 names the first unknown id."""
        pairs = [(pair.user, pair.item) for pair in request.pairs]
        if len(pairs) * recommender.num_items <= INLINE_SCORES:
            predictions = recommender.predict(pairs)
        else:
            predictions = await run_in_threadpool(recommender.predict, pairs)
        return _json(Predictions(predictions))

    @app.get("/items/{item:path}/similar", response_model=SimilarItems, responses=ERRORS)
    async def similar(item: PathId, k: int = K) -> Response:
        """The k items nearest to `item` by cosine similarity of the item vectors."""
        return _json(recommender.similar(item, k))

    return app


@functools.cache
def _adapter(kind: type) -> TypeAdapter:
    return TypeAdapter(kind)


def _json(value: Any) -> Response:
    """``value`` as JSON, serialised by pydantic-core without validating it again: the library built it."""
    return Response(_adapter(type(value)).dump_json(value), media_type="application/json")


def _model_info(recommender: Recommender) -> ModelInfo:
    model = recommender.model
    data = model.data_
    return ModelInfo(
        config=model.get_params(),
        dataset=data.name,
        num_users=data.num_users,
        num_items=data.num_items,
        rating_scale=data.rating_scale,
        has_ratings=data.has_ratings,
        epochs_trained=len(model.history_),
        metrics=summarize(model.history_),  # JSON values: NaN and inf already None
    )



#: Environment variables that carry ``mtrec serve``'s options to each of its worker processes.
ENVIRONMENT = {"model": "MTREC_SERVE_MODEL", "device": "MTREC_SERVE_DEVICE", "max_body_bytes": "MTREC_SERVE_MAX_BODY",
               "threads": "MTREC_SERVE_THREADS"}


def settle_heap() -> None:
    """Collect once and freeze what is left, before serving: the model and the libraries are
    long-lived, and a full garbage collection would otherwise walk all of them (about 100 ms on
    an ML-100K model: a stall of every request in flight, seen as the p99 of a load test)."""
    import gc

    gc.collect()
    gc.freeze()


def app_from_environment() -> FastAPI:
    """The app of one ``mtrec serve --workers N`` worker, its options read from :data:`ENVIRONMENT`."""
    import os

    import torch

    torch.set_num_threads(int(os.environ.get(ENVIRONMENT["threads"], "1")))
    recommender = Recommender.load(os.environ[ENVIRONMENT["model"]], os.environ.get(ENVIRONMENT["device"], "cpu"))
    app = create_app(recommender, int(os.environ.get(ENVIRONMENT["max_body_bytes"], MAX_BODY_BYTES)))
    settle_heap()
    return app
