"""schedulerd-router: the HTTP front of inference services (docs/router.md).

    schedulerd-router --daemon sched.example.org:50051 --ca /etc/schedulerd/tls/ca.crt \\
        --token-file /etc/schedulerd/router.token --listen 0.0.0.0:8080

Serves /services/NAME/... from the replicas of service NAME, learns where they are from
the daemon's route table, and reports the load it sees so that the daemon scales them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from schedulerd.auth.ca import CertError
from schedulerd.client import CredentialError
from schedulerd.configfile import parse_args_with_config
from schedulerd.router.access import CachedAccess
from schedulerd.router.body import BODY_TIMEOUT_S
from schedulerd.router.link import DaemonAddress, Link
from schedulerd.router.listen import (
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS,
    AcceptErrors,
    CappedSite,
    connection_cap,
    raise_nofile_limit,
    server_options,
)
from schedulerd.router.probe import Prober, probe_session
from schedulerd.router.proxy import SHUTDOWN_S, Proxy, client_session
from schedulerd.router.state import RouterState
from schedulerd.router.tasks import Tasks
from schedulerd.sdnotify import Notifier, loop_wait_s

log = logging.getLogger("schedulerd.router")

# Read when it exists; `--config FILE` names another, `--no-config` reads none.
DEFAULT_CONFIG = Path("/etc/schedulerd/router.toml")
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
MIN_EVERY_S = 0.05  # probes or reports faster than this only burn the CPU
MAX_EVERY_S = 3600.0
MIN_TIMEOUT_S = 0.1
# READY=1 waits this long at most for the first route table: a router that cannot reach
# the daemon yet still serves (503 "no route table yet") and says so in its status.
READY_WAIT_S = 10.0


def _every(text: str) -> float:
    value = float(text)
    if not MIN_EVERY_S <= value <= MAX_EVERY_S:
        raise argparse.ArgumentTypeError(
            f"seconds from {MIN_EVERY_S} to {MAX_EVERY_S:g}, got {text}"
        )
    return value


def _timeout(text: str) -> float:
    value = float(text)
    if not MIN_TIMEOUT_S <= value <= MAX_EVERY_S:
        raise argparse.ArgumentTypeError(
            f"seconds from {MIN_TIMEOUT_S} to {MAX_EVERY_S:g}, got {text}"
        )
    return value


def _bytes(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _host_port(text: str) -> str:
    _, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: use HOST:PORT (e.g. 127.0.0.1:8080)")
    return text


def split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_parser() -> argparse.ArgumentParser:
    """Every option is a flag and a key of the config file (docs/router.md)."""
    p = argparse.ArgumentParser(
        prog="schedulerd-router",
        description="The HTTP router of schedulerd's inference services.",
        epilog=f"Every option can be set in the config file ({DEFAULT_CONFIG} by default) "
        "as KEY = VALUE, KEY being the flag without '--'; flags win over the file.",
    )
    p.add_argument(
        "--daemon", default="127.0.0.1:50051", metavar="HOST:PORT", help="the daemon's gRPC"
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        type=_host_port,
        metavar="HOST:PORT",
        help="where to serve HTTP (default 127.0.0.1:8080)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help="a cluster admin's token with scope router (schedctl token create --user root "
        "--scope router), in a file only its owner reads; none: on the daemon's machine, "
        "as root or the daemon's user",
    )
    p.add_argument("--ca", type=Path, help="the cluster CA: TLS to the daemon, checked by it")
    p.add_argument("--name", default=None, help="this router's name in the daemon's logs")
    p.add_argument(
        "--report-every",
        type=_every,
        default=1.0,
        metavar="SECONDS",
        help="seconds between load reports to the daemon (default 1)",
    )
    p.add_argument(
        "--probe-every",
        type=_every,
        default=0.5,
        metavar="SECONDS",
        help="seconds between readiness probes of each replica (default 0.5)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=_bytes,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="a larger request body is refused with 413 (default 64 MiB)",
    )
    p.add_argument(
        "--header-timeout",
        type=_timeout,
        default=HEADER_TIMEOUT_S,
        metavar="SECONDS",
        help="a connection whose request head is not all in within this time (from its "
        "start, or the end of its previous answer) is closed (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=_timeout,
        default=BODY_TIMEOUT_S,
        metavar="SECONDS",
        help="a body of at most 1 MiB with a Content-Length not all in within this time "
        "is refused with 408 (default 30); larger ones have the service's request timeout",
    )
    p.add_argument(
        "--max-connections",
        type=_bytes,
        default=MAX_CONNECTIONS,
        metavar="N",
        help="client connections open at once; more get 503 and are closed (default "
        "10000, lowered to what the process's file limit allows)",
    )
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags over the config file over the defaults (schedulerd/configfile)."""
    args, _ = parse_args_with_config(build_parser(), argv, DEFAULT_CONFIG)
    if args.name is None:
        args.name = socket.gethostname()
    return args


async def run(args: argparse.Namespace, notifier: Notifier) -> int:
    try:
        daemon = DaemonAddress.of(args.daemon, args.token_file, args.ca)
    except (CredentialError, CertError) as e:
        log.error("cannot start: %s", e)
        return 2
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrors())
    nofile = raise_nofile_limit()
    max_connections = connection_cap(args.max_connections, nofile)
    if max_connections < args.max_connections:
        log.warning(
            "--max-connections %d lowered to %d: the file limit is %d",
            args.max_connections,
            max_connections,
            nofile,
        )
    state = RouterState()
    link = Link(daemon, state, args.name, args.report_every)
    session, probes = client_session(), probe_session()
    access = CachedAccess(link.check_access)
    proxy = Proxy(state, access, session, args.max_body_bytes, args.body_timeout)
    runner = web.AppRunner(
        proxy.app(),
        # A caller that leaves cancels its request to the replica, and a stop cuts the
        # requests in flight after SHUTDOWN_S rather than waiting for long generations.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_S,
        access_log=logging.getLogger("aiohttp.access") if args.log_level == "DEBUG" else None,
        **server_options(args.header_timeout),
    )
    await runner.setup()
    host, port = split_host_port(args.listen)
    try:
        await CappedSite(runner, host, port, max_connections).start()
    except OSError as e:
        log.error("cannot listen on %s: %s", args.listen, e)
        await runner.cleanup()
        return 2
    log.info(
        "serving HTTP on %s (at most %d connections); daemon %s; router %r",
        args.listen,
        max_connections,
        args.daemon,
        args.name,
    )
    tasks = Tasks()
    tasks.start(link.watch_routes(), "routes")
    tasks.start(link.report_load(), "reports")
    tasks.start(Prober(state, probes, args.probe_every).run(), "probes")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks.start(_ready_then_watch(state, link, notifier, stop), "notify")
    await stop.wait()
    notifier.stopping("stopping: requests in flight are cut")
    log.info("stopping")
    state.holds.stop()  # held requests get their 503 now
    await runner.cleanup()  # no new connections; those in flight are cut after SHUTDOWN_S
    await tasks.cancel_all()
    await session.close()
    await probes.close()
    await link.close()
    log.info("stopped")
    return 0


async def _ready_then_watch(
    state: RouterState, link: Link, notifier: Notifier, stop: asyncio.Event
) -> None:
    """READY=1 once a table is in (or after READY_WAIT_S without one), then the
    watchdog's pings from the event loop and a status line."""
    try:
        await asyncio.wait_for(state.first_table.wait(), READY_WAIT_S)
    except TimeoutError:
        log.warning("no route table from the daemon after %.0f s; serving 503s", READY_WAIT_S)
    notifier.ready(_status(state, link))
    while not stop.is_set():
        notifier.watchdog()
        notifier.status(_status(state, link))
        await asyncio.sleep(loop_wait_s(1.0, notifier))


def _status(state: RouterState, link: Link) -> str:
    table = state.table
    if table.version is None:
        return "no route table yet: the daemon does not answer"
    daemon = "connected" if link.connected else "daemon unreachable, last table kept"
    return f"{len(table.routes())} services, table version {table.version}, {daemon}"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    notifier = Notifier()  # systemd's, when it started us (deploy/systemd)
    sys.exit(asyncio.run(run(args, notifier)))


if __name__ == "__main__":
    main()
