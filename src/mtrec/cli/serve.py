"""``mtrec serve``: the HTTP service for a trained model."""

from __future__ import annotations

import argparse
import os

from mtrec.cli._args import add_option, non_negative_int, positive_int
from mtrec.cli.recommend import WATCH_SCORE_HELP, add_index_options, add_model_option, index_config, load_recommender

DESCRIPTION = """\
Serve recommendations, predictions and similar items over HTTP (OpenAPI docs at /docs).
The model is loaded once; requests are answered concurrently. An unknown user gets the
most-rated items flagged cold_start; an unknown item (or, for a prediction, user) is a
404; k is 1 to 1000, a POST /predict batch at most 10,000 pairs, and an id or title at most 256
characters (422 otherwise); a request body over --max-body-bytes is a 413, refused unparsed, and
one that is not application/json a 415. A history's ratings must be finite numbers on the model's
rating scale (422 naming the entry). Every GET endpoint answers HEAD.

Fold-ins (POST /recommendations) and prediction batches over 256 pairs run on --pool-threads
threads; --pool-queue more may wait for one, and beyond that they are refused at once with a 503
and Retry-After, so that the other requests stay fast under a burst.
"""


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number, 1 to 65535, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="serve a trained model over HTTP",
        description=DESCRIPTION,
        epilog=WATCH_SCORE_HELP + "\nexample:\n  mtrec serve --model RUN_DIR --port 8000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_option(parser)
    add_index_options(parser)
    add_option(parser, "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add_option(parser, "--port", type=port_number, default=8000, help="port (default 8000)")
    add_option(
        parser,
        "--threads",
        type=positive_int,
        default=1,
        help="PyTorch threads; one keeps single requests fastest and leaves cores to others (default 1)",
    )
    add_option(
        parser,
        "--max-body-bytes",
        type=positive_int,
        default=None,
        metavar="BYTES",
        help="largest request body; a larger one is a 413, refused before parsing (default 8 MiB)",
    )
    # The defaults are mtrec.serving.http's, named in the help without importing FastAPI for every command.
    add_option(
        parser,
        "--pool-threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="threads for fold-ins and large batches, each with --threads PyTorch threads (default 2)",
    )
    add_option(
        parser,
        "--pool-queue",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="fold-ins and large batches that may wait for a pool thread; more get a 503 (default 16)",
    )
    add_option(
        parser, "--workers", type=positive_int, default=1, help="worker processes on the one port (uvicorn's); each holds the model (default 1)"
    )
    add_option(parser, "--access-log", action="store_true", help="log every request")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from mtrec.serving.http import ENVIRONMENT, MAX_BODY_BYTES, POOL_QUEUE, POOL_THREADS, create_app, settle_heap

    index = index_config(args)
    recommender = load_recommender(args, index)  # a bad model is refused here, before any worker starts
    recommender.retrieval.warm()  # an HNSW graph built on every core, and saved for the workers to read
    torch.set_num_threads(args.threads)
    max_body = args.max_body_bytes or MAX_BODY_BYTES
    options = {"host": args.host, "port": args.port, "access_log": args.access_log, "log_level": "info"}
    pool = {"pool_threads": args.pool_threads or POOL_THREADS, "pool_queue": POOL_QUEUE if args.pool_queue is None else args.pool_queue}
    if args.workers == 1:
        app = create_app(recommender, max_body_bytes=max_body, **pool)
        settle_heap()
        uvicorn.run(app, **options)
        return 0
    values = {
        "model": str(args.model),
        "device": args.device,
        "max_body_bytes": str(max_body),
        "threads": str(args.threads),
        "index": index.model_dump_json(),
        **{name: str(size) for name, size in pool.items()},
    }
    os.environ.update({ENVIRONMENT[name]: value for name, value in values.items()})
    uvicorn.run("mtrec.serving.http:app_from_environment", factory=True, workers=args.workers, **options)
    return 0
