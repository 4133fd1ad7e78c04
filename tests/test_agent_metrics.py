"""The agent's metrics without a daemon: NVML's numbers through the backend (a stand-in
for the driver: this machine has none), the fake backend's labelled fixed values, and
the small HTTP server's routes over real HTTP."""

from __future__ import annotations

import types
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import agent.gpus as gpus
from agent.gpus import FAKE_MEMORY_BYTES, FakeBackend, NvmlBackend
from agent.metrics import AgentMetrics, serve
from schedulerd.hostport import split_host_port


class FakeNvml:
    """pynvml's calls the sampler makes; GPU 1 fails, as a GPU fallen off the bus does."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index == 1:
            raise self.NVMLError("GPU is lost")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return types.SimpleNamespace(gpu=75, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30, free=77 * 2**30)


def test_nvml_sample_reads_utilisation_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml()
    monkeypatch.setattr(gpus, "pynvml", nvml)
    backend = NvmlBackend()
    samples, failed = backend.sample([0, 1, 2])
    assert failed == 1
    assert [s.index for s in samples] == [0, 2]
    assert samples[0].utilization == pytest.approx(0.75)
    assert samples[0].memory_used_bytes == 3 * 2**30
    assert samples[0].memory_total_bytes == 80 * 2**30
    backend.sample([0])
    assert nvml.inits == 1  # initialised once, kept


def test_fake_backend_samples_are_fixed() -> None:
    samples, failed = FakeBackend(2, "n").sample([0, 1])
    assert failed == 0
    assert [(s.utilization, s.memory_used_bytes) for s in samples] == [(0.0, 0), (0.0, 0)]
    assert all(s.memory_total_bytes == FAKE_MEMORY_BYTES for s in samples)


def test_metrics_label_fake_gpus_and_count_messages() -> None:
    m = AgentMetrics("n1", FakeBackend(2, "n1"), [0, 1])
    m.publish(parts=1, busy_gpus=2, connected=True)
    m.count_sent("report")
    m.count_sent("report")
    m.count_sent("something-new")  # not a kind we know: not a new label value
    text = generate_latest(m.registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    util = [k for k in samples if k[0] == "schedulerd_agent_gpu_utilization_ratio"]
    assert len(util) == 2 and all(("fake", "true") in k[1] for k in util)
    assert samples[("schedulerd_agent_job_parts_running", (("node", "n1"),))] == 1
    assert samples[("schedulerd_agent_connected", (("node", "n1"),))] == 1
    key = ("schedulerd_agent_messages_sent_total", (("kind", "report"), ("node", "n1")))
    assert samples[key] == 2
    kinds = {dict(k[1]).get("kind") for k in samples if k[0].startswith("schedulerd_agent_mess")}
    assert kinds == {"register", "heartbeat", "report", "log_data"}


def test_the_metrics_server_routes() -> None:
    m = AgentMetrics("n1", FakeBackend(1, "n1"), [0])
    server = serve(m, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert (r.status, r.read()) == (200, b"ok\n")
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            assert b"schedulerd_agent_gpu_memory_total_bytes" in r.read()
        for request, code in (
            (urllib.request.Request(f"{base}/other"), 404),
            (urllib.request.Request(f"{base}/metrics", data=b"x", method="POST"), 405),
        ):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(request, timeout=5)
            assert e.value.code == code
    finally:
        server.shutdown()
        server.server_close()


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:9400") == ("127.0.0.1", 9400)
    assert split_host_port(":9400") == ("127.0.0.1", 9400)
    for bad in ("9400", "host:", "host:x", "host:70000"):
        with pytest.raises(ValueError):
            split_host_port(bad)
