"""One replica of an inference service (docs/serve.md): the spiral classifier of
examples/hpo/train.py, served over HTTP on $SCHEDULERD_PORT.

    POST /predict   {"inputs": [[x, y], ...]}  →  {"classes": [...], "probabilities": [[...], ...]}
    GET  /healthz   200 once the model is loaded and has run one forward pass; 503 before

With `--weights PATH` it serves what `train.py --save PATH` saved; without, it trains
the same model for a second or two at start, so that the example runs alone. While it
loads, it already listens and answers 503, which is what a readiness probe wants to see.
On SIGTERM (the daemon drains a replica before it stops it) it stops accepting
connections, lets the requests in flight finish, and exits 0.

`--delay-ms` adds that long to every /predict, as a heavier model would: requests then
overlap, and the router sees the in-flight counts the autoscaler works from.

Why aiohttp and not the standard library's ThreadingHTTPServer: the router keeps
connections alive between requests, and a thread-per-connection server's graceful stop
waits for every idle kept-alive connection to close (or kills busy ones); aiohttp's
runner closes idle connections at once and waits only for requests in flight. The
delay is an `asyncio.sleep` (no thread held), and the forward pass runs on one worker
thread so that the event loop keeps answering health checks meanwhile.

    SCHEDULERD_PORT=8000 python examples/serve/model_server.py --delay-ms 20
    curl -s localhost:8000/predict -d '{"inputs": [[0.1, 0.2], [-0.5, 0.3]]}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

# The model and its data are train.py's own (one definition of the classifier).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hpo"))

FEATURES = 2  # train.spirals: points in the plane
MAX_BODY = 1024 * 1024  # bytes of one request
STATE: web.AppKey[Server] = web.AppKey("state")


class Server:
    """The model once loaded, and the requests in flight (for the drain's log line)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.net: Any = None  # torch.nn.Module once ready
        self.torch: Any = None
        self.in_flight = 0
        self.served = 0
        self.failure = ""  # why the model could not be loaded
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        # A real model serves a few requests at once (a GPU's batch, its memory); the rest
        # queue here, and latency grows with load, as it would.
        self.slots = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None

    @property
    def ready(self) -> bool:
        return self.net is not None

    def load(self) -> None:
        """Import torch, load or train the model, run one forward pass (the warm-up)."""
        started = time.monotonic()
        import torch  # ~1 s: after the socket listens, so that probes get 503 meanwhile
        import train

        torch.set_num_threads(1)
        torch.manual_seed(0)
        if self.args.weights:
            saved = torch.load(self.args.weights, weights_only=True)
            net = train.model(int(saved["width"]), int(saved.get("classes", 3)))
            net.load_state_dict(saved["state_dict"])
            how = f"loaded {self.args.weights}"
        else:
            net, how = self._train(torch, train)
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, FEATURES))  # the warm-up
        self.torch = torch
        self.net = net
        print(f"model ready: {how} in {time.monotonic() - started:.1f}s", flush=True)

    def _train(self, torch: Any, train: Any) -> tuple[Any, str]:
        """train.py's model and data, a few epochs: ~1 s on one CPU core."""
        x, y = train.spirals(2000)
        order = torch.randperm(len(x))
        x, y = x[order], y[order]
        split = len(x) * 4 // 5
        net = train.model(64)
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(self.args.train_epochs):
            perm = torch.randperm(split)
            for i in range(0, split, 32):
                idx = perm[i : i + 32]
                opt.zero_grad()
                loss_fn(net(x[idx]), y[idx]).backward()
                opt.step()
        with torch.no_grad():
            accuracy = (net(x[split:]).argmax(1) == y[split:]).float().mean().item()
        return net, f"trained {self.args.train_epochs} epochs, accuracy {accuracy:.3f}"

    def predict(self, inputs: list[list[float]]) -> dict[str, Any]:
        torch = self.torch
        with torch.no_grad():
            probs = torch.softmax(self.net(torch.tensor(inputs, dtype=torch.float32)), dim=1)
        return {
            "classes": probs.argmax(1).tolist(),
            "probabilities": [[round(p, 6) for p in row] for row in probs.tolist()],
        }


def check_inputs(body: object, max_batch: int) -> list[list[float]] | str:
    """The rows of a /predict body, or why they are refused (a 400's message)."""
    if not isinstance(body, dict) or "inputs" not in body:
        return 'the body must be a JSON object {"inputs": [[x, y], ...]}'
    inputs = body["inputs"]
    if not isinstance(inputs, list) or not inputs:
        return "inputs must be a non-empty list of rows"
    if len(inputs) > max_batch:
        return f"{len(inputs)} rows, at most {max_batch} in one request"
    for i, row in enumerate(inputs):
        if not isinstance(row, list) or len(row) != FEATURES:
            return f"inputs[{i}]: a row of {FEATURES} numbers"
        for v in row:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return f"inputs[{i}]: {json.dumps(v)} is not a finite number"
    return [[float(v) for v in row] for row in inputs]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def healthz(request: web.Request) -> web.Response:
    s = request.app[STATE]
    if s.ready:
        return web.json_response({"ready": True, "served": s.served})
    if s.failure:
        return _error(503, f"the model could not be loaded: {s.failure}")
    return _error(503, "loading the model")


async def predict(request: web.Request) -> web.Response:
    s = request.app[STATE]
    if not s.ready:
        return _error(503, "loading the model")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body is not JSON")
    rows = check_inputs(body, s.args.max_batch)
    if isinstance(rows, str):
        return _error(400, rows)
    s.in_flight += 1
    try:
        async with s.slots or contextlib.nullcontext():
            if s.args.delay_ms:
                await asyncio.sleep(s.args.delay_ms / 1000)
            answer = await asyncio.get_running_loop().run_in_executor(s.pool, s.predict, rows)
    finally:
        s.in_flight -= 1
    s.served += 1
    return web.json_response(answer)


async def serve(args: argparse.Namespace) -> int:
    state = Server(args)
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", healthz)  # the default readiness path, too
    app.router.add_post("/predict", predict)
    # shutdown_timeout: how long requests in flight may take to finish after SIGTERM
    # (the consumer's grace bounds it from outside anyway).
    runner = web.AppRunner(app, shutdown_timeout=args.drain_timeout, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    print(f"listening on {args.host}:{args.port}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def load() -> None:
        try:
            await loop.run_in_executor(state.pool, state.load)
        except Exception as e:  # a bad weights file: say so on /healthz and in the log
            state.failure = f"{type(e).__name__}: {e}"
            print(f"cannot load the model: {state.failure}", file=sys.stderr, flush=True)
            stop.set()

    loading = asyncio.create_task(load())
    await stop.wait()
    print(f"stopping: {state.in_flight} requests in flight finish first", flush=True)
    await runner.cleanup()  # stops listening, closes idle connections, waits for the rest
    await loading
    state.pool.shutdown()
    print(f"stopped after {state.served} requests", flush=True)
    return 1 if state.failure else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("SCHEDULERD_PORT", "8000")),
        help="default: $SCHEDULERD_PORT (set by schedulerd for a replica), else 8000",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    p.add_argument("--weights", help="serve the weights train.py --save wrote (else train)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="added to every /predict")
    p.add_argument("--max-batch", type=int, default=256, help="rows in one request, at most")
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=0,
        help="requests computed at once; the rest wait their turn (default 0: no limit)",
    )
    p.add_argument("--train-epochs", type=int, default=3, help="without --weights: epochs at start")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds requests in flight may take to finish after SIGTERM",
    )
    args = p.parse_args()
    sys.exit(asyncio.run(serve(args)))


if __name__ == "__main__":
    main()
