"""An open-loop load generator for an inference service (docs/serve.md).

Open loop: requests leave at the rate asked, whether or not earlier ones have been
answered (as independent users send them), so that a slow service shows up as
latency and in-flight requests, not as a lower rate. A closed loop (send, wait,
send) would slow down with the service and hide exactly what the autoscaler reacts to.

    python examples/serve/load.py http://127.0.0.1:8080/services/spirals/predict \
        --rate 20 --duration 30s
    python examples/serve/load.py URL --profile "10s@2,30s@20,20s@2" --json

Per phase (a step of the profile): requests sent, answered (2xx), failed by status
(or `error` for a connection that failed, `timeout`), and the latency of the answered
ones (p50, p99). A request counts in the phase it was sent in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

_PHASE = re.compile(r"\s*(\d+(?:\.\d+)?)(ms|s|m|)\s*@\s*(\d+(?:\.\d+)?)\s*")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "": 1.0}


@dataclass(frozen=True)
class Phase:
    seconds: float
    rate: float  # requests per second


@dataclass
class Result:
    phase: Phase
    sent: int = 0
    answered: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": self.phase.seconds,
            "rate": self.phase.rate,
            "sent": self.sent,
            "answered": self.answered,
            "failed": dict(sorted(self.failed.items())),
            "p50_ms": percentile(self.latencies_ms, 50),
            "p99_ms": percentile(self.latencies_ms, 99),
        }


def parse_profile(text: str) -> list[Phase]:
    """`10s@2,30s@20,20s@2`: 10 s at 2 requests/s, then 30 s at 20, then 20 s at 2
    (a duration without a unit is seconds; a rate of 0 is a quiet spell)."""
    phases = []
    for part in text.split(","):
        m = _PHASE.fullmatch(part)
        if m is None:
            raise ValueError(f"{part.strip()!r}: a phase is DURATION@RATE, e.g. 30s@20 or 2m@5")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
        if seconds <= 0:
            raise ValueError(f"{part.strip()!r}: a phase lasts more than 0 s")
        phases.append(Phase(seconds, float(m.group(3))))
    return phases


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest rank; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return round(ordered[rank - 1], 2)


class Load:
    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession) -> None:
        self.args = args
        self.session = session
        self.tasks: set[asyncio.Task[None]] = set()
        self.rng = random.Random(args.seed)

    def body(self) -> dict[str, Any]:
        rows = [
            [round(self.rng.uniform(-1, 1), 4), round(self.rng.uniform(-1, 1), 4)]
            for _ in range(self.args.batch)
        ]
        return {"inputs": rows}

    async def one(self, result: Result) -> None:
        started = time.monotonic()
        try:
            async with self.session.post(self.args.url, json=self.body()) as resp:
                await resp.read()
                status = resp.status
        except TimeoutError:
            result.failed["timeout"] += 1
            return
        except aiohttp.ClientError:
            result.failed["error"] += 1
            return
        if 200 <= status < 300:
            result.answered += 1
            result.latencies_ms.append((time.monotonic() - started) * 1000)
        else:
            result.failed[str(status)] += 1

    async def phase(self, phase: Phase) -> Result:
        result = Result(phase)
        start = time.monotonic()
        n, offset = 0, 0.0  # when the next request leaves, fixed in advance (open loop)
        while phase.rate > 0 and offset < phase.seconds:
            delay = start + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # --poisson: exponential gaps of the same mean, as independent users send.
            n += 1
            if self.args.poisson:
                offset += self.rng.expovariate(phase.rate)
            else:
                offset = n / phase.rate  # not a running sum: no drift, exact counts
            if len(self.tasks) >= self.args.max_outstanding:
                result.failed["not-sent"] += 1  # the client's own bound: no unbounded growth
                continue
            result.sent += 1
            task = asyncio.create_task(self.one(result))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        rest = start + phase.seconds - time.monotonic()
        if rest > 0:  # a phase lasts its time, even at rate 0 (a quiet spell)
            await asyncio.sleep(rest)
        return result


async def run(args: argparse.Namespace, phases: list[Phase]) -> list[Result]:
    headers = {}
    if args.token_file:
        headers["Authorization"] = f"Bearer {Path(args.token_file).read_text().strip()}"
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=connector
    ) as session:
        load = Load(args, session)
        results = []
        for i, phase in enumerate(phases):
            result = await load.phase(phase)
            results.append(result)
            if sys.stderr.isatty() and not args.json:
                print(f"phase {i + 1}/{len(phases)} sent", file=sys.stderr, flush=True)
        if load.tasks:  # the last answers (each bounded by --timeout)
            await asyncio.gather(*load.tasks)
    return results


def table(results: list[Result]) -> str:
    headers = ["PHASE", "RATE", "SENT", "ANSWERED", "FAILED", "P50", "P99"]
    rows = []
    for i, r in enumerate(results):
        s = r.summary()
        failed = " ".join(f"{k}:{v}" for k, v in s["failed"].items()) or "0"
        rows.append(
            [
                f"{i + 1} ({r.phase.seconds:g}s)",
                f"{r.phase.rate:g}/s",
                s["sent"],
                s["answered"],
                failed,
                "-" if s["p50_ms"] is None else f"{s['p50_ms']:.1f}ms",
                "-" if s["p99_ms"] is None else f"{s['p99_ms']:.1f}ms",
            ]
        )
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("url", help="e.g. http://127.0.0.1:8080/services/spirals/predict")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second (one phase)")
    p.add_argument("--duration", default="30s", help="how long at --rate: 30s, 2m, 500ms")
    p.add_argument("--profile", help='phases DURATION@RATE, e.g. "10s@2,30s@20,20s@2"')
    p.add_argument("--batch", type=int, default=1, help="rows in each request")
    p.add_argument("--token-file", help="a file holding a bearer token for the router")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take")
    p.add_argument("--connections", type=int, default=256, help="open connections at most")
    p.add_argument(
        "--max-outstanding",
        type=int,
        default=10_000,
        help="requests unanswered at most; beyond, a request is counted not-sent",
    )
    p.add_argument("--poisson", action="store_true", help="exponential gaps (same mean rate)")
    p.add_argument("--seed", type=int, default=0, help="for the inputs and --poisson gaps")
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")
    args = p.parse_args()
    try:
        phases = parse_profile(args.profile or f"{args.duration}@{args.rate}")
    except ValueError as e:
        p.error(str(e))
    started = time.time()
    results = asyncio.run(run(args, phases))
    if args.json:
        phases_out = [r.summary() for r in results]
        print(json.dumps({"url": args.url, "started": started, "phases": phases_out}))
    else:
        print(table(results))


if __name__ == "__main__":
    main()
