"""Load test of ``mtrec serve``: latency and throughput per kind of request.

Starts the service (``mtrec serve`` in a subprocess on 127.0.0.1, a free port) with a model
trained on MovieLens 100K (trained here for ``--epochs`` if no ``--model`` is given), then
sends ``--requests`` requests from ``--concurrency`` concurrent clients on keep-alive
connections, mixed across top-10 recommendations (known and unknown users), single and
batch predictions and predictions for unknown ids (which must be 404s). An error is any
response whose status is not the one expected. Prints one row per kind of request.

    flock /tmp/mtrec-heavy.lock .venv/bin/python benchmarks/serve.py [--model RUN_DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

from mtrec.data import load_movielens, random_split
from mtrec.model import MultitaskModel

ROOT = Path(__file__).resolve().parents[1]

#: Share of the requests of each kind.
MIX = {
    "recommend top-10": 0.60,
    "recommend cold start": 0.10,
    "predict single": 0.20,
    "predict batch (100)": 0.05,
    "predict unknown (404)": 0.05,
}


CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


@dataclass
class Request:
    kind: str
    payload: bytes
    expected: int

    @classmethod
    def http(cls, kind: str, method: str, url: str, body: dict | None, expected: int) -> Request:
        """The request as bytes on the wire, encoded ahead so that encoding is not timed."""
        content = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(content)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        return cls(kind, (head + "\r\n").encode() + content, expected)


def train_model(data_dir: Path, epochs: int, run_dir: Path) -> Path:
    torch.set_num_threads(1)
    train, _ = random_split(load_movielens("100k", data_dir=data_dir), test_fraction=0.05, seed=0)
    MultitaskModel(seed=0).fit(train, epochs).save(run_dir)
    return run_dir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "mtrec.cli", "serve", "--model", str(model), "--port", str(port)]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start within 120 s")


def plan_requests(count: int, users: list, items: list, seed: int) -> list[Request]:
    """``count`` requests drawn by :data:`MIX`, on random known users and items."""
    rng = random.Random(seed)

    def make(kind: str) -> Request:
        user, item = rng.choice(users), rng.choice(items)
        if kind == "recommend top-10":
            return Request.http(kind, "GET", f"/users/{user}/recommendations?k=10", None, 200)
        if kind == "recommend cold start":
            return Request.http(kind, "GET", f"/users/new-{rng.randrange(10**6)}/recommendations?k=10", None, 200)
        if kind == "predict single":
            return Request.http(kind, "GET", f"/users/{user}/items/{item}", None, 200)
        if kind == "predict batch (100)":
            pairs = [{"user": rng.choice(users), "item": rng.choice(items)} for _ in range(100)]
            return Request.http(kind, "POST", "/predict", {"pairs": pairs}, 200)
        unknown = rng.choice([f"/users/new-{user}/items/{item}", f"/users/{user}/items/no-such-item-{item}"])
        return Request.http(kind, "GET", unknown, None, 404)

    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=count)
    return [make(kind) for kind in kinds]


async def send_all(port: int, requests: list[Request], concurrency: int) -> list[tuple[str, int, float]]:
    """Send ``requests`` over ``concurrency`` keep-alive connections; (kind, status or 0, seconds) of each.

    A minimal HTTP/1.1 client on asyncio streams: on two cores httpx's connection pool costs
    more CPU than the server, and the benchmark should measure the server.
    """
    queue = iter(requests)
    results: list[tuple[str, int, float]] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for request in queue:
            started = time.perf_counter()
            try:
                writer.write(request.payload)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1)))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, AttributeError, ValueError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            results.append((request.kind, status, time.perf_counter() - started))
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def report(requests: list[Request], results: list[tuple[str, int, float]], seconds: float) -> str:
    expected = {request.kind: request.expected for request in requests}
    header = f"{'request':<24}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'5xx':>6}"
    lines = [header, "-" * len(header)]
    for kind in [*MIX, "all"]:
        rows = [r for r in results if kind in ("all", r[0])]
        latency = np.array([r[2] for r in rows]) * 1000
        errors = sum(status != expected[k] for k, status, _ in rows)
        server_errors = sum(status >= 500 for _, status, _ in rows)
        lines.append(
            f"{kind:<24}{len(rows):>9}{len(rows) / seconds:>9.0f}{np.percentile(latency, 50):>9.2f}"
            f"{np.percentile(latency, 99):>9.2f}{errors:>8}{server_errors:>6}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="run directory or model file (default: train one)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data")))
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the model trained without --model")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200, help="requests sent first and not measured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or train_model(args.data_dir, args.epochs, Path(scratch) / "run")
        data = MultitaskModel.load(model).data_
        users, items = data.user_ids.tolist(), data.item_ids.tolist()
        port = free_port()
        server = start_server(model, port, Path(scratch) / "server.log")
        try:
            asyncio.run(send_all(port, plan_requests(args.warmup, users, items, args.seed + 1), args.concurrency))
            requests = plan_requests(args.requests, users, items, args.seed)
            started = time.perf_counter()
            results = asyncio.run(send_all(port, requests, args.concurrency))
            seconds = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{args.requests} requests, {args.concurrency} concurrent, {seconds:.1f} s, {os.cpu_count()} CPUs")
    print(report(requests, results, seconds))


if __name__ == "__main__":
    main()
