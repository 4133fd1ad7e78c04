"""schedulerd-agent: the node agent's command line.

    schedulerd-agent --daemon 10.0.0.1:50051 --pool a100
    schedulerd-agent --node n1 --fake-gpus 4        # no GPU here: 4 clearly labelled fakes

Several agents can share one machine under different --node names: each gets its own state
directory, <--state-dir, default ./var/agent>/<node>, holding the job logs and default working
directories.

Each job part runs in its own cgroup (docs/agent.md), and what the agent runs is kept on disk
in its state directory: a restarted agent adopts the parts that still run and reports those
that ended meanwhile, with their exit codes (kept by each worker's shim).

Shutdown on SIGTERM/SIGINT, in order (docs/fencing.md): refuse new starts and tell the daemon
that nothing new should land here; then, by default, stop the jobs (SIGTERM, SIGKILL of their
cgroups after --shutdown-grace) and report them as stopped by the node, so that the daemon puts
them back in the queue rather than failing them; end the stream and exit 0.
--keep-jobs-on-exit leaves them running instead, to be adopted by the next agent (an upgrade
of the agent without stopping its jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import __version__
from agent.cgroups import KINDS, ContainmentUnavailable, choose_containment
from agent.credentials import load as load_credentials
from agent.gpus import NoGpusFound, choose_backend
from agent.jobenv import DEFAULT_JOB_PATH
from agent.link import Identity, Link
from agent.metrics import AgentMetrics, serve
from agent.runner import Runner
from agent.vouch import DEFAULT_SOCKET as DEFAULT_VOUCH_SOCKET
from agent.vouch import serve as serve_vouching
from schedulerd.configfile import ConfigError, Source, parse_args_with_config, read_config
from schedulerd.core.model import DEFAULT_POOL
from schedulerd.gputype import node_gpu_type
from schedulerd.hangup import HeldHangup
from schedulerd.hostport import listen_address, split_host_port
from schedulerd.lockfile import AlreadyLocked, hold
from schedulerd.sdnotify import Notifier, loop_wait_s

log = logging.getLogger("agent")

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # it names a directory too


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


# Read when it exists; `--config FILE` names another, `--no-config` reads none.
DEFAULT_CONFIG = Path("/etc/schedulerd/agent.toml")


def _node_name(text: str) -> str:
    if not _NODE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a node name is letters, digits, '.', '_' and '-', starting with a "
            "letter or digit"
        )
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags over the config file over the defaults (schedulerd/configfile)."""
    args, sources = parse_args_with_config(build_parser(), argv, DEFAULT_CONFIG)
    args.sources = sources  # a SIGHUP re-reads only what the command line did not set
    if args.node is None:
        try:
            args.node = _node_name(socket.gethostname())
        except argparse.ArgumentTypeError as e:
            raise SystemExit(f"schedulerd-agent: set node; the host name: {e}") from None
    return args


def _reloader(args: argparse.Namespace, notifier: Notifier) -> Callable[[], None]:
    """SIGHUP (`systemctl reload schedulerd-agent`): the log level of the config file.
    The rest of the agent's settings take effect at its next start, which its jobs
    survive (deploy/systemd)."""

    def reload() -> None:
        notifier.reloading()
        try:
            if args.config_path is None or args.sources.get("log_level") == Source("command line"):
                log.info("SIGHUP: no config file to re-read the log level from")
                return
            found = read_config(args.config_path, build_parser())
            level = found["log_level"][0] if "log_level" in found else "INFO"
            logging.getLogger().setLevel(level)
            log.info("SIGHUP: log level %s; other settings take effect at the next start", level)
        except ConfigError as e:
            log.error("SIGHUP: nothing changed; the config file has errors:\n%s", e)
        finally:
            notifier.ready()

    return reload


def build_parser() -> argparse.ArgumentParser:
    """Every option is a flag and a key of the config file (docs/deploy.md)."""
    p = argparse.ArgumentParser(
        prog="schedulerd-agent",
        description="The schedulerd agent of one GPU node.",
        epilog=f"Every option can be set in the config file ({DEFAULT_CONFIG} by default) "
        "as KEY = VALUE, KEY being the flag without '--'; flags win over the file.",
    )
    p.add_argument("--daemon", default="127.0.0.1:50051", metavar="HOST:PORT")
    p.add_argument(
        "--node", default=None, type=_node_name, metavar="NAME", help="default: the hostname"
    )
    p.add_argument(
        "--pool",
        default=None,
        type=_node_name,
        metavar="NAME",
        help="the pool this node's GPUs belong to (docs/pools.md); default: their type as "
        "NVML names it (h100, a100), or 'default' for fake GPUs",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="HOST",
        help="where workers on other nodes reach this node (default: the local address "
        "that reaches the daemon)",
    )
    fake = p.add_mutually_exclusive_group()
    fake.add_argument(
        "--fake-gpus",
        type=_non_negative_int,
        metavar="N",
        help="use N fake GPUs and no NVIDIA hardware at all",
    )
    fake.add_argument(
        "--fake-gpus-fallback",
        type=_non_negative_int,
        metavar="N",
        help="use N fake GPUs if NVML finds none",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("var/agent"),
        help="the agent's files go in STATE_DIR/NODE (default: ./var/agent)",
    )
    p.add_argument(
        "--keep-jobs-on-exit",
        action="store_true",
        help="leave jobs running when the agent is stopped, for the next agent to adopt "
        "(default: stop them; they go back to the queue)",
    )
    p.add_argument(
        "--lock-dir",
        type=Path,
        default=Path("/run/schedulerd"),
        help="where the machine-wide lock of each node name lives: one agent per node "
        "(default: /run/schedulerd)",
    )
    p.add_argument(
        "--containment",
        choices=KINDS,
        default="auto",
        help="how job processes are held: cgroup2 (cgroup.kill), cgroup1 (the freezer), or "
        "pgroup (process groups: a process that calls setsid escapes); auto: the best "
        "this machine allows, with a warning when that is pgroup",
    )
    p.add_argument(
        "--shutdown-grace",
        type=_non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="on agent shutdown, SIGKILL jobs this long after SIGTERM (default: 10)",
    )
    p.add_argument(
        "--job-path",
        default=DEFAULT_JOB_PATH,
        metavar="PATH",
        help="the PATH a job's environment starts with; nothing else of the agent's "
        f"environment reaches a job (default: {DEFAULT_JOB_PATH})",
    )
    tls = p.add_argument_group("credentials (docs/security.md)")
    tls.add_argument(
        "--auth-socket",
        default=str(DEFAULT_VOUCH_SOCKET),
        metavar="PATH",
        help="the Unix socket where this node's users get a credential vouched by this agent "
        f"(default: {DEFAULT_VOUCH_SOCKET}; empty: none)",
    )
    tls.add_argument("--tls-ca", type=Path, help="the cluster CA: the daemon's TLS is checked")
    tls.add_argument("--tls-cert", type=Path, help="this node's certificate (mTLS)")
    tls.add_argument("--tls-key", type=Path, help="this node's private key")
    tls.add_argument(
        "--token-file",
        type=Path,
        help="a node token (schedctl token create --node NAME), in a file only its owner reads",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="INFO by default; SIGHUP re-reads it from the config file",
    )
    p.add_argument(
        "--metrics-listen",
        default="",
        type=listen_address,
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus) and /healthz there; unauthenticated, so loopback "
        "or a management network only (docs/metrics.md; default: none)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    held = HeldHangup().hold()  # first: a SIGHUP before the handler must not kill it
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s",
    )
    # --log-level DEBUG is for the agent; grpc's own debug lines (cancelled request
    # iterators on every reconnect) would bury it.
    logging.getLogger("grpc").setLevel(max(logging.INFO, logging.getLevelName(args.log_level)))
    try:
        backend, gpus = choose_backend(args.fake_gpus, args.fake_gpus_fallback, args.node)
    except NoGpusFound as e:
        log.error("%s", e)
        return 2
    state_dir: Path = args.state_dir / args.node
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        # Per state dir, and per node on this machine: a second agent for the node would
        # adopt the same parts, or kill the first one's jobs as orphans of its cgroups.
        hold(state_dir / "agent.lock", f"the state dir {state_dir}")
        hold(args.lock_dir / f"agent-{args.node}.lock", f"node {args.node} on this machine")
    except AlreadyLocked as e:
        log.error("%s: is another agent running for node %r?", e, args.node)
        return 2
    try:
        containment = choose_containment(args.containment, args.node)
    except ContainmentUnavailable as e:
        log.error("--containment %s: %s", args.containment, e)
        return 2
    runner = Runner(
        state_dir.resolve(),
        args.node,
        gpu_indices=[g.index for g in gpus],
        containment=containment,
        job_path=args.job_path,
    )
    adopted = runner.adopt()  # before the first Register, which lists them
    if adopted:
        running = sum(1 for r in adopted if not r.phase.ended)
        log.info(
            "adopted %d running job parts; %d ended while no agent ran",
            running,
            len(adopted) - running,
        )
    pool = args.pool or node_gpu_type([g.model for g in gpus]) or DEFAULT_POOL
    identity = Identity(
        node=args.node,
        pool=pool,
        gpus=tuple(gpus),
        fake_gpus=backend.is_fake,
        hostname=socket.gethostname(),
        agent_version=__version__,
        address=args.address or _local_address(args.daemon),
    )
    if not args.address and identity.address.startswith("127."):
        log.info(
            "this node is known as %s, as it reaches the daemon over loopback: the daemon "
            "will not make it rank 0 of a job on several nodes if another can be reached, "
            "but set address (its cluster address) if jobs span it and other machines",
            identity.address,
        )
    log.info(
        "agent %s: node %r, pool %r, %d %s GPUs, state in %s, daemon %s",
        __version__,
        args.node,
        pool,
        len(gpus),
        backend.name,
        state_dir,
        args.daemon,
    )
    credentials = load_credentials(args.tls_ca, args.tls_cert, args.tls_key, args.token_file)
    link = Link(args.daemon, identity, runner, state_dir=state_dir, credentials=credentials)
    vouching = Path(args.auth_socket) if args.auth_socket else None
    notifier = Notifier()  # systemd's, when it started us (deploy/systemd)
    metrics = None
    if args.metrics_listen:
        metrics = AgentMetrics(args.node, backend, [g.index for g in gpus])
        link.on_send = metrics.count_sent
        try:
            serve(metrics, *split_host_port(args.metrics_listen))
        except OSError as e:
            log.error("cannot serve metrics on %s: %s", args.metrics_listen, e)
            return 2
    link.on_poll = _fed(notifier, link, runner, len(gpus), metrics)
    link.backstop_s = loop_wait_s(link.backstop_s, notifier)  # each look feeds the watchdog
    return asyncio.run(
        _serve(
            link,
            runner,
            args.keep_jobs_on_exit,
            args.shutdown_grace,
            vouching,
            notifier,
            _reloader(args, notifier),
            held,
        )
    )


def _fed(
    notifier: Notifier, link: Link, runner: Runner, gpus: int, metrics: AgentMetrics | None = None
) -> Callable[[], None]:
    """What each look at the jobs tells systemd: alive (WATCHDOG) and a STATUS line;
    and the metrics, their numbers."""

    def on_poll() -> None:
        notifier.watchdog()
        parts, busy = runner.summary()
        if metrics is not None:
            metrics.publish(parts, busy, link.connected)
        where = "connected to" if link.connected else "waiting for"
        notifier.status(
            f"{where} the daemon at {link.target}; {parts} job parts running on "
            f"{busy} of {gpus} GPUs"
        )

    return on_poll


async def _serve(
    link: Link,
    runner: Runner,
    keep_jobs: bool,
    grace: float,
    vouching: Path | None,
    notifier: Notifier,
    reload: Callable[[], None],
    held: HeldHangup,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s: already shutting down", sig.name)
        else:
            log.info("%s: shutting down", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, reload)  # not its default: that would kill it

    link_task = asyncio.create_task(link.run())
    stop_task = asyncio.create_task(stop.wait())
    vouch_task = (
        asyncio.create_task(serve_vouching(vouching, link.identity.node, lambda: link.vouch_key))
        if vouching is not None
        else None
    )
    # Its jobs are adopted and it asks the daemon for work: started, as far as systemd
    # is concerned, whether or not the daemon answers yet (the STATUS line says).
    notifier.ready(f"waiting for the daemon at {link.target}")
    if held.take():  # after READY: a reload's own READY must not come first
        reload()
    await asyncio.wait({link_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    stop_task.cancel()
    if link_task.done():  # run() only returns on request; this is a bug, let it show
        link_task.result()
        return 1

    # First refuse new work, and say so, so that the daemon places nothing more here.
    notifier.stopping("stopping" + (", leaving its jobs running" if keep_jobs else ""))
    if vouch_task is not None:
        vouch_task.cancel()
    runner.stopping = True
    link.announce_shutdown()
    if keep_jobs:
        if runner.any_running():
            log.warning("leaving the running jobs alone for the next agent (--keep-jobs-on-exit)")
    elif runner.any_running():
        runner.stop_all(grace, "the agent is shutting down", by_node=True)
        # The link stays up meanwhile, so the EXITED reports reach the daemon if it is there.
        deadline = loop.time() + grace + 5.0
        while runner.any_running() and loop.time() < deadline:
            link.poll_once()
            await asyncio.sleep(0.05)
    link.request_stop()
    try:
        await asyncio.wait_for(link_task, 3.0)  # the daemon ends its side, or we cancel
    except TimeoutError:
        log.info("the daemon did not close the stream; closed it ourselves")
    log.info("agent stopped")
    return 0


def _local_address(daemon: str) -> str:
    """The address this machine uses to reach the daemon: peers of this node's
    workers most likely reach it there too. A UDP connect sends nothing."""
    host = daemon.rsplit(":", 1)[0].strip("[]")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


if __name__ == "__main__":
    sys.exit(main())
