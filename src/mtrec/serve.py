"""The HTTP service: a FastAPI app that answers from one :class:`~mtrec.recommend.Recommender`.

The model is loaded once, when the app is created; requests only read its tensors, so they
are served concurrently without locks. OpenAPI docs are at ``/docs``.

``GET /health``, ``GET /model``, ``GET /users/{user}/recommendations?k=10&exclude_seen=true``,
``GET /users/{user}/items/{item}``, ``POST /predict`` (at most :data:`MAX_BATCH` pairs) and
``GET /items/{item}/similar?k=10``. ``k`` is 1 to :data:`MAX_K`. An unknown user gets the
most-rated items with ``"cold_start": true``; an unknown item (or, for predictions, user) is
a 404, an ambiguous title a 400, a bad ``k`` or an oversized batch a 422, each with a JSON
body ``{"detail": ...}``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, TypeAdapter
from starlette.concurrency import run_in_threadpool

from mtrec import __version__
from mtrec.errors import AmbiguousItemError, UnknownItemError, UnknownUserError
from mtrec.recommend import Prediction, Recommendations, Recommender, SimilarItems
from mtrec.fitted import summarize

#: Largest ``k`` a request may ask for.
MAX_K = 1000
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


class Pair(BaseModel):
    user: int | str
    item: int | str = Field(description="raw item id or title")


class PredictRequest(BaseModel):
    pairs: list[Pair] = Field(max_length=MAX_BATCH, description=f"at most {MAX_BATCH:,} (user, item) pairs")


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


def create_app(recommender: Recommender | str | Path) -> FastAPI:
    """The service for ``recommender``, or for the model saved at that path (a file or run directory)."""
    if not isinstance(recommender, Recommender):
        recommender = Recommender.load(recommender)
    app = FastAPI(title="mtrec", version=__version__, description=DESCRIPTION)
    app.state.recommender = recommender
    model_info = _model_info(recommender)

    @app.exception_handler(UnknownItemError)
    @app.exception_handler(UnknownUserError)
    async def not_found(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(AmbiguousItemError)
    async def ambiguous(request: Request, error: AmbiguousItemError) -> JSONResponse:
        return JSONResponse({"detail": str(error), "candidates": error.candidates}, status_code=400)

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

    @app.get("/users/{user}/recommendations", response_model=Recommendations)
    async def recommendations(user: str, k: int = K, exclude_seen: bool = True) -> Response:
        """The top-k items for `user`; seen items excluded unless `exclude_seen=false`."""
        return _json(recommender.recommend(user, k, exclude_seen))

    @app.get("/users/{user}/items/{item:path}", response_model=Prediction, responses=ERRORS)
    async def prediction(user: str, item: str) -> Response:
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
    async def similar(item: str, k: int = K) -> Response:
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

