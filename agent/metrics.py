"""The agent's /metrics and /healthz (--metrics-listen HOST:PORT; docs/metrics.md).

Served by a small WSGI server in its own threads (prometheus_client's), not on the
agent's event loop: a scrape reads NVML there, which may block for milliseconds per
GPU, and never touches the runner's state. The event loop only publishes a few
numbers after each look at the jobs (`publish`), and counts the messages it sends.

Unauthenticated, like the daemon's: GPU numbers and counts only, no job's command,
environment or user. Bind it to loopback or a management network. At most
MAX_CONNECTIONS connections at once (the next get 503 at accept), each cut after
CONNECTION_TIMEOUT_S idle: slow or idle callers cannot grow the agent's threads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import Collector

from agent.gpus import GpuBackend

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]

# The kinds of message the agent sends (AgentMessage's oneof).
MESSAGE_KINDS = ("register", "heartbeat", "report", "log_data")
# Requests answered at once; past that a scrape gets 503 (a thread per connection
# otherwise: a flood of slow callers must not grow the agent without bound).
MAX_CONCURRENT = 8
# Connections held at once (each holds a thread from accept to close): past that a new
# one is answered 503 and closed at accept, before any thread starts.
MAX_CONNECTIONS = 8
# Seconds a connection may sit idle (a request line never finished, a reader that
# never reads): then it is cut and its thread and slot freed.
CONNECTION_TIMEOUT_S = 10.0


class AgentMetrics:
    def __init__(self, node: str, backend: GpuBackend, gpu_indices: list[int]) -> None:
        self.node = node
        self.backend = backend
        self.gpu_indices = list(gpu_indices)
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total and others
        self.sent = Counter(
            "schedulerd_agent_messages_sent_total",
            "Messages sent to the daemon, by kind (register, heartbeat, report, log_data)",
            ["node", "kind"],
            registry=self.registry,
        )
        for kind in MESSAGE_KINDS:
            self.sent.labels(node, kind)
        # Published by the event loop (a tuple swapped whole: the scrape thread reads
        # it without a lock).
        self._now: tuple[int, int, bool] = (0, 0, False)
        self.registry.register(_AgentCollector(self))

    def publish(self, parts: int, busy_gpus: int, connected: bool) -> None:
        self._now = (parts, busy_gpus, connected)

    def count_sent(self, kind: str) -> None:
        if kind in MESSAGE_KINDS:
            self.sent.labels(self.node, kind).inc()


class _AgentCollector(Collector):
    def __init__(self, metrics: AgentMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        node = [m.node]
        parts, busy, connected = m._now
        yield _one("schedulerd_agent_job_parts_running", "Job parts running here", node, parts)
        yield _one("schedulerd_agent_gpus_busy", "GPUs held by the parts running here", node, busy)
        yield _one(
            "schedulerd_agent_connected",
            "1 while registered with the daemon over a live stream",
            node,
            1 if connected else 0,
        )
        fake = "true" if m.backend.is_fake else "false"
        labels = ["node", "gpu", "fake"]
        util = GaugeMetricFamily(
            "schedulerd_agent_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU (NVML); "
            'fake="true": a fixed 0, not measured',
            labels=labels,
        )
        used = GaugeMetricFamily(
            "schedulerd_agent_gpu_memory_used_bytes",
            'GPU memory in use (NVML); fake="true": a fixed 0, not measured',
            labels=labels,
        )
        total = GaugeMetricFamily(
            "schedulerd_agent_gpu_memory_total_bytes",
            'GPU memory (NVML); fake="true": the fake GPUs\' invented size',
            labels=labels,
        )
        try:
            samples, failed = m.backend.sample(m.gpu_indices)
        except Exception:  # a scrape must answer whatever NVML does
            log.debug("GPU sample failed", exc_info=True)
            samples, failed = [], len(m.gpu_indices)
        for s in samples:
            key = [m.node, str(s.index), fake]
            util.add_metric(key, s.utilization)
            used.add_metric(key, s.memory_used_bytes)
            total.add_metric(key, s.memory_total_bytes)
        yield from (util, used, total)
        yield _one(
            "schedulerd_agent_gpu_sample_failures",
            "GPUs that could not be read at this scrape",
            node,
            failed,
        )
        info = GaugeMetricFamily(
            "schedulerd_agent_info",
            "1; the agent's GPU backend",
            labels=["node", "backend", "fake"],
        )
        info.add_metric([m.node, m.backend.name, fake], 1)
        yield info


def _one(name: str, doc: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["node"])
    family.add_metric(labels, value)
    return family


def wsgi_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """/metrics (the registry) and /healthz; GET and HEAD only; at most MAX_CONCURRENT
    at once."""
    metrics = make_wsgi_app(registry)
    slots = threading.BoundedSemaphore(MAX_CONCURRENT)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", b"GET only\n")
        if path not in ("/metrics", "/healthz"):
            return _plain(start_response, "404 Not Found", b"/metrics or /healthz\n")
        if not slots.acquire(blocking=False):
            return _plain(start_response, "503 Service Unavailable", b"busy\n")
        try:
            if path == "/healthz":
                return _plain(start_response, "200 OK", b"ok\n")
            return list(metrics(environ, start_response))
        finally:
            slots.release()

    return app


def _plain(start_response: Callable[..., Any], status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body]


_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


class _Handler(_SilentHandler):
    # socketserver sets it on the connection: a read or write idle this long raises,
    # and the connection is closed.
    timeout = CONNECTION_TIMEOUT_S


class CappedWSGIServer(ThreadingWSGIServer):
    """prometheus_client's thread-per-connection server with at most MAX_CONNECTIONS
    connections (and so threads) at once: the next ones get 503 at accept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(0)  # a fresh socket's buffer takes it; never wait
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: it will not release the slot
            self._slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # An idle connection cut (TimeoutError), a caller gone: not worth a traceback.
        log.debug("metrics connection from %s ended", client_address, exc_info=True)


def serve(metrics: AgentMetrics, host: str, port: int) -> ThreadingWSGIServer:
    """Listen on host:port in a daemon thread; returns the server (server_port: the
    port bound). Raises OSError when the address cannot be bound."""
    server = make_server(
        host, port, wsgi_app(metrics.registry), CappedWSGIServer, handler_class=_Handler
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    log.info("serving /metrics and /healthz on %s:%d", host, server.server_port)
    return server
