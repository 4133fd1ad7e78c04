"""`schedctl serve`: its tables and detail from constructed messages, its argument
parsing, and what each action asks of the client (a fake: no daemon here)."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from schedulerd.api.v1 import serving_pb2 as pb
from schedulerd.cli import serve
from schedulerd.cli.main import build_parser
from schedulerd.client import Client

ROOT = Path(__file__).resolve().parent.parent


def _service(**kw: Any) -> pb.Service:
    spec = pb.ServiceSpec(
        name="spirals",
        consumer="/team/vision",
        user="alice",
        command=["python", "model_server.py", "--delay-ms", "20"],
        gpus_per_replica=2,
        min_replicas=1,
        max_replicas=4,
        target_in_flight=2.0,
        readiness_path="/healthz",
        scale_down_delay_s=90.0,
        window_s=10.0,
        max_queue=100,
        queue_timeout_s=30.0,
        request_timeout_s=3600.0,
        public=True,
    )
    svc = pb.Service(
        id=7,
        spec=spec,
        state=pb.SERVICE_ACTIVE,
        generation=2,
        desired_replicas=3,
        ready_replicas=2,
        path="/services/spirals/",
        reason="load 5.2 over target 2: 3 replicas",
        replicas=[
            pb.Replica(
                number=0,
                job_id=41,
                state=pb.REPLICA_READY,
                generation=2,
                node="gpu1",
                address="10.0.0.5:40123",
                in_flight=3,
            ),
            pb.Replica(
                number=3,
                job_id=57,
                state=pb.REPLICA_WAITING,
                generation=2,
                reason="waiting for 2 GPUs",
            ),
        ],
        load=pb.ServiceLoad(
            in_flight=5.25,
            queued=1.0,
            requests_per_s=12.34,
            p50_ms=23.4,
            p99_ms=4.56,
            requests_total=12345,
            failed_total=2,
            reported=Timestamp(seconds=1_700_000_000),
        ),
        history=[
            pb.ServiceEvent(
                time=Timestamp(seconds=1_700_000_000),
                kind="created",
                message="1 replica",
                from_replicas=0,
                to_replicas=1,
            ),
            pb.ServiceEvent(
                time=Timestamp(seconds=1_700_000_060),
                kind="replica-ready",
                message="replica 0 on gpu1",
                from_replicas=1,
                to_replicas=1,
            ),
        ],
    )
    for k, v in kw.items():
        setattr(svc, k, v)
    return svc


def test_list_table_has_one_row_a_service() -> None:
    quiet = pb.Service(
        spec=pb.ServiceSpec(name="idle", consumer="/a", min_replicas=0, max_replicas=2),
        state=pb.SERVICE_DELETING,
    )
    lines = serve.services_table([_service(), quiet]).splitlines()
    assert lines[0].split() == ["NAME", "CONSUMER", "REPLICAS", "LOAD", "P50", "P99", "STATE"]
    assert lines[1].split() == [
        "spirals",
        "/team/vision",
        "2/3",
        "(1–4)",
        "5.2/1",
        "23ms",
        "4.6ms",
        "ACTIVE",
    ]
    # No router report yet: no numbers made up.
    assert lines[2].split() == ["idle", "/a", "0/0", "(0–2)", "-", "-", "-", "DELETING"]
    # A report, but no request answered yet: a load, and no latency.
    quiet.load.CopyFrom(pb.ServiceLoad(reported=Timestamp(seconds=1_700_000_000)))
    row = serve.services_table([quiet]).splitlines()[1].split()
    assert row[4:7] == ["0/0", "-", "-"]
    assert "0 in flight, 0 queued, 0.0 req/s, p50 -, p99 -; 0 requests" in serve.load_detail(quiet)


def test_show_has_spec_replicas_load_and_history() -> None:
    text = serve.service_detail(_service())
    lines = text.splitlines()
    assert (
        lines[0] == "service spirals on /team/vision: ACTIVE (load 5.2 over target 2: 3 replicas)"
    )
    assert "path:      /services/spirals/   public: yes   user: alice" in text
    assert "command:   python model_server.py --delay-ms 20   (generation 2)" in text
    assert "2 ready, 3 desired, 1 to 4; scale to zero: no; 2 GPUs each" in text
    assert "target 2 in flight a replica, window 10s, scale-down delay 1m30s" in text
    assert "readiness /healthz, timeout 1h; queue at most 100 for 30s" in text
    assert (
        "5.2 in flight, 1 queued, 12.3 req/s, p50 23ms, p99 4.6ms; 12,345 requests, 2 failed"
        in text
    )
    header = next(i for i, line in enumerate(lines) if line.startswith("NUMBER"))
    assert lines[header].split() == [
        "NUMBER",
        "JOB",
        "STATE",
        "GEN",
        "NODE",
        "ADDRESS",
        "IN-FLIGHT",
        "REASON",
    ]
    assert lines[header + 1].split() == ["0", "41", "READY", "2", "gpu1", "10.0.0.5:40123", "3"]
    assert lines[header + 2].split() == [
        "3",
        "57",
        "WAITING",
        "2",
        "-",
        "-",
        "0",
        "waiting",
        "for",
        "2",
        "GPUs",
    ]
    history = lines[lines.index("history:") + 1 :]
    assert len(history) == 2
    assert history[0].split()[1:] == ["created", "0→1", "1", "replica"]
    # No change of count: no arrow.
    assert history[1].split()[1:] == ["replica-ready", "replica", "0", "on", "gpu1"]


def test_show_of_a_service_with_nothing_yet() -> None:
    svc = pb.Service(spec=pb.ServiceSpec(name="new", consumer="/a"), state=pb.SERVICE_ACTIVE)
    text = serve.service_detail(svc)
    assert "path:      /services/new/" in text
    assert "load:      no report from a router yet" in text
    assert "no replicas" in text and "history: none yet" in text


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize(
    ("argv", "fields", "values"),
    [
        (["--min", "2"], ["min_replicas"], {"min_replicas": 2}),
        (["--max", "8", "--min", "0"], ["min_replicas", "max_replicas"], {"max_replicas": 8}),
        (["--target", "2.5"], ["target_in_flight"], {"target_in_flight": 2.5}),
        (
            ["--min", "1", "--max", "3", "--target", "4"],
            ["min_replicas", "max_replicas", "target_in_flight"],
            {"min_replicas": 1, "max_replicas": 3, "target_in_flight": 4.0},
        ),
    ],
)
def test_scale_sends_only_the_fields_given(
    argv: list[str], fields: list[str], values: dict[str, object]
) -> None:
    spec, mask = serve.scale_request(_args("scale", "spirals", *argv))
    assert mask == fields
    for name, want in values.items():
        assert getattr(spec, name) == want
    # Fields not given stay zero (the mask says they are not taken anyway).
    untouched = {"min_replicas", "max_replicas", "target_in_flight"} - set(fields)
    assert all(not getattr(spec, name) for name in untouched)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], "give --min, --max or --target"),
        (["--min", "3", "--max", "2"], "--min 3 is above --max 2"),
    ],
)
def test_scale_refuses_nothing_to_do_and_min_above_max(argv: list[str], words: str) -> None:
    with pytest.raises(SystemExit, match=words):
        serve.scale_request(_args("scale", "spirals", *argv))


@pytest.mark.parametrize(
    "argv",
    [["--min", "-1"], ["--min", "two"], ["--target", "0"], ["--target", "nan"], ["--max", "1.5"]],
)
def test_scale_options_are_checked_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        _args("scale", "spirals", *argv)
    assert e.value.code == 2
    assert "schedctl serve scale: error: argument" in capsys.readouterr().err


def test_every_option_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve_parser = sub.choices["serve"]
    actions = next(a for a in serve_parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in actions.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"serve {name} {action.dest} has no help"


class FakeClient:
    """What the serve actions call, recorded; answers are given."""

    def __init__(self, service: pb.Service, logs: dict[int, list[bytes]] | None = None) -> None:
        self.service = service
        self.logs_of = logs or {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def get_service(self, name: str) -> pb.Service:
        self.calls.append(("get", (name,)))
        return self.service

    def create_service(self, spec: pb.ServiceSpec) -> pb.Service:
        self.calls.append(("create", (spec,)))
        return pb.Service(spec=spec, path=f"/services/{spec.name}/")

    def update_service(
        self, name: str, spec: pb.ServiceSpec, fields: Sequence[str] | None = None
    ) -> pb.Service:
        self.calls.append(("update", (name, spec, fields)))
        out = pb.Service()
        out.CopyFrom(self.service)
        out.generation += 1
        return out

    def logs(self, job_id: int, follow: bool = True) -> Iterator[bytes]:
        self.calls.append(("logs", (job_id, follow)))
        yield from self.logs_of.get(job_id, [])


def _run(client: FakeClient, *argv: str) -> int:
    return serve.run(cast(Client, client), _args(*argv))


def test_create_sends_the_file_with_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(_service())
    assert _run(client, "create", str(ROOT / "examples" / "serve" / "service.yaml")) == 0
    (kind, (spec,)), *_ = client.calls
    assert kind == "create" and spec.name == "spirals" and spec.max_replicas == 4
    assert spec.window_s == 10.0 and spec.readiness_path == "/healthz"
    out = capsys.readouterr().out
    assert out.startswith("created service spirals on /default: 1 to 4 replicas")


def test_a_bad_file_is_reported_and_nothing_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nconsumer: /a\ncommand: [a]\nreplicas: {min: 3, max: 2}\n")
    client = FakeClient(_service())
    assert _run(client, "create", str(bad)) == 1
    assert _run(client, "update", str(bad)) == 1
    assert client.calls == []
    err = capsys.readouterr().err
    assert f"{bad}:4: replicas.min: 3 is above replicas.max (2)" in err


def test_update_sends_the_whole_spec_without_a_mask(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(_service())
    assert _run(client, "update", str(ROOT / "examples" / "serve" / "service.yaml")) == 0
    assert [c[0] for c in client.calls] == ["get", "update"]
    name, spec, fields = client.calls[1][1]
    assert name == "spirals" and fields is None and list(spec.command)[:1] == ["python"]
    assert "rolling the replicas over to generation 3" in capsys.readouterr().out


def test_scale_calls_update_with_its_mask() -> None:
    client = FakeClient(_service())
    assert _run(client, "scale", "spirals", "--max", "6") == 0
    name, spec, fields = client.calls[0][1]
    assert (name, spec.max_replicas, fields) == ("spirals", 6, ["max_replicas"])


def _stdout_bytes(monkeypatch: pytest.MonkeyPatch) -> io.BytesIO:
    buf = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buf))
    return buf


def test_logs_of_several_replicas_are_prefixed_line_by_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = FakeClient(_service(), {41: [b"a1\na", b"2\n"], 57: [b"b1\nb2 no newline"]})
    buf = _stdout_bytes(monkeypatch)
    assert _run(client, "logs", "spirals") == 0
    assert buf.getvalue() == b"[r0] a1\n[r0] a2\n[r3] b1\n[r3] b2 no newline\n"
    assert ("logs", (41, False)) in client.calls


def test_logs_follow_merges_streams_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(_service(), {41: [b"a1\na", b"2\n"], 57: [b"b1\n", b"b2"]})
    buf = _stdout_bytes(monkeypatch)
    assert _run(client, "logs", "spirals", "--follow") == 0
    lines = buf.getvalue().splitlines()
    assert sorted(lines) == [b"[r0] a1", b"[r0] a2", b"[r3] b1", b"[r3] b2"]
    assert lines.index(b"[r0] a1") < lines.index(b"[r0] a2")
    assert ("logs", (57, True)) in client.calls


def test_logs_of_one_replica_are_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(_service(), {41: [b"a1\na"], 57: [b"b1\n"]})
    buf = _stdout_bytes(monkeypatch)
    assert _run(client, "logs", "spirals", "--replica", "0") == 0
    assert buf.getvalue() == b"a1\na"


def test_logs_of_a_replica_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(_service())
    assert _run(client, "logs", "spirals", "--replica", "9") == 1
    assert "service spirals has no replica 9 (replicas: 0, 3)" in capsys.readouterr().err


def test_line_prefixer_keeps_partial_lines_apart() -> None:
    p = serve.LinePrefixer(multi=True)
    assert p.feed(1, b"hel") == b""
    assert p.feed(2, b"x\ny") == b"[r2] x\n"
    assert p.feed(1, b"lo\n") == b"[r1] hello\n"
    assert p.flush() == b"[r2] y\n"
    assert p.flush() == b""


# -- the example that `serve create` deploys: examples/serve/ ---------------------------

SERVE_EXAMPLES = ROOT / "examples" / "serve"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _load_module() -> Any:
    spec = importlib.util.spec_from_file_location("serve_load", SERVE_EXAMPLES / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_load_profiles_parse_and_bad_ones_say_why() -> None:
    load = _load_module()
    assert load.parse_profile("10s@2, 30s@20,500ms@0,2m@1.5,3@4") == [
        load.Phase(10.0, 2.0),
        load.Phase(30.0, 20.0),
        load.Phase(0.5, 0.0),
        load.Phase(120.0, 1.5),
        load.Phase(3.0, 4.0),
    ]
    for bad in ("10s", "@5", "10x@2", "0s@5", "10s@-1"):
        with pytest.raises(ValueError, match=r"DURATION@RATE|more than 0"):
            load.parse_profile(bad)
    assert load.percentile([], 50) is None
    assert load.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert load.percentile([5.0, 1.0, 3.0], 50) == 3.0


def test_the_example_model_server_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    """Starts examples/serve/model_server.py as a replica would be (SCHEDULERD_PORT),
    waits for /healthz, predicts, refuses bad input, takes load from load.py, and on
    SIGTERM finishes the request in flight and exits 0. A few seconds (torch)."""
    pytest.importorskip("torch")
    port = _free_port()
    env = {**os.environ, "SCHEDULERD_PORT": str(port), "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "server.log").open("w+")
    options = ["--delay-ms", "300", "--max-batch", "4", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [sys.executable, str(SERVE_EXAMPLES / "model_server.py"), *options],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, _ = _http(f"{base}/healthz", timeout=2)
            except OSError:  # not listening yet
                status = 0
            seen.add(status)
            if status == 200:
                break
            assert server.poll() is None, log.seek(0) or log.read()
            time.sleep(0.05)
        assert 200 in seen, seen
        assert seen & {0, 503}, seen  # not ready at once: torch loads, the model trains

        rows = [[0.1, 0.2], [-0.5, 0.3], [0.9, -0.9]]
        status, answer = _http(f"{base}/predict", json.dumps({"inputs": rows}).encode())
        assert status == 200, answer
        assert len(answer["classes"]) == 3 and all(c in (0, 1, 2) for c in answer["classes"])
        assert [len(p) for p in answer["probabilities"]] == [3, 3, 3]
        assert all(abs(sum(p) - 1) < 1e-4 for p in answer["probabilities"])
        for bad, words in [
            (b"not json", "not JSON"),
            (b'{"rows": []}', "inputs"),
            (b'{"inputs": []}', "non-empty"),
            (b'{"inputs": [[1, 2, 3]]}', "inputs[0]: a row of 2 numbers"),
            (b'{"inputs": [[1, "x"]]}', 'inputs[0]: "x" is not a finite number'),
            (json.dumps({"inputs": [[0, 0]] * 5}).encode(), "5 rows, at most 4"),
        ]:
            status, answer = _http(f"{base}/predict", bad)
            assert (status, words in answer["error"]) == (400, True), (bad, answer)

        # Open-loop load: 6 requests over 0.3 s, each 300 ms: they overlap.
        load = [sys.executable, str(SERVE_EXAMPLES / "load.py"), f"{base}/predict"]
        out = subprocess.run(
            [*load, "--json", "--profile", "0.3s@20"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        (phase,) = json.loads(out.stdout)["phases"]
        assert (phase["sent"], phase["answered"], phase["failed"]) == (6, 6, {})
        assert phase["p50_ms"] >= 300

        # A request in flight when SIGTERM comes is answered; then the process exits 0.
        answers: list[tuple[int, Any]] = []
        body = json.dumps({"inputs": rows[:1]}).encode()
        inflight = threading.Thread(target=lambda: answers.append(_http(f"{base}/predict", body)))
        inflight.start()
        time.sleep(0.1)
        server.send_signal(signal.SIGTERM)
        inflight.join(10)
        assert answers and answers[0][0] == 200, answers
        assert server.wait(15) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    log.seek(0)
    text = log.read()
    assert "model ready: trained" in text and "stopping: 1 requests in flight" in text, text
