"""nodesim: hundreds of fake nodes for the real daemon, in one process (as KWOK is for
Kubernetes). Each node opens its own AgentService stream with its own node certificate,
registers N fake GPUs and plays its job parts without starting a process: start, run for
a drawn time (or for ever), exit; obey stops, releases and grows, reporting exactly as
agent/link.py does (bench/_nodesim_node.py). docs/nodesim.md says how to use it.

    .venv/bin/python bench/nodesim.py --daemon 127.0.0.1:50052 --ca /root/schedulerd-ca \\
        --nodes 500 --gpus 8 --run exp:600 --status /tmp/nodesim.json

One asyncio event loop, one grpc.aio channel per node (each node is its own mTLS peer, as
it would be in a real cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _nodesim_node import Behaviour, Counters, SimNode

from schedulerd.auth.ca import issue_node, load_ca

log = logging.getLogger("nodesim")
T = TypeVar("T")


# --- run-time distributions -----------------------------------------------------------------


def parse_run(text: str) -> Callable[[random.Random], float]:
    """forever | fixed:S | uniform:A:B | exp:MEAN | lognormal:MEDIAN:SIGMA (seconds)."""
    kind, _, rest = text.partition(":")
    args = [float(a) for a in rest.split(":")] if rest else []
    if kind == "forever" and not args:
        return lambda rng: math.inf
    if kind == "fixed" and len(args) == 1:
        return lambda rng: args[0]
    if kind == "uniform" and len(args) == 2:
        return lambda rng: rng.uniform(args[0], args[1])
    if kind == "exp" and len(args) == 1:
        return lambda rng: rng.expovariate(1 / args[0])
    if kind == "lognormal" and len(args) == 2:
        return lambda rng: rng.lognormvariate(math.log(args[0]), args[1])
    raise ValueError(
        f"run time {text!r}: forever, fixed:S, uniform:A:B, exp:MEAN or lognormal:MEDIAN:SIGMA"
    )


# --- credentials ----------------------------------------------------------------------------


def node_credentials(
    names: Sequence[str], certs: Path, ca_dir: Path | None
) -> dict[str, grpc.ChannelCredentials]:
    """Each node's mTLS credentials from certs/NODE.crt and .key (issued there from the CA
    in ca_dir when missing, as `schedctl ca issue-node` does) and certs/ca.crt (or
    ca_dir/ca.crt)."""
    ca = load_ca(ca_dir) if ca_dir is not None else None
    roots_path = certs / "ca.crt"
    if not roots_path.exists() and ca_dir is not None:
        roots_path = ca_dir / "ca.crt"
    roots = roots_path.read_bytes()
    out = {}
    for name in names:
        crt, key = certs / f"{name}.crt", certs / f"{name}.key"
        if not crt.exists() or not key.exists():
            if ca is None:
                raise SystemExit(f"no certificate {crt}: give --ca to issue them")
            issue_node(ca, name, certs)
        out[name] = grpc.ssl_channel_credentials(
            roots, private_key=key.read_bytes(), certificate_chain=crt.read_bytes()
        )
    return out


# --- the fleet ------------------------------------------------------------------------------


class Fleet:
    """Many SimNodes on the running event loop."""

    def __init__(
        self,
        target: str,
        names: Sequence[str],
        gpus: int,
        behaviour: Behaviour,
        credentials: dict[str, grpc.ChannelCredentials] | None = None,
        *,
        pool: str = "",
    ) -> None:
        self.counters = Counters()
        self.started = time.monotonic()
        self.nodes = {
            name: SimNode(
                name,
                gpus,
                target,
                None if credentials is None else credentials[name],
                behaviour,
                self.counters,
                pool=pool,
            )
            for name in names
        }

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()

    async def close(self) -> None:
        await asyncio.gather(*(n.close() for n in self.nodes.values()))

    def power_off(self, name: str) -> None:
        self.nodes[name].power_off()

    def registered(self) -> int:
        return sum(1 for n in self.nodes.values() if n.registered)

    def status(self) -> dict[str, Any]:
        c = self.counters
        running = sum(1 for n in self.nodes.values() for p in n.parts.values() if not p.ended)
        return {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "nodes": len(self.nodes),
            "registered": self.registered(),
            "running_parts": running,
            "busy_gpus": sum(c.busy_by_consumer.values()),
            "busy_by_consumer": dict(sorted(c.busy_by_consumer.items())),
            "gpu_seconds": round(c.gpu_seconds_now(), 3),
            "registers": c.registers,
            "sessions_lost": c.sessions_lost,
            "starts": c.starts,
            "exits": c.exits,
            "stops": c.stops,
            "releases": c.releases,
            "grows": c.grows,
            "refused": c.refused,
            "stale": c.stale,
            "reports": c.reports,
            "repeats": c.repeats,
            "heartbeats": c.heartbeats,
        }

    def double_booked(self) -> list[str]:
        """(node, GPU) held by two live parts: impossible by construction (a start on a
        held GPU is refused and counted), kept as a check on the simulator itself."""
        bad = []
        for node in self.nodes.values():
            seen: dict[int, tuple[int, int]] = {}
            for part in node.parts.values():
                if part.ended:
                    continue
                for g in part.live:
                    if g in seen:
                        bad.append(f"{node.name}/{g}: {seen[g]} and {part.key}")
                    seen[g] = part.key
        return bad


class FleetThread:
    """A Fleet on its own event loop in a background thread, for a caller that is not
    async (tests, bench drivers): `call` runs a function on the loop and returns its
    result."""

    def __init__(self, make: Callable[[], Fleet]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nodesim", daemon=True)
        self._thread.start()
        self.fleet: Fleet = self.run(self._make(make))
        self.call(self.fleet.start)

    @staticmethod
    async def _make(make: Callable[[], Fleet]) -> Fleet:
        return make()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout_s)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        async def wrapped() -> T:
            return fn(*args)

        return self.run(wrapped())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.fleet.close(), timeout_s=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# --- the command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nodesim", description=__doc__.split("\n")[0] if __doc__ else ""
    )
    p.add_argument("--daemon", required=True, help="the daemon's agent listener, HOST:PORT")
    p.add_argument("--certs", type=Path, help="folder of NODE.crt/NODE.key (and ca.crt)")
    p.add_argument("--ca", type=Path, help="the CA folder (ca.crt, ca.key): issue missing certs")
    p.add_argument("--insecure", action="store_true", help="no TLS (a daemon's loopback listener)")
    p.add_argument("--nodes", type=int, default=64)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--prefix", default="sim", help="node names: PREFIX-0000, PREFIX-0001, ...")
    p.add_argument("--pool", default="")
    p.add_argument(
        "--run",
        default="forever",
        help="run time of a job whose env has no NODESIM_RUN_S: forever, fixed:S, "
        "uniform:A:B, exp:MEAN, lognormal:MEDIAN:SIGMA",
    )
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of jobs exiting non-zero")
    p.add_argument("--fail-code", type=int, default=1)
    p.add_argument("--start-delay", type=float, default=0.0, help="s from StartJob to RUNNING")
    p.add_argument("--stop-delay", type=float, default=0.0, help="s from StopJob to exit")
    p.add_argument("--release-delay", type=float, default=0.0, help="s a released worker takes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--status", type=Path, help="write the fleet's status (JSON) here")
    p.add_argument("--status-every", type=float, default=0.2)
    p.add_argument("--profile", type=Path, help="cProfile the simulator into this file")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    if not args.insecure and args.certs is None and args.ca is None:
        p.error("give --certs and/or --ca (node certificates), or --insecure")
    return args


def node_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(count)]


async def _main(args: argparse.Namespace) -> int:
    names = node_names(args.prefix, args.nodes)
    creds = None
    if not args.insecure:
        certs = args.certs or args.ca / "nodes"
        certs.mkdir(parents=True, exist_ok=True)
        creds = node_credentials(names, certs, args.ca)
    behaviour = Behaviour(
        draw_run=parse_run(args.run),
        fail_rate=args.fail_rate,
        fail_code=args.fail_code,
        start_delay_s=args.start_delay,
        stop_delay_s=args.stop_delay,
        release_delay_s=args.release_delay,
        seed=args.seed,
    )
    fleet = Fleet(args.daemon, names, args.gpus, behaviour, creds, pool=args.pool)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    fleet.start()
    while not done.is_set():
        if args.status is not None:
            _write_json(args.status, fleet.status())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), args.status_every)
    await fleet.close()
    if args.status is not None:
        _write_json(args.status, fleet.status())
    print(json.dumps(fleet.status()))
    return 1 if fleet.counters.refused else 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.profile is None:
        return asyncio.run(_main(args))
    prof = cProfile.Profile()
    try:
        return prof.runcall(asyncio.run, _main(args))
    finally:
        prof.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(main())
