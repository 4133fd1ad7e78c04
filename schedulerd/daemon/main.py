"""`schedulerd`: the daemon's command line.

`schedulerd --local-agent` is the one-machine setup of the Quick start: the
daemon plus an agent child process on this machine, using real GPUs when NVML
finds them and otherwise 4 fake ones (the agent says so in its log).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path

from schedulerd.configfile import parse_args_with_config
from schedulerd.daemon.reload import Reloads
from schedulerd.daemon.server import Daemon, DaemonConfig
from schedulerd.hangup import HeldHangup
from schedulerd.helpformat import DefaultsHelpFormatter
from schedulerd.hostport import listen_address
from schedulerd.lockfile import AlreadyLocked
from schedulerd.policy import PolicyError
from schedulerd.sdnotify import Notifier

log = logging.getLogger("schedulerd")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


MIN_TICK_S = 0.01  # an idle loop turning faster only burns a core


def _tick(text: str) -> float:
    value = _positive_float(text)
    if value < MIN_TICK_S:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_TICK_S} s, got {text}")
    return value


# Read when it exists; `--config FILE` names another, `--no-config` reads none.
DEFAULT_CONFIG = Path("/etc/schedulerd/schedulerd.toml")
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over the config file over the defaults (schedulerd/configfile)."""
    parser = build_parser()
    args, sources = parse_args_with_config(parser, argv, DEFAULT_CONFIG)
    args.sources = sources  # a SIGHUP re-reads only what the command line did not set
    # An agent hears the daemon only through its heartbeats' answers, and stops its jobs
    # after half the node timeout without a word: at least two must fit in that lease.
    if args.heartbeat > args.node_timeout / 4:
        # Named at the line of the file that set either, the heartbeat's first.
        hb, nt = f"{args.heartbeat:g} s", f"{args.node_timeout:g} s"
        if ":" in (at := sources["heartbeat"].where):
            what = f"{at}: heartbeat: {hb} is too long for node-timeout {nt}"
        elif ":" in (at := sources["node_timeout"].where):
            what = f"{at}: node-timeout: {nt} is too short for heartbeat {hb}"
        else:
            what = f"heartbeat {hb} is too long for node-timeout {nt}"
        parser.exit(
            2,
            f"schedulerd: {what}: agents stop their jobs after node-timeout/2 without a word "
            f"from the daemon; use a heartbeat of at most node-timeout/4\n",
        )
    return args


def build_parser() -> argparse.ArgumentParser:
    """Every option is a flag and a key of the config file (docs/deploy.md)."""
    p = argparse.ArgumentParser(
        prog="schedulerd",
        description=__doc__.split("\n")[0],
        formatter_class=DefaultsHelpFormatter,
        epilog=f"Every option can be set in the config file ({DEFAULT_CONFIG} by default) "
        "as KEY = VALUE, KEY being the flag without '--'; flags win over the file.",
    )
    p.add_argument("--listen", default="127.0.0.1:50051", help="address:port to serve gRPC on")
    p.add_argument("--db", type=Path, default=Path("var/schedulerd.db"), help="SQLite file")
    p.add_argument(
        "--also-listen",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="another address to serve on, like --listen (e.g. unix:/run/schedulerd.sock; "
        "callers on a Unix socket are known by their token only)",
    )
    p.add_argument("--policy", type=Path, help="policy file (default: last applied, else built-in)")
    p.add_argument(
        "--tick", type=_tick, default=1.0, help="seconds between idle cycles (at least 0.01)"
    )
    p.add_argument(
        "--node-timeout",
        type=_positive_float,
        default=120.0,
        help="seconds of silence before a node is DOWN and its jobs requeued (default 120); "
        "an agent stops its jobs after half of it without hearing the daemon",
    )
    p.add_argument(
        "--heartbeat",
        type=_positive_float,
        default=2.0,
        help="seconds between agent heartbeats; a node missing 2.5 of them is UNREACHABLE",
    )
    p.add_argument(
        "--advertise",
        default="",
        help="HOST:PORT where trial processes reach the daemon (default: the listen address)",
    )
    p.add_argument("--tls-cert", type=Path, help="the daemon's TLS certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="the daemon's TLS private key (PEM)")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        help="the cluster CA: agents on --agent-listen must show a node certificate of it",
    )
    p.add_argument(
        "--agent-listen",
        default="",
        help="address:port for agents, with mTLS (node certificates); default: agents "
        "use --listen with a node token, or as the daemon's user on this machine",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without TLS, --listen's and "
        "--http-listen's (trusted networks only)",
    )
    p.add_argument(
        "--tls-loopback",
        action="store_true",
        help="serve TLS on loopback listeners too (default: plaintext there, where nothing "
        "crosses a network and local users are known by their uid)",
    )
    p.add_argument(
        "--admin",
        action="append",
        default=[],
        metavar="USER",
        help="a cluster admin besides the daemon's own user (repeatable)",
    )
    p.add_argument(
        "--http-listen",
        default="",
        type=listen_address,
        metavar="HOST:PORT",
        help="serve HTTP there: /metrics (Prometheus), /healthz, /readyz (unauthenticated) "
        "and the dashboard /ui/ (token logins); no TLS, so loopback only: another address "
        "is refused unless --insecure, as it sends tokens in clear text (docs/metrics.md; "
        "default: none)",
    )
    p.add_argument("--local-agent", action="store_true", help="also run an agent on this machine")
    p.add_argument(
        "--local-agent-fake-gpus",
        type=int,
        default=4,
        help="fake GPUs for the local agent when NVML finds none (default 4)",
    )
    p.add_argument(
        "--local-router",
        default="",
        metavar="HOST:PORT",
        help="also run schedulerd-router, serving inference services' HTTP there "
        "(docs/serve.md; default: none)",
    )
    p.add_argument(
        "--keep-jobs-on-exit",
        action="store_true",
        help="with --local-agent: on shutdown leave its jobs running, to be adopted at the "
        "next start (default: stop them; they go back to the queue)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="INFO by default; SIGHUP re-reads it from the config file",
    )
    return p


async def run(args: argparse.Namespace, held: HeldHangup | None = None) -> int:
    held = held or HeldHangup()
    config = DaemonConfig(
        listen=args.listen,
        db_path=args.db,
        # Absolute: it names the policy's source in the store, whatever the directory.
        policy_path=None if args.policy is None else args.policy.absolute(),
        tick_s=args.tick,
        node_timeout_s=args.node_timeout,
        heartbeat_s=args.heartbeat,
        advertise=args.advertise,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        agent_listen=args.agent_listen,
        also_listen=tuple(args.also_listen),
        insecure=args.insecure,
        tls_loopback=args.tls_loopback,
        admins=tuple(args.admin),
        http_listen=args.http_listen,
    )
    if args.local_agent and args.tls_cert is not None:
        print(
            "schedulerd: --local-agent is for the one-machine setup on a loopback listener "
            "without TLS; with TLS, run the agent as its own service (docs/deploy.md)",
            file=sys.stderr,
        )
        return 2
    notifier = Notifier()  # systemd's, when it started us (deploy/systemd)
    try:
        daemon = Daemon(config, notifier=notifier)
    except AlreadyLocked as e:
        print(f"schedulerd: cannot start: {e}", file=sys.stderr)
        return 2
    try:
        await daemon.start()
    except PolicyError as e:
        print(f"schedulerd: cannot start: {e}", file=sys.stderr)
        return 2
    agent = _start_local_agent(args, daemon.port) if args.local_agent else None
    router = _start_local_router(args, daemon.port) if args.local_router else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads = Reloads(daemon, notifier, args, build_parser())
    loop.add_signal_handler(signal.SIGHUP, reloads.request)
    if held.take():  # a SIGHUP during the start: reload now that the daemon can
        reloads.request()
    await stop.wait()
    notifier.stopping("stopping: no more scheduling decisions")
    # Orderly (docs/fencing.md): decide nothing more, then let the local agent stop its
    # jobs while the daemon still records their reports (they go back to the queue as
    # "its node was shut down"), then stop serving. Jobs on other agents keep running.
    log.info("stopping: no more scheduling decisions")
    await daemon.stop_deciding()
    if router is not None:
        router.terminate()
        await asyncio.to_thread(router.wait)
    if agent is not None:
        log.info("stopping the local agent and its jobs")
        agent.terminate()
        await asyncio.to_thread(agent.wait)
    await daemon.stop()
    log.info("stopped")
    return 0


def _start_local_agent(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    host = args.listen.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"  # it proves who it is by its uid, which needs loopback
    node = f"{socket.gethostname()}-local"
    cmd = [
        sys.executable,
        # -P: the working directory must not shadow the installed package (a
        # folder named "agent" in it, as a state dir once was, broke the start).
        "-P",
        "-m",
        "agent",
        # Everything it needs is here: not the machine's agent.toml, which is for the
        # agent service of a cluster node.
        "--no-config",
        "--daemon",
        f"{host}:{port}",
        "--node",
        node,
        "--fake-gpus-fallback",
        str(args.local_agent_fake_gpus),
        "--state-dir",
        str(args.db.parent / "agent-state"),
        "--log-level",
        args.log_level,
        # Jobs start from a clean environment (docs/security.md); on this one machine
        # their `python` is the one schedulerd runs with (torch, schedulerd.elastic).
        "--job-path",
        f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        *(["--keep-jobs-on-exit"] if args.keep_jobs_on_exit else []),
    ]
    log.info("starting local agent %s", node)
    # Its own session: a Ctrl-C in the terminal reaches the daemon only, which stops
    # deciding before it stops the agent (otherwise both race: a job could start on an
    # agent that is already stopping).
    return subprocess.Popen(cmd, start_new_session=True)


def _start_local_router(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    """The router of the one-machine setup: root's (or the daemon user's) uid over
    loopback is its credential, as the local agent's."""
    host = args.listen.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    cmd = [
        sys.executable,
        "-P",
        "-m",
        "schedulerd.router",
        "--no-config",
        "--daemon",
        f"{host}:{port}",
        "--listen",
        args.local_router,
        "--log-level",
        args.log_level,
    ]
    log.info("starting the local router on %s", args.local_router)
    return subprocess.Popen(cmd, start_new_session=True)


SWITCH_INTERVAL_S = 0.001


def main(argv: list[str] | None = None) -> None:
    held = HeldHangup().hold()  # first: a reload queued behind the start must not kill it
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The event loop shares the GIL with decide() (a worker thread) and the group
    # writer: by default a thread that wants the GIL may wait up to 5 ms for the holder
    # to yield it, so a call arriving during a cycle could wait that long; 1 ms bounds
    # that wait against a SubmitJob's budget of ~1.25 ms (issue 15; its effect alone was
    # not measured apart from the other changes: docs/group-commit.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    sys.exit(asyncio.run(run(args, held)))


if __name__ == "__main__":
    main()
