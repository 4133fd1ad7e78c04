"""Inference services end to end (docs/serve.md): a real daemon, agent and router, replicas
that are real HTTP servers, requests over real sockets. Scaling on load and back with
draining, scale to zero and back, access with tokens, a daemon restart and a router
restart. (Lending to elastic training and rolling updates: test_e2e_serve_lending.py.)"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster, free_port, wait_for

from schedulerd.api.v1 import serving_pb2 as pb

POLICY = """
version: 1
users: "*"
consumers:
  web:
    owned: 4
    share: 1
    grace: 10s
    users: [root, alice]
  other: {share: 1, users: [bob]}
"""

# A replica: answers GET after DELAY s with "TAG REPLICA"; /healthz at once. HTTP/1.0
# (one request a connection) so that a SIGTERM ends it as soon as the requests in
# flight are answered; it joins their threads before it exits.
SERVER = r"""
import http.server, os, signal, sys, threading, time
DELAY = float(sys.argv[1]); TAG = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/healthz":
            time.sleep(DELAY)
        body = f"{TAG} {os.environ['SCHEDULERD_REPLICA']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["SCHEDULERD_PORT"])), H)
srv.daemon_threads = False
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
print("serving", flush=True)
srv.serve_forever()
srv.server_close()
print("drained", flush=True)
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, POLICY)
    try:
        c.start_daemon()
        # A node name of its own: agents' cgroups are named by node, and another test's
        # cleanup of "n1" must not kill these replicas.
        c.start_agent(f"serve-{os.getpid()}", 4)
        c.wait_nodes_up(1)
        yield c
    finally:
        c.stop()


class Router:
    def __init__(self, cluster: Cluster) -> None:
        self.port = free_port()
        self.log = open(cluster.root / "router.log", "ab")  # noqa: SIM115
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "schedulerd.router",
                "--daemon",
                self.cluster.address,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--no-config",
                "--report-every",
                "0.5",
                "--probe-every",
                "0.2",
                "--log-level",
                "DEBUG",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for("the router", lambda: self.status("/healthz")[0] == 200, timeout_s=30)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def status(
        self, path: str, token: str = "", timeout_s: float = 60.0
    ) -> tuple[int, str, dict[str, str]]:
        """(status, body, headers); 0 and the error for a connection that failed."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace"), dict(resp.getheaders())
        except OSError as e:
            return 0, repr(e), {}
        finally:
            conn.close()


@contextlib.contextmanager
def router_for(cluster: Cluster) -> Iterator[Router]:
    r = Router(cluster)
    try:
        r.start()
        yield r
    finally:
        r.stop()
        r.log.close()


class Load:
    """`clients` threads, each sending the next GET as soon as the last is answered."""

    def __init__(self, router: Router, path: str, clients: int) -> None:
        self.router, self.path = router, path
        self.results: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            status, body, _ = self.router.status(self.path)
            self.results[status] += 1
            if status != 200:
                self.errors.append(f"{status}: {body[:200]}")

    def stop(self) -> Counter[int]:
        self._stop.set()
        for t in self._threads:
            t.join(90)
        return self.results


def spec(name: str, delay_s: float = 0.15, tag: str = "v1", **kw: object) -> pb.ServiceSpec:
    return pb.ServiceSpec(
        name=name,
        consumer="/web",
        command=[sys.executable, "-c", SERVER, str(delay_s), tag],
        readiness_path="/healthz",
        **kw,  # type: ignore[arg-type]
    )


def ready(cluster: Cluster, name: str) -> int:
    return cluster.client.get_service(name).ready_replicas


def history(cluster: Cluster, name: str) -> str:
    got = cluster.client.get_service(name)
    return "\n".join(
        f"{e.kind}: {e.from_replicas}->{e.to_replicas} {e.message}" for e in got.history
    )


def test_a_load_step_scales_to_max_and_back_to_min_with_draining(cluster: Cluster) -> None:
    cluster.client.create_service(
        spec(
            "step",
            min_replicas=1,
            max_replicas=4,
            target_in_flight=2,
            window_s=3,
            scale_down_delay_s=4,
            public=True,
        )
    )
    with router_for(cluster) as router:
        wait_for("one ready replica", lambda: ready(cluster, "step") == 1, timeout_s=60)
        assert router.status("/services/step/hello")[0] == 200
        load = Load(router, "/services/step/x", clients=8)  # ~8 in flight: 4 replicas
        try:
            wait_for(
                "4 ready replicas",
                lambda: ready(cluster, "step") == 4,
                timeout_s=90,
                every_s=0.5,
            )
            time.sleep(2)  # requests spread over all four
        finally:
            high = load.stop()
        assert set(high) == {200}, (high, load.errors[:5], history(cluster, "step"))
        # Light load while it scales down: drained replicas finish what they have.
        light = Load(router, "/services/step/y", clients=1)
        try:
            wait_for(
                "back to one replica",
                lambda: len(cluster.client.get_service("step").replicas) == 1,
                timeout_s=60,
                every_s=0.5,
            )
        finally:
            low = light.stop()
        assert set(low) == {200}, (low, light.errors[:5])
    text = history(cluster, "step")
    assert "scale-up: 1->4" in text or "scale-up: 1->" in text, text
    assert "scale-down" in text and "drain" in text, text
    assert "drained: no request in flight" in text, text
    svc = cluster.client.get_service("step")
    assert svc.desired_replicas == 1 and svc.replicas[0].state == pb.REPLICA_READY


def test_scale_to_zero_and_the_first_request_waits_for_a_replica(cluster: Cluster) -> None:
    cluster.client.create_service(
        spec(
            "lazy",
            min_replicas=1,
            max_replicas=2,
            scale_to_zero=True,
            scale_down_delay_s=2,
            window_s=2,
            public=True,
            queue_timeout_s=60,
        )
    )
    with router_for(cluster) as router:
        wait_for("one ready replica", lambda: ready(cluster, "lazy") == 1, timeout_s=60)
        assert router.status("/services/lazy/a")[0] == 200
        wait_for(
            "no replica",
            lambda: not cluster.client.get_service("lazy").replicas,
            timeout_s=60,
            every_s=0.5,
        )
        started = time.monotonic()
        status, body, _ = router.status("/services/lazy/b")
        waited = time.monotonic() - started
        assert status == 200 and body.startswith("v1"), (status, body)
    text = history(cluster, "lazy")
    assert "scale-to-zero: 1->0" in text and "wake: 0->1" in text, text
    print(f"the first request after idle waited {waited:.1f} s")


def test_access_needs_a_token_of_a_user_of_the_consumer(cluster: Cluster) -> None:
    cluster.client.create_service(spec("private", min_replicas=1, max_replicas=1))
    cluster.client.create_service(spec("open", min_replicas=1, max_replicas=1, public=True))
    alice = cluster.client.create_token("alice", 3600, ["invoke"]).secret
    bob = cluster.client.create_token("bob", 3600, ["invoke"]).secret
    alice_read = cluster.client.create_token("alice", 3600, ["read"]).secret
    with router_for(cluster) as router:
        wait_for("replicas", lambda: ready(cluster, "private") + ready(cluster, "open") == 2)
        status, _, headers = router.status("/services/private/x")
        assert status == 401 and "Bearer" in headers.get("WWW-Authenticate", ""), status
        assert router.status("/services/private/x", token="not-a-token")[0] == 401
        assert router.status("/services/private/x", token=bob)[0] == 403  # not /web's user
        assert router.status("/services/private/x", token=alice_read)[0] == 403  # scope
        status, body, _ = router.status("/services/private/x", token=alice)
        assert status == 200 and body.startswith("v1"), (status, body)
        assert router.status("/services/open/x")[0] == 200
        assert router.status("/services/nothing/x")[0] == 404


def test_services_survive_a_daemon_restart_and_the_router_picks_up(cluster: Cluster) -> None:
    cluster.client.create_service(spec("kept", min_replicas=2, max_replicas=2, public=True))
    with router_for(cluster) as router:
        wait_for("two ready replicas", lambda: ready(cluster, "kept") == 2, timeout_s=60)
        before = {r.number: r.job_id for r in cluster.client.get_service("kept").replicas}
        cluster.kill_daemon()
        # The replicas serve on while the daemon is away: the router keeps its table.
        assert router.status("/services/kept/x")[0] == 200
        cluster.start_daemon()
        wait_for("two ready replicas again", lambda: ready(cluster, "kept") == 2, timeout_s=60)
        after = {r.number: r.job_id for r in cluster.client.get_service("kept").replicas}
        assert after == before  # the same replicas, the same jobs: adopted, not replaced
        assert router.status("/services/kept/x")[0] == 200
        # A router restart: requests in flight fail at once, cleanly; the new one serves.
        slow = threading.Thread(target=lambda: results.append(router.status("/services/kept/s")))
        results: list[tuple[int, str, dict[str, str]]] = []
        slow.start()
        time.sleep(0.05)
        stopped = time.monotonic()
        router.stop()
        slow.join(30)
        assert time.monotonic() - stopped < 10
        router.start()
        wait_for("the new router to route", lambda: router.status("/services/kept/x")[0] == 200)
    assert os.path.exists(cluster.db)
