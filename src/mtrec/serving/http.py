"""The HTTP service: a FastAPI app that answers from one :class:`~mtrec.serving.recommender.Recommender`.

The model is loaded once, when the app is created; requests only read its tensors, so they
are served concurrently without locks. OpenAPI docs are at ``/docs``.

``GET /health``, ``GET /model``, ``GET /users/{user}/recommendations?k=10&exclude_seen=true``
(with ``exclude``, ``include`` and ``genre`` filters, comma-separated), ``POST /recommendations``
(a new user's history, folded in; at most :data:`~mtrec.serving.recommender.MAX_HISTORY` items),
``GET /users/{user}/items/{item}``, ``POST /predict`` (at most :data:`MAX_BATCH` pairs) and
``GET /items/{item}/similar?k=10``. ``k`` is 1 to :data:`MAX_K`. An unknown user gets the
most-rated items with ``"cold_start": true``; an unknown item (or, for predictions, user) is
a 404, an ambiguous title a 400, a bad ``k``, an oversized batch, an id that is not a string or
a whole number, or a rating that is not a finite number on the model's scale a 422, a body that
is not JSON a 415, each with a JSON body ``{"detail": ...}``. Every GET endpoint answers HEAD.

The web explorer (:mod:`mtrec.serving.explorer`) is the page at ``/``; besides those it calls
``GET /users/{user}/history`` (the items a user rated), ``GET /items?query=...`` (titles, for
autocompletion) and ``GET /items/{item}/ratings`` (an item's predicted ratings over all users).

Fold-ins and large prediction batches run on a few threads of their own with a bounded queue
(:class:`Pool`); beyond it they are refused at once with a 503 and ``Retry-After``, so that the
cheap requests, answered on the event loop, stay fast under a burst of heavy ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import json
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any, Callable, TypeVar
from urllib.parse import parse_qsl

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, model_validator

from mtrec import __version__
from mtrec.errors import AmbiguousItemError, ConfigError, DataError, UnknownItemError, UnknownUserError
from mtrec.io.fitted import summarize
from mtrec.serving.explorer import MAX_BINS, WEB_DIR, Explorer, History, ItemMatches, RatingDistribution
from mtrec.serving.foldin import RatingError
from mtrec.serving.newitems import candidate_table
from mtrec.serving.recommender import MAX_HISTORY, Recommender
from mtrec.serving.results import Prediction, Recommendations, SimilarItems
from mtrec.serving.retrieval import IndexConfig

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
#: the event loop (256 pairs on MovieLens 100K), larger ones on the :class:`Pool` so that they
#: cannot stall it: each pair's watch score ranks it against the user's whole catalogue.
INLINE_SCORES = 256 * 1682
#: Threads that run the heavy requests (fold-ins, the larger batches), by default.
POOL_THREADS = 2
#: Heavy requests that may wait for one of those threads, by default; one more is a 503.
POOL_QUEUE = 16
#: Seconds a client refused for a full pool is asked to wait (the 503's Retry-After).
RETRY_AFTER_SECONDS = 1
#: Least seconds between two trims of the C heap by the :class:`Pool` (a trim walks the whole heap:
#: under light serial load the pool empties after every fold-in).
TRIM_INTERVAL_SECONDS = 5.0

DESCRIPTION = """\
Recommendations from a multi-task model: a likelihood head (raw score `p`) and a rating head.

* `watch_score` is the rank percentile of `p` among all items for that user: the fraction of
  the other items in the catalogue this item outscores, in [0, 1], 1 = the user's best. The raw
  `p` (an unscaled ranking score) is given beside it.
* `rating` is the predicted rating clipped to the data's rating scale; `rating_raw` is unclipped.
* Items are named by raw id or, where unambiguous, by title (exact, or without the year).
* An unknown user gets the most-rated items with `cold_start: true`. A prediction for an
  unknown user is a 404: the model has no vector for them, so any number would be invented.
* Ids are JSON strings or whole numbers (never `true`, never `1.0`); a history's ratings finite
  numbers on the model's rating scale (`GET /model`), else a 422 naming the entry.
* Request bodies are `application/json` (415 otherwise). Every GET endpoint answers HEAD.
* Fold-ins (`POST /recommendations`) and large `POST /predict` batches wait in a bounded queue;
  when it is full they are refused at once: 503 with `Retry-After`.
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
    metrics: dict[str, Any] = Field(
        description="the selected epoch's metrics (and how it was chosen), the final epoch's, and the best test MSE/MRR with their epochs"
    )
    train_ratings: int = Field(description="ratings (or interactions) the model was trained on")
    genres: list[str] = Field(description="the genres of the items, sorted")
    example_user: int | str | None = Field(description="the first user with training ratings, for a first look")


Id = Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)]
PathId = Annotated[str, Path(max_length=MAX_ID_LENGTH, description=f"raw id (or, for an item, title), at most {MAX_ID_LENGTH} characters")]


B = TypeVar("B", bound="Body")


class Body(BaseModel):
    """A request body, validated strictly: every value must already be of its type. In pydantic's
    lax mode ``true`` would be the id (or ``k``) 1, and ``1.5`` the id 1."""

    model_config = ConfigDict(strict=True)

    @classmethod
    def parse(cls: type[B], raw: bytes) -> B:
        """The body from its JSON bytes, read and validated in one pass by pydantic-core; else a
        :class:`RequestValidationError` (422) locating each problem, as FastAPI's own would.

        FastAPI's reading (``json.loads``, then validation) takes about six times as long, on the
        event loop: 4 ms for a history of 1,000 items, which a burst of fold-ins multiplied into
        every other request's wait. The endpoints that take a body read it themselves with this."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as error:
            problems = [{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors(include_url=False)]
            raise RequestValidationError(problems) from None


class Pair(Body):
    user: int | Id
    item: int | Id = Field(description="raw item id or title")


class PredictRequest(Body):
    pairs: list[Pair] = Field(max_length=MAX_BATCH, description=f"at most {MAX_BATCH:,} (user, item) pairs")


class HistoryEntry(Body):
    item: int | Id = Field(description="raw item id or title")
    rating: float | None = Field(None, description="the rating given, if known: a number on the model's rating scale")


class HistoryRequest(Body):
    """A user the model never saw, by the items they rated: fold-in fits their vector."""

    history: list[HistoryEntry] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description=f"up to {MAX_HISTORY:,} items the user rated (or watched); at least one unless features are given",
    )
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: list[int | Id] = Field(default_factory=list, max_length=MAX_HISTORY, description="items never to recommend")
    include: list[int | Id] | None = Field(None, max_length=MAX_BATCH, description="recommend only among these items")
    genres: list[Id] = Field(default_factory=list, max_length=100, description="recommend only items of one of these")
    instant: bool = Field(False, description="read the user's vector from the history through the model's encoder, without fitting")
    features: dict[str, float | int | str | list[str]] | None = Field(
        None, description='the user\'s attributes, for a model with user features: {"age": 31, "gender": "F"}'
    )
    candidates: list[dict[str, Any]] | None = Field(
        None,
        max_length=MAX_BATCH,
        description='recommend among these items, each {"item": id, and its features}; those the model never saw are '
        "scored by their features alone (a model with item features)",
    )

    @model_validator(mode="after")
    def _someone(self) -> HistoryRequest:
        if not self.history and self.features is None:
            raise ValueError("give a history of at least one item, or the user's features")
        if self.candidates is not None and self.include is not None:
            raise ValueError("include and candidates are two candidate sets: give one")
        return self


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
#: The answers of the POST endpoints, besides those of :data:`ERRORS`.
POST_ERRORS = {
    **ERRORS,
    422: {"description": "a value that is not allowed (each problem with its location in the body)"},
    415: {"model": ErrorBody, "description": "a body that is not application/json"},
    503: {"model": ErrorBody, "description": f"fold-ins and large batches: the queue is full, retry after Retry-After ({RETRY_AFTER_SECONDS} s)"},
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


def _rating_response(error: RatingError) -> JSONResponse:
    """A history's bad rating, answered like the other 422s of a body: with its location."""
    problem = {"type": "value_error", "loc": ["body", "history", error.position, "rating"], "msg": str(error)}
    return JSONResponse({"detail": [problem]}, status_code=422)


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


class PoolFull(Exception):
    """Every thread of a :class:`Pool` is busy and its queue is full."""


T = TypeVar("T")


class Pool:
    """The threads that run the heavy requests (fold-ins, large prediction batches), with a bounded queue.

    At most ``threads`` run at once and ``queue`` more wait for a thread; one beyond those is
    refused at once (:class:`PoolFull`, answered 503 with Retry-After). Without the bound every
    request waited behind all those before it (a p50 of 35 s under 200 concurrent fold-ins) and
    they all held memory at once. The event loop never runs them, so that the cheap requests stay
    fast meanwhile. When the last admitted one is done, the C heap's free memory goes back to the
    system (:func:`trim_heap`, on one of the threads, at most once in :data:`TRIM_INTERVAL_SECONDS`).

    Parameters
    ----------
    threads:
        Heavy requests run at once (each with the process's PyTorch threads), at least 1.
    queue:
        Heavy requests that may wait for a thread, 0 or more.
    """

    def __init__(self, threads: int = POOL_THREADS, queue: int = POOL_QUEUE) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"pool threads must be a whole number of at least 1, got {threads!r}")
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 0:
            raise ConfigError(f"pool queue must be a whole number of at least 0, got {queue!r}")
        self.threads, self.queue = threads, queue
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="mtrec-pool")
        self._lock = threading.Lock()
        self._admitted = 0
        self._trimmed = float("-inf")  # the monotonic time of the last trim: none yet

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on one of the threads; :class:`PoolFull` at once if there is no room."""
        with self._lock:
            if self._admitted >= self.threads + self.queue:
                raise PoolFull(
                    f"the service is busy: {self.threads} heavy requests (fold-ins, large batches) are running "
                    f"and {self.queue} waiting; retry in {RETRY_AFTER_SECONDS} s"
                )
            self._admitted += 1
        try:
            future = self._executor.submit(function, *args)
        except BaseException:  # no thread to run it: its place is free again
            self._release(None)
            raise
        future.add_done_callback(self._release)  # also when a waiting one is cancelled
        return await asyncio.wrap_future(future)

    def _release(self, future: Future | None) -> None:
        """Free the place of a request that finished, was cancelled, or never started (``future`` None); when
        it leaves the pool idle after work, and the last trim is old enough, trim the heap on a pool thread
        (this callback may run on the event loop's, when the request finished before it was added)."""
        with self._lock:
            self._admitted -= 1
            now, worked = time.monotonic(), future is not None and not future.cancelled()
            due = self._admitted == 0 and worked and now - self._trimmed >= TRIM_INTERVAL_SECONDS
            if due:
                self._trimmed = now
        if due:
            with contextlib.suppress(RuntimeError):  # the interpreter is exiting: the trim is only an economy
                self._executor.submit(trim_heap)


class HeadAsGet:
    """ASGI middleware: HEAD on any GET endpoint (the hot paths included) is its GET, without the body.

    The status and headers, Content-Length included, are those of the GET.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


#: The media types a request body may have: JSON (``application/json`` or ``application/*+json``).
JSON_MEDIA_TYPE = re.compile(r"^application/(json|[^;/]+\+json)$")


async def json_body(request: Request) -> None:
    """A POST (or PUT, PATCH) must send its body as JSON: 415, naming both types, otherwise.

    Without this a body of another type, or without a Content-Type (which FastAPI does not read
    as JSON), got a 422 about the body's fields that never said what was wrong."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    received = request.headers.get("content-type")
    if received is None or not JSON_MEDIA_TYPE.match(received.split(";", 1)[0].strip().lower()):
        got = "no Content-Type" if received is None else f"Content-Type {received[:100]!r}"
        raise HTTPException(415, f"the request body must be application/json, got {got}")


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
    recommender: Recommender | str | FilePath,
    max_body_bytes: int = MAX_BODY_BYTES,
    hot_paths: bool = True,
    pool_threads: int = POOL_THREADS,
    pool_queue: int = POOL_QUEUE,
) -> FastAPI:
    """The service for ``recommender``, or for the model saved at that path (a file or run directory).

    ``max_body_bytes`` bounds a request's body (413 beyond it, before parsing). ``hot_paths``
    answers plainly valid GET recommendations and predictions without FastAPI's parameter
    machinery (:class:`HotPaths`); the answers are the same either way. ``pool_threads`` and
    ``pool_queue`` size the :class:`Pool` of the heavy requests: how many run at once, and how
    many more may wait (503 beyond).
    """
    pool = Pool(pool_threads, pool_queue)  # bad sizes are refused before the model is loaded
    if not isinstance(recommender, Recommender):
        recommender = Recommender.load(recommender)
    app = FastAPI(title="mtrec", version=__version__, description=DESCRIPTION, dependencies=[Depends(json_body)])
    if hot_paths:
        app.add_middleware(HotPaths, recommender=recommender)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(HeadAsGet)
    app.state.recommender, app.state.pool = recommender, pool
    _error_handlers(app)
    # Queries of a few milliseconds run on the event loop: a thread hop and the GIL hand-offs
    # that follow cost more than they take. Fold-ins and large batches go to the pool, so
    # that they cannot stall the loop.
    _recommendation_routes(app, recommender, pool)
    _prediction_routes(app, recommender, pool)
    _explorer_routes(app, Explorer(recommender), pool)
    app.openapi = functools.partial(_openapi, app, app.openapi, (HistoryRequest, PredictRequest))
    return app


def _error_handlers(app: FastAPI) -> None:
    """The answers to the library's errors, a full pool and a body that does not validate."""

    @app.exception_handler(UnknownItemError)
    @app.exception_handler(UnknownUserError)
    @app.exception_handler(ConfigError)
    @app.exception_handler(AmbiguousItemError)
    async def library_error(request: Request, error: Exception) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RatingError)
    async def bad_rating(request: Request, error: RatingError) -> JSONResponse:
        return _rating_response(error)

    @app.exception_handler(PoolFull)
    async def busy(request: Request, error: PoolFull) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each bad input back: a whole batch, for an oversized one.
        problems = [{key: value for key, value in problem.items() if key != "input"} for problem in error.errors()]
        return JSONResponse({"detail": jsonable_encoder(problems)}, status_code=422)


def _recommendation_routes(app: FastAPI, recommender: Recommender, pool: Pool) -> None:
    """The service's description, and its recommendations: for a known user, and from a history (on the ``pool``)."""
    model_info = _model_info(recommender)

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

    @app.post("/recommendations", response_model=Recommendations, responses=POST_ERRORS, openapi_extra=_body(HistoryRequest))
    async def recommendations_for_history(request: Request) -> Response:
        """Recommendations for a new user from their history (fold-in); 404 names an unknown item, 422 a
        rating that is not a finite number on the model's rating scale, 503 a full queue."""
        return _json(await pool.run(_fold_in, recommender, await request.body()))  # parsed on the pool too


def _prediction_routes(app: FastAPI, recommender: Recommender, pool: Pool) -> None:
    """Predictions (one pair, or a batch: a large one on the ``pool``) and similar items."""

    @app.get("/users/{user}/items/{item:path}", response_model=Prediction, responses=ERRORS)
    async def prediction(user: PathId, item: PathId) -> Response:
        """Watch score and rating of one item (id or title) for one user."""
        return _json(recommender.predict([(user, item)])[0])

    @app.post("/predict", response_model=Predictions, responses=POST_ERRORS, openapi_extra=_body(PredictRequest))
    async def predict(request: Request) -> Response:
        """Watch scores and ratings for a batch of (user, item) pairs; 404 names the first unknown id, 503
        a full queue (for a large batch)."""
        pairs = [(pair.user, pair.item) for pair in PredictRequest.parse(await request.body()).pairs]
        if len(pairs) * recommender.num_items <= INLINE_SCORES:
            predictions = recommender.predict(pairs)
        else:
            predictions = await pool.run(recommender.predict, pairs)
        return _json(Predictions(predictions))

    @app.get("/items/{item:path}/similar", response_model=SimilarItems, responses=ERRORS)
    async def similar(item: PathId, k: int = K) -> Response:
        """The k items nearest to `item` by cosine similarity of the item vectors."""
        return _json(recommender.similar(item, k))


#: The explorer's files besides its page, by the name the page asks for, with their media types.
WEB_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
#: Headers of the explorer's page and files: only the service's own script and style may run or load,
#: so that a title or an id holding markup could never bring its own.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _explorer_routes(app: FastAPI, explorer: Explorer, pool: Pool) -> None:
    """The web explorer (:mod:`mtrec.serving.explorer`): its page at ``/`` and the JSON endpoints it needs besides
    the service's own: a user's rated items, a search of the titles, an item's predicted ratings."""
    files = {name: (WEB_DIR / name).read_bytes() for name in ("index.html", *WEB_FILES)}

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(files["index.html"], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/explorer/{name}", include_in_schema=False)
    async def web_file(name: str) -> Response:
        if name not in WEB_FILES:
            raise HTTPException(404, "no such file of the explorer")
        return Response(files[name], media_type=WEB_FILES[name], headers=PAGE_HEADERS)

    on_pool = {**ERRORS, 503: POST_ERRORS[503]}

    @app.get("/users/{user}/history", response_model=History, responses=on_pool)
    async def history(user: PathId, k: int = K, genre: str | None = _filter("genres, any of which an item must have")) -> Response:
        """The k best of the items `user` rated in training (by their rating, then the model's), each with
        their rating and the model's watch score and rating; 404 for a user the model does not know. On
        the pool: a user may have rated thousands of items."""
        return _json(await pool.run(explorer.history, user, k, _listed(genre)))

    @app.get("/items", response_model=ItemMatches)
    async def items(
        query: str = Query(max_length=MAX_ID_LENGTH, description="text a title holds (any case), or an item id"),
        k: int = K,
    ) -> Response:
        """Up to k items whose title holds `query`: titles that begin with it first, then the most-rated."""
        return _json(explorer.search(query, k))

    @app.get("/items/{item:path}/ratings", response_model=RatingDistribution, responses=on_pool)
    async def ratings(item: PathId, bins: int = Query(10, ge=2, le=MAX_BINS, description=f"2 to {MAX_BINS} bins")) -> Response:
        """A histogram of `item`'s predicted rating for every user (one batched pass, on the pool); 422 if the
        model did not learn ratings."""
        return _json(await pool.run(explorer.rating_distribution, item, bins))


def _fold_in(recommender: Recommender, raw: bytes) -> Recommendations:
    """``POST /recommendations``: its body read and its history folded in, both on a pool thread."""
    request = HistoryRequest.parse(raw)
    history = [(entry.item, entry.rating) for entry in request.history]
    include = request.include
    try:
        if request.candidates is not None:
            recommender, include = recommender.with_candidates(candidate_table(request.candidates, recommender.model))
        return recommender.recommend_history(
            history, request.k, request.exclude, include, request.genres, instant=request.instant, features=request.features
        )
    except RatingError:
        raise
    except DataError as error:  # a feature value the model never saw: the request's fault
        raise ConfigError(str(error)) from None


def _body(model: type[Body]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads ``model`` itself (:meth:`Body.parse`)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _openapi(app: FastAPI, build: Callable[[], dict[str, Any]], bodies: tuple[type[Body], ...]) -> dict[str, Any]:
    """FastAPI's OpenAPI document (``build``), with the schemas of the ``bodies`` the endpoints read themselves."""
    if app.openapi_schema is None:
        schemas = build().setdefault("components", {}).setdefault("schemas", {})
        for model in bodies:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
    return app.openapi_schema


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
        metrics=summarize(model.history_, model.selected_epoch_, model.selection_),  # NaN and inf already None
        train_ratings=len(data.seen_indices),
        genres=sorted(recommender.genres),
        example_user=(data.user_ids[np.diff(data.seen_indptr) > 0][:1].tolist() or [None])[0],
    )


#: Environment variables that carry ``mtrec serve``'s options to each of its worker processes.
ENVIRONMENT = {
    "model": "MTREC_SERVE_MODEL",
    "device": "MTREC_SERVE_DEVICE",
    "max_body_bytes": "MTREC_SERVE_MAX_BODY",
    "threads": "MTREC_SERVE_THREADS",
    "pool_threads": "MTREC_SERVE_POOL_THREADS",
    "pool_queue": "MTREC_SERVE_POOL_QUEUE",
    "index": "MTREC_SERVE_INDEX",
}


def settle_heap() -> None:
    """Collect once and freeze what is left, before serving: the model and the libraries are
    long-lived, and a full garbage collection would otherwise walk all of them (about 100 ms on
    an ML-100K model: a stall of every request in flight, seen as the p99 of a load test)."""
    import gc

    gc.collect()
    gc.freeze()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    A burst of fold-ins frees its tensors, but the allocator keeps the pages: without this the
    process stayed hundreds of MB larger after one."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def app_from_environment() -> FastAPI:
    """The app of one ``mtrec serve --workers N`` worker, its options read from :data:`ENVIRONMENT`."""
    import os

    import torch

    torch.set_num_threads(int(os.environ.get(ENVIRONMENT["threads"], "1")))
    index = IndexConfig.model_validate_json(os.environ.get(ENVIRONMENT["index"], "{}"))
    recommender = Recommender.load(os.environ[ENVIRONMENT["model"]], os.environ.get(ENVIRONMENT["device"], "cpu"), index)
    recommender.retrieval.warm()  # read from beside the model, where mtrec serve saved it
    app = create_app(
        recommender,
        int(os.environ.get(ENVIRONMENT["max_body_bytes"], MAX_BODY_BYTES)),
        pool_threads=int(os.environ.get(ENVIRONMENT["pool_threads"], POOL_THREADS)),
        pool_queue=int(os.environ.get(ENVIRONMENT["pool_queue"], POOL_QUEUE)),
    )
    settle_heap()
    return app
