"""Load test of ``mtrec serve``: latency per kind of request at fixed offered rates (open loop).

Starts the service (``mtrec serve`` in a subprocess on 127.0.0.1, a free port, ``--workers``
processes) with a model trained on MovieLens 100K (trained here for ``--epochs`` if no
``--model`` is given). Then, for each offered rate, it schedules requests at fixed intervals
and sends each at its scheduled time on one of ``--connections`` keep-alive connections, whether
or not earlier ones have been answered (open loop). Latency counts from the *scheduled* time,
so that time spent waiting for a free connection, a busy server, counts too (no coordinated
omission). The client is a minimal HTTP/1.1 client on asyncio streams, so that on two cores it
takes as little CPU from the server as it can. The mix: top-10 recommendations of known users,
of unknown users (cold start), single predictions, and predictions for unknown ids (which must
be 404s); an error is any other status than the one expected. The knee is the highest offered
rate at which the top-10 p99 stays under 25 ms. ``--closed-loop`` instead sends from
``--concurrency`` clients, each waiting for its answer before the next request: that measures
throughput under a fixed concurrency, and hides the tail (it is labelled so).

``--foldin`` instead fires bursts of concurrent fold-ins (``POST /recommendations`` with a history
of ``--foldin-items`` rated items, each on a connection of its own, all sent at once) while top-10
GETs go on at ``--get-rate`` per second (open loop, as above). Per burst size it counts the
fold-ins answered 200 and 503 (the pool's queue full), their latency, the GETs' latency while the
burst ran, and the server's RSS before the burst, at its peak and after it (once idle again).

    python benchmarks/serve.py                        # rates 200 ... 3200 req/s, about a minute and a half
    python benchmarks/serve.py --workers 2 --figure docs/serve_latency.png
    python benchmarks/serve.py --foldin               # bursts of 50 and 200 fold-ins of 1,000 items
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
from tables import table  # benchmarks/tables.py, beside this script

from mtrec.data import load_movielens, random_split
from mtrec.model import MultitaskModel

ROOT = Path(__file__).resolve().parents[1]

#: Share of the requests of each kind.
MIX = {
    "recommend top-10": 0.70,
    "recommend cold start": 0.10,
    "predict single": 0.15,
    "predict unknown (404)": 0.05,
}
#: The offered rates of the sweep, requests per second.
RATES = (200, 400, 800, 1200, 1600, 2000, 2400, 3200)
#: The p99 of top-10 recommendations that the knee keeps under, in ms.
KNEE_MS = 25.0


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


def start_server(model: Path, port: int, log: Path, workers: int = 1, options: list[str] = ()) -> subprocess.Popen:
    command = [sys.executable, "-m", "mtrec", "serve", "--model", str(model), "--port", str(port), "--workers", str(workers), *options]
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


async def exchange(reader, writer, request: Request) -> int:
    """Send one request and read its answer; the status."""
    writer.write(request.payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1)))
    return status


async def pooled_exchange(pool: asyncio.Queue, port: int, request: Request) -> int:
    """``request`` on a connection taken from ``pool`` and given back (a new one where it broke);
    the status, or 0 for a broken exchange."""
    reader, writer = await pool.get()
    try:
        status = await exchange(reader, writer, request)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, AttributeError, ValueError):
        status = 0
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pool.put_nowait((reader, writer))
    return status


async def send_open_loop(port: int, requests: list[Request], rate: float, connections: int) -> tuple[list, float]:
    """Send request i at start + i / rate on a free keep-alive connection; (kind, status, seconds
    from its scheduled time) of each, and the seconds from the start to the last answer."""
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    results: list[tuple[str, int, float]] = []
    start = loop.time() + 0.05
    last = [start]

    async def one(request: Request, scheduled: float) -> None:
        status = await pooled_exchange(pool, port, request)
        done = loop.time()
        results.append((request.kind, status, done - scheduled))
        last[0] = max(last[0], done)

    tasks = []
    for index, request in enumerate(requests):
        scheduled = start + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request, scheduled)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return results, last[0] - start


def summary(results: list[tuple[str, int, float]], expected: dict[str, int], kind: str, seconds: float) -> dict:
    rows = [r for r in results if kind in ("all", r[0])]
    latency = np.array([r[2] for r in rows]) * 1000
    return {
        "requests": len(rows),
        "rate": len(rows) / seconds,
        "p50": float(np.percentile(latency, 50)),
        "p99": float(np.percentile(latency, 99)),
        "max": float(latency.max()),
        "errors": sum(status != expected[k] for k, status, _ in rows),
        "server_errors": sum(status >= 500 for _, status, _ in rows),
    }


def report(requests: list[Request], results: list[tuple[str, int, float]], seconds: float) -> str:
    expected = {request.kind: request.expected for request in requests}
    header = f"{'request':<24}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}{'5xx':>6}"
    lines = [header, "-" * len(header)]
    for kind in [*MIX, "all"]:
        row = summary(results, expected, kind, seconds)
        lines.append(
            f"{kind:<24}{row['requests']:>9}{row['rate']:>9.0f}{row['p50']:>9.2f}{row['p99']:>9.2f}{row['max']:>9.1f}"
            f"{row['errors']:>8}{row['server_errors']:>6}"
        )
    return "\n".join(lines)


def sweep_table(rows: list[tuple[int, dict, dict]]) -> str:
    header = f"{'offered req/s':>13}{'achieved':>10}{'top-10 p50 ms':>15}{'top-10 p99 ms':>15}{'top-10 max ms':>15}{'all p99 ms':>12}{'errors':>8}"
    lines = [header, "-" * len(header)]
    for rate, top, every in rows:
        lines.append(
            f"{rate:>13}{every['rate']:>10.0f}{top['p50']:>15.2f}{top['p99']:>15.2f}{top['max']:>15.1f}{every['p99']:>12.2f}{every['errors']:>8}"
        )
    return "\n".join(lines)


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` (Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def foldin_request(items: list, size: int, seed: int) -> Request:
    """A fold-in of ``size`` distinct items, each rated 1 to 5."""
    rng = random.Random(seed)
    history = [{"item": item, "rating": rng.randint(1, 5)} for item in rng.sample(items, size)]
    return Request.http("fold-in", "POST", "/recommendations", {"history": history, "k": 10}, 200)


async def probe(port: int, users: list, rate: float, stop: asyncio.Event, seed: int) -> list[tuple[float, int, float]]:
    """Top-10 GETs at ``rate`` per second (open loop, on 8 keep-alive connections) until ``stop``;
    (scheduled time, status, seconds from the scheduled time) of each."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(8):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    results: list[tuple[float, int, float]] = []

    async def one(request: Request, scheduled: float) -> None:
        status = await pooled_exchange(pool, port, request)
        results.append((scheduled, status, loop.time() - scheduled))

    start, tasks = loop.time(), []
    while not stop.is_set():
        scheduled = start + len(tasks) / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        request = Request.http("get", "GET", f"/users/{rng.choice(users)}/recommendations?k=10", None, 200)
        tasks.append(asyncio.create_task(one(request, scheduled)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return results


async def foldin_burst(port: int, pid: int, request: Request, count: int, users: list, rate: float, seed: int) -> dict:
    """``count`` concurrent fold-ins with top-10 GETs alongside: statuses, latencies and the server's RSS."""
    loop = asyncio.get_running_loop()
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]  # all open before any is sent
    before = rss_mb(pid)
    stop, peak = asyncio.Event(), [before]

    async def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            await asyncio.sleep(0.05)

    async def one(reader, writer) -> tuple[int, float]:
        started = loop.time()
        try:
            status = await exchange(reader, writer, request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, AttributeError, ValueError):
            status = 0
        writer.close()
        return status, loop.time() - started

    sampler = asyncio.create_task(sample())
    getting = asyncio.create_task(probe(port, users, rate, stop, seed))
    await asyncio.sleep(0.2)  # GETs before the burst too: the idle latency of the same run
    burst_start = loop.time()
    answers = await asyncio.gather(*(one(reader, writer) for reader, writer in connections))
    burst_end = loop.time()
    stop.set()
    gets = await getting
    await sampler
    await asyncio.sleep(1.0)  # idle again: the pool has handed its memory back
    during = np.array([seconds for scheduled, _, seconds in gets if burst_start <= scheduled <= burst_end]) * 1000
    answered = np.array([seconds for status, seconds in answers if status == 200])
    statuses = [status for status, _ in answers]
    return {
        "count": count, "ok": statuses.count(200), "busy": statuses.count(503), "other": count - statuses.count(200) - statuses.count(503),
        "foldin_p50": float(np.median(answered)) if len(answered) else float("nan"),
        "foldin_max": float(answered.max()) if len(answered) else float("nan"),
        "get_p50": float(np.percentile(during, 50)) if len(during) else float("nan"),
        "get_p99": float(np.percentile(during, 99)) if len(during) else float("nan"),
        "get_max": float(during.max()) if len(during) else float("nan"),
        "gets": len(during), "get_errors": sum(status != 200 for _, status, _ in gets),
        "seconds": burst_end - burst_start, "rss_before": before, "rss_peak": peak[0], "rss_after": rss_mb(pid),
    }  # fmt: skip


def foldin_table(rows: list[dict]) -> str:
    header = [
        "concurrent fold-ins",
        "200",
        "503",
        "other",
        "fold-in p50 s",
        "fold-in max s",
        "burst s",
        "GETs during",
        "GET p50 ms",
        "GET p99 ms",
        "GET max ms",
        "GET errors",
        "RSS before MB",
        "RSS peak MB",
        "RSS after MB",
        "after - before MB",
    ]
    body = [[str(r["count"]), str(r["ok"]), str(r["busy"]), str(r["other"]), f"{r['foldin_p50']:.3f}", f"{r['foldin_max']:.3f}",
             f"{r['seconds']:.2f}", str(r["gets"]), f"{r['get_p50']:.2f}", f"{r['get_p99']:.2f}", f"{r['get_max']:.1f}",
             str(r["get_errors"]), f"{r['rss_before']:.0f}", f"{r['rss_peak']:.0f}", f"{r['rss_after']:.0f}",
             f"{r['rss_after'] - r['rss_before']:+.0f}"] for r in rows]  # fmt: skip
    return table([header, *body])


def run_foldin(args: argparse.Namespace, port: int, pid: int, users: list, items: list) -> None:
    """The fold-in bursts: one alone first (its latency unloaded), then each of ``--foldin-bursts``."""
    request = foldin_request(items, args.foldin_items, args.seed)

    async def alone() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.perf_counter()
        status = await exchange(reader, writer, request)
        writer.close()
        if status != 200:
            raise SystemExit(f"a fold-in alone got {status}")
        return time.perf_counter() - started

    single = min(asyncio.run(alone()) for _ in range(3))
    rows = [asyncio.run(foldin_burst(port, pid, request, count, users, args.get_rate, args.seed + count)) for count in args.foldin_bursts]
    options = " ".join(args.serve_option) or "the defaults"
    print(
        f"FOLD-IN BURSTS: histories of {args.foldin_items:,} rated items, all sent at once; top-10 GETs at {args.get_rate:g}/s "
        f"alongside (open loop; latency of those scheduled during the burst); mtrec serve with {options}; "
        f"{os.cpu_count()} CPUs shared by client and server; one fold-in alone: {single:.3f} s"
    )
    print(foldin_table(rows))


def draw(rows: list[tuple[int, dict, dict]], path: Path, workers: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    rates = [rate for rate, _, _ in rows]
    axes.plot(rates, [top["p50"] for _, top, _ in rows], marker="o", label="top-10 p50")
    axes.plot(rates, [top["p99"] for _, top, _ in rows], marker="o", label="top-10 p99")
    axes.axhline(KNEE_MS, color="grey", linestyle="--", linewidth=1, label=f"{KNEE_MS:g} ms")
    axes.set_yscale("log")
    axes.set_xlabel("offered requests per second (open loop)")
    axes.set_ylabel("latency from the scheduled send, ms")
    axes.set_title(f"mtrec serve, ML-100K model, {workers} worker(s), client on the same 2 cores")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="run directory or model file (default: train one)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data")))
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the model trained without --model")
    parser.add_argument("--rates", type=int, nargs="+", default=list(RATES), help="offered rates, requests per second")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of requests at each rate")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections of the open-loop client")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (mtrec serve --workers)")
    parser.add_argument("--closed-loop", action="store_true", help="closed loop instead: --concurrency clients, --requests")
    parser.add_argument("--requests", type=int, default=5000, help="--closed-loop: requests")
    parser.add_argument("--concurrency", type=int, default=32, help="--closed-loop: concurrent clients")
    parser.add_argument("--warmup", type=int, default=500, help="requests sent first and not measured")
    parser.add_argument("--figure", type=Path, help="draw the p50 / p99 curve to this PNG")
    parser.add_argument("--foldin", action="store_true", help="bursts of concurrent fold-ins instead, with GETs alongside")
    parser.add_argument("--foldin-bursts", type=int, nargs="+", default=[50, 200], help="--foldin: concurrent fold-ins of each burst")
    parser.add_argument("--foldin-items", type=int, default=1000, help="--foldin: items in each fold-in's history")
    parser.add_argument("--get-rate", type=float, default=100.0, help="--foldin: top-10 GETs per second alongside")
    parser.add_argument(
        "--serve-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="an option for mtrec serve, e.g. --serve-option=--pool-threads=4 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.foldin and args.workers != 1:
        parser.error("--foldin measures one server process's memory: leave --workers at 1")

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or train_model(args.data_dir, args.epochs, Path(scratch) / "run")
        data = MultitaskModel.load(model).data_
        users, items = data.user_ids.tolist(), data.item_ids.tolist()
        port = free_port()
        server = start_server(model, port, Path(scratch) / "server.log", args.workers, args.serve_option)
        try:
            asyncio.run(send_all(port, plan_requests(args.warmup, users, items, args.seed + 1), 8))
            if args.foldin:
                run_foldin(args, port, server.pid, users, items)
                return
            if args.closed_loop:
                requests = plan_requests(args.requests, users, items, args.seed)
                started = time.perf_counter()
                results = asyncio.run(send_all(port, requests, args.concurrency))
                seconds = time.perf_counter() - started
                print(
                    f"CLOSED LOOP (a fixed concurrency; latency hides the queue): {args.requests} requests, "
                    f"{args.concurrency} concurrent clients, {seconds:.1f} s, {os.cpu_count()} CPUs"
                )
                print(report(requests, results, seconds))
                return
            rows, details = [], {}
            for rate in args.rates:
                requests = plan_requests(int(rate * args.seconds), users, items, args.seed + rate)
                # The client's own garbage collections (a full one walks torch's heap: about 100 ms)
                # would be counted as the server's latency: none while a rate is measured.
                gc.collect()
                gc.freeze()
                gc.disable()
                try:
                    results, seconds = asyncio.run(send_open_loop(port, requests, rate, args.connections))
                finally:
                    gc.enable()
                    gc.unfreeze()
                expected = {request.kind: request.expected for request in requests}
                rows.append((rate, summary(results, expected, "recommend top-10", seconds), summary(results, expected, "all", seconds)))
                details[rate] = report(requests, results, seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
    knee = max((rate for rate, top, every in rows if top["p99"] < KNEE_MS and every["errors"] == 0), default=None)
    print(
        f"OPEN LOOP: {args.seconds:g} s at each offered rate, {args.connections} keep-alive connections, "
        f"{args.workers} server worker(s), {os.cpu_count()} CPUs shared by client and server"
    )
    print(sweep_table(rows))
    print(f"knee (highest offered rate with top-10 p99 < {KNEE_MS:g} ms and no errors): {'none' if knee is None else f'{knee} req/s'}")
    target = 800 if 800 in details else args.rates[len(args.rates) // 2]
    print(f"\nper kind at {target} req/s offered:")
    print(details[target])
    if args.figure:
        draw(rows, args.figure, args.workers)


if __name__ == "__main__":
    main()
