"""``mtrec serve``: the HTTP service for a trained model."""

from __future__ import annotations

import argparse

from mtrec.cli._args import add_option, positive_int
from mtrec.cli.recommend import WATCH_SCORE_HELP, add_model_option, load_recommender


DESCRIPTION = """\
Serve recommendations, predictions and similar items over HTTP (OpenAPI docs at /docs).
The model is loaded once; requests are answered concurrently. An unknown user gets the
most-rated items flagged cold_start; an unknown item (or, for a prediction, user) is a
404; k is 1 to 1000, a POST /predict batch at most 10,000 pairs, and an id or title at most 256
characters (422 otherwise); a request body over --max-body-bytes is a 413, refused unparsed.
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
    add_option(parser, "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add_option(parser, "--port", type=port_number, default=8000, help="port (default 8000)")
    add_option(
        parser,
        "--threads",
        type=positive_int,
        default=1,
        help="PyTorch threads; one keeps single requests fastest and leaves cores to others (default 1)",
    )
    add_option(parser, "--max-body-bytes", type=positive_int, default=None, metavar="BYTES",
               help="largest request body; a larger one is a 413, refused before parsing (default 8 MiB)")
    add_option(parser, "--access-log", action="store_true", help="log every request")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from mtrec.serve import MAX_BODY_BYTES, create_app

    torch.set_num_threads(args.threads)
    app = create_app(load_recommender(args), max_body_bytes=args.max_body_bytes or MAX_BODY_BYTES)
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")
    return 0
