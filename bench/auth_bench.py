"""The cost of authentication per call: unary RPCs against the daemon in each way a
caller can prove who it is, side by side, from one run.

    .venv/bin/python bench/auth_bench.py                       # about 3 minutes
    .venv/bin/python bench/auth_bench.py --calls 500 --idle 0  # quicker

Every configuration gets a fresh daemon (`python -m schedulerd.daemon`, its own
temporary folder and store, the default tick, a policy with `run_as_root: true` and one
consumer /bench, no agent: submitted jobs stay pending):

- a. loopback TCP, no TLS, no token: the daemon learns the caller's uid from the
     kernel's socket table (/proc/net/tcp), read on every call;
- b. loopback TCP, no TLS, a bearer token: the token (HS256 JWT) verified on every call;
- c. TLS on 127.0.0.1 (a server certificate of a fresh cluster CA, schedulerd.auth.ca)
     and a bearer token;
- d. a Unix socket (`--also-listen unix:PATH`) and a bearer token;
- a+idle. as a, with --idle other loopback TCP connections open on the machine (held by
     this process), WhoAmI only, at most 500 calls: does the uid lookup's cost grow with
     the socket table?
- b+busy. as b (one token caller, WhoAmI only, at most 300 calls), while 3 other threads
     of this process call WhoAmI by local uid without pause: what one caller's lookups
     cost the daemon's other callers.

On each daemon, three unary RPCs, each with 1 and 4 client threads (one channel each):
- grpc.health.v1 Health/Check: no credential is looked at, the floor of a bare gRPC
  call on that transport (it still passes the daemon's call wrapper);
- Admin/WhoAmI: identifies the caller and answers, nothing else: the authentication's
  own cost over the floor;
- Scheduler/SubmitJob: identity, authorization, one durable SQLite commit (WAL,
  synchronous=FULL), an audit record (written in batches every 0.2 s), a loop wake.
The tokens are root's (this process's user), made by CreateToken over loopback; the
WhoAmI column `credential` says how the daemon knew the caller in each configuration.
Per-call latency is measured around each call in its thread; calls/s is the calls over
the wall time from the release of the threads (after their warm-up) to the last answer.
The client threads share this process's GIL and the machine's cores with the daemon.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import pwd
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from _cluster import REPO, free_port, percentile, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from schedulerd.auth.ca import CA_CERT, init_ca, issue_server
from schedulerd.client import Client

POLICY = """
version: 1
run_as_root: true
users: "*"
consumers:
  bench: {share: 1}
"""
CONSUMER = "/bench"
COMMAND = ["sleep", "3600"]
RPCS = ("Health/Check", "WhoAmI", "SubmitJob")


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    tls: bool = False
    token: bool = False
    unix: bool = False
    idle: int = 0
    rpcs: tuple[str, ...] = RPCS
    busy: int = 0  # threads calling WhoAmI by local uid meanwhile (not measured)
    max_calls: int = 0  # a cap on the calls per row (0: --calls)
    threads: tuple[int, ...] = ()  # () : --threads


@dataclass
class Row:
    config: Config
    rpc: str
    threads: int
    wall_s: float
    latencies_ms: list[float]
    credential: str = ""


@dataclass
class Daemon:
    """One daemon process in its own folder; `target` is where the clients call."""

    root: Path
    tls: bool
    unix: bool
    tick_s: float | None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.root / "schedulerd.sock"

    @property
    def target(self) -> str:
        return f"unix:{self.socket_path}" if self.unix else self.address

    @property
    def ca(self) -> Path | None:
        return self.root / "ca" / CA_CERT if self.tls else None

    def start(self) -> None:
        policy = self.root / "policy.yaml"
        policy.write_text(POLICY)
        # SCHEDULERD_PROFILE=FILE: the daemon under cProfile (its event loop's thread),
        # its stats in FILE once it stops (as bench/_nodesim_world.py).
        profile = os.environ.get("SCHEDULERD_PROFILE", "")
        cmd = [
            sys.executable,
            *(("-m", "cProfile", "-o", profile) if profile else ()),
            "-m",
            "schedulerd.daemon",
            "--listen",
            self.address,
            "--db",
            str(self.root / "schedulerd.db"),
            "--policy",
            str(policy),
            "--log-level",
            "INFO",
        ]
        if self.tick_s is not None:
            cmd += ["--tick", str(self.tick_s)]
        if self.tls:
            ca = init_ca(self.root / "ca")
            issued = issue_server(ca, ["127.0.0.1"], self.root / "ca")
            cmd += ["--tls-cert", str(issued.cert_path), "--tls-key", str(issued.key_path)]
            cmd += ["--tls-loopback"]  # loopback is plaintext otherwise
        if self.unix:
            cmd += ["--also-listen", f"unix:{self.socket_path}"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("SCHEDULERD_TOKEN", None)
        env.pop("SCHEDULERD_TOKEN_FILE", None)
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env
        )
        wait_for("the daemon to serve", self._serving)

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(f"the daemon exited; see {self.root / 'daemon.log'}")
        try:
            with self.client("") as c:
                resp = health_pb2_grpc.HealthStub(c.channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def client(self, token: str, target: str = "") -> Client:
        return Client(target or self.target, timeout_s=30, token=token, ca=self.ca)

    def log_problems(self) -> list[str]:
        path = self.root / "daemon.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [ln for ln in lines if " ERROR " in ln or "Traceback" in ln or "INTERNAL" in ln]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _call_of(rpc: str) -> Callable[[Client, int], object]:
    if rpc == "Health/Check":
        req = health_pb2.HealthCheckRequest()
        return lambda c, i: health_pb2_grpc.HealthStub(c.channel).Check(req, timeout=30)
    if rpc == "WhoAmI":
        return lambda c, i: c.whoami()
    return lambda c, i: c.submit(CONSUMER, COMMAND, 1, name=f"b{i}")


def measure(
    daemon: Daemon, token: str, rpc: str, threads: int, calls: int, warmup: int
) -> tuple[float, list[float]]:
    """(wall s, per-call ms) of `calls` calls of `rpc` split over `threads` threads."""
    call = _call_of(rpc)
    clients = [daemon.client(token) for _ in range(threads)]
    share = [calls // threads + (1 if i < calls % threads else 0) for i in range(threads)]
    go = threading.Barrier(threads + 1)
    lat: list[list[float]] = [[] for _ in range(threads)]
    ends = [0.0] * threads
    errors: list[BaseException] = []

    def work(k: int) -> None:
        c = clients[k]
        try:
            for i in range(warmup):
                call(c, i)
        except BaseException as e:
            errors.append(e)
        go.wait()
        if errors:
            return
        try:
            mine = lat[k]
            for i in range(share[k]):
                t0 = time.perf_counter()
                call(c, i)
                mine.append((time.perf_counter() - t0) * 1000)
        except BaseException as e:
            errors.append(e)
        ends[k] = time.perf_counter()

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    for c in clients:
        c.close()
    if errors:
        raise SystemExit(f"{rpc} x{threads}: {errors[0]!r}; see {daemon.root / 'daemon.log'}")
    return max(ends) - start, [x for one in lat for x in one]


def _idle_connections(count: int) -> list[socket.socket]:
    """`count` open, idle loopback TCP connections (2 x count sockets in the table)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * count + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(count)
    held = [listener]
    for _ in range(count):
        c = socket.create_connection(listener.getsockname())
        s, _ = listener.accept()
        held += [c, s]
    return held


def run_config(
    cfg: Config, calls: int, threads: list[int], warmup: int, tick_s: float | None
) -> list[Row]:
    rows: list[Row] = []
    idle = _idle_connections(cfg.idle) if cfg.idle else []
    try:
        with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
            daemon = Daemon(Path(tmp), cfg.tls, cfg.unix, tick_s)
            try:
                daemon.start()
                token = ""
                if cfg.token:
                    # Made by root over loopback TCP (its local uid), used over `target`.
                    with daemon.client("", daemon.address) as boot:
                        token = boot.create_token(os_user(), 3600.0).secret
                with daemon.client(token) as c:
                    me = c.whoami()
                credential = f"{me.credential} ({me.identity})"
                stop = threading.Event()
                busy = [
                    threading.Thread(target=_busy_local, args=(daemon, stop))
                    for _ in range(cfg.busy)
                ]
                for t in busy:
                    t.start()
                n = min(calls, cfg.max_calls) if cfg.max_calls else calls
                try:
                    for rpc in cfg.rpcs:
                        for k in cfg.threads or threads:
                            wall, lat = measure(daemon, token, rpc, k, n, warmup)
                            rows.append(Row(cfg, rpc, k, wall, lat, credential))
                            _progress(rows[-1])
                finally:
                    stop.set()
                    for t in busy:
                        t.join()
            finally:
                daemon.stop()
            problems = daemon.log_problems()
            if problems:
                print(
                    f"{cfg.key}: the daemon's log has {len(problems)} problem lines:",
                    file=sys.stderr,
                )
                for ln in problems[:20]:
                    print("   ", ln, file=sys.stderr)
    finally:
        for s in idle:
            s.close()
    return rows


def _busy_local(daemon: Daemon, stop: threading.Event) -> None:
    with daemon.client("", daemon.address) as c:
        while not stop.is_set():
            c.whoami()


def os_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _progress(r: Row) -> None:
    print(
        f"  {r.config.key:7} {r.rpc:13} x{r.threads}: "
        f"{len(r.latencies_ms) / r.wall_s:,.0f} calls/s",
        file=sys.stderr,
        flush=True,
    )


def _table(rows: list[Row]) -> None:
    print(
        "| RPC | config | credential (WhoAmI) | threads | calls | calls/s "
        "| p50 ms | p99 ms | max ms |"
    )
    print("| --- | --- | --- |" + " ---: |" * 6)
    order = {rpc: i for i, rpc in enumerate(RPCS)}
    for r in sorted(rows, key=lambda r: (order[r.rpc], r.threads)):
        lat = r.latencies_ms
        print(
            f"| {r.rpc} | {r.config.key}. {r.config.label} | {r.credential} | {r.threads} "
            f"| {len(lat):,} | {len(lat) / r.wall_s:,.0f} | {statistics.median(lat):.3f} "
            f"| {percentile(lat, 99):.3f} | {max(lat):.2f} |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1_500, help="calls per row (default 1,500)")
    ap.add_argument("--threads", default="1,4", help="client thread counts (default 1,4)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed calls per thread first")
    ap.add_argument(
        "--idle",
        type=int,
        default=1_000,
        help="idle loopback connections for config a+idle (default 1,000; 0: skip it)",
    )
    ap.add_argument(
        "--configs", default="a,b,c,d,a+idle,b+busy", help="which configurations (default all)"
    )
    ap.add_argument("--tick", type=float, default=None, help="daemon --tick (default: its own)")
    args = ap.parse_args(argv)
    configs = [
        Config("a", "loopback, no TLS, no token"),
        Config("b", "loopback, no TLS, token", token=True),
        Config("c", "TLS on 127.0.0.1, token", tls=True, token=True),
        Config("d", "Unix socket, token", token=True, unix=True),
        Config(
            "a+idle",
            f"as a, {args.idle:,} idle loopback connections",
            idle=args.idle,
            rpcs=("WhoAmI",),
            max_calls=500,
        ),
        Config(
            "b+busy",
            "as b, while 3 other threads call WhoAmI by local uid",
            token=True,
            rpcs=("WhoAmI",),
            busy=3,
            max_calls=300,
            threads=(1,),
        ),
    ]
    wanted = set(args.configs.split(","))
    if not args.idle:
        wanted.discard("a+idle")
    threads = [int(x) for x in args.threads.split(",") if x]
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.calls:,} calls per row after {args.warmup} per thread; daemon tick "
        f"{'default' if args.tick is None else args.tick}; load average before "
        f"{os.getloadavg()[0]:.2f}\n",
        flush=True,
    )
    rows: list[Row] = []
    for cfg in configs:
        if cfg.key in wanted:
            print(f"{cfg.key}. {cfg.label}", file=sys.stderr, flush=True)
            rows += run_config(cfg, args.calls, threads, args.warmup, args.tick)
    _table(rows)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
