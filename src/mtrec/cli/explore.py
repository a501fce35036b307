"""``mtrec explore``: the web explorer of a trained model, served on this machine only."""

from __future__ import annotations

import argparse

from mtrec.cli._args import add_option
from mtrec.cli.recommend import add_model_option, load_recommender
from mtrec.cli.serve import port_number

DESCRIPTION = """\
Serve a model on 127.0.0.1 and print the address of its explorer: a page that shows a user's
rated items beside their recommendations (filtered by genre, seen items in or out), recommends
for a new user from the titles typed in, shows an item's similar items and how its predicted
rating spreads over all users, and the model's configuration, selected epoch and data. The page
is plain HTML, CSS and JavaScript shipped with mtrec: it needs no internet. The JSON endpoints
it uses are the service's own (mtrec serve --help). Ctrl-C stops it.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "explore",
        help="explore a trained model in a web browser",
        description=DESCRIPTION,
        epilog="example:\n  mtrec explore --model RUN_DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_option(parser)
    add_option(parser, "--port", type=port_number, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from mtrec.serving.http import create_app, settle_heap

    app = create_app(load_recommender(args))
    listener = socket.create_server(("127.0.0.1", args.port or 0))  # taken: one line (OSError), before anything is printed
    port = listener.getsockname()[1]
    print(f"mtrec explore: the explorer of {args.model} is at http://127.0.0.1:{port}/ (Ctrl-C stops it)", flush=True)
    settle_heap()
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
    return 0
