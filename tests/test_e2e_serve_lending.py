"""Inference services end to end (docs/serve.md): a real daemon, a real agent (fake GPUs),
the real schedulerd-router, replicas that are real HTTP servers, real HTTP through the
router.

- Lending: an elastic training job of another consumer grows into the GPUs the service
  does not use; the service's load rises: the training job shrinks in place (same PIDs,
  no step lost) and the service reaches its replicas; the load falls: the extra
  replicas drain and training grows back.
- Rolling update under load: a new command rolls the replicas over one at a time; not
  one request fails, and the answers switch from the old command's to the new one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import Cluster, free_port, running_cluster, wait_for

from schedulerd.api.v1 import jobs_pb2
from schedulerd.api.v1 import serving_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
# A node name of this process's own: an agent's cgroups are named after its node, and
# other tests (in parallel runs) purge those of "n1".
NODE = f"lend-{os.getpid()}"
# /svc owns 3 of the 4 GPUs but serves with 1 most of the time: the other 2 are lent.
POLICY = """
version: 1
consumers:
  svc: {owned: 3, share: 1, grace: 3s}
  train: {owned: 1, share: 1}
"""

# One replica: stdlib only (starts in a fraction of a second). POST answers after a
# delay with its version, replica number and PID; /healthz is 200; SIGTERM stops
# accepting, lets the requests in flight finish, and exits 0.
REPLICA = r"""
import json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = sys.argv[1] if len(sys.argv) > 1 else "v1"
DELAY_S = float(sys.argv[2]) if len(sys.argv) > 2 else 0.15
REPLICA = os.environ.get("SCHEDULERD_REPLICA", "?")
in_flight = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Version", VERSION)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            self.answer(b'{"ok": true}')
        else:
            self.do_POST()

    def do_POST(self):
        global in_flight
        with lock:
            in_flight += 1
        try:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            time.sleep(DELAY_S)
            body = {"version": VERSION, "replica": REPLICA, "pid": os.getpid()}
            self.answer(json.dumps(body).encode())
        finally:
            with lock:
                in_flight -= 1

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight
    block_on_close = True


server = Server(("", int(os.environ["SCHEDULERD_PORT"])), Handler)


def stop(signum, frame):
    print(f"SIGTERM with {in_flight} in flight", flush=True)
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, stop)
print(f"replica {REPLICA} {VERSION} serving", flush=True)
server.serve_forever(poll_interval=0.05)
server.server_close()
print(f"replica {REPLICA} drained, exit 0", flush=True)
sys.exit(0)
"""


# --- the router and the load ---------------------------------------------------------


@contextlib.contextmanager
def running_router(cluster: Cluster) -> Iterator[str]:
    """schedulerd-router as a process; yields its base URL."""
    port = free_port()
    log = open(cluster.root / "router.log", "ab")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schedulerd.router",
            "--daemon",
            cluster.address,
            "--listen",
            f"127.0.0.1:{port}",
            "--no-config",
            "--report-every",
            "0.5",
            "--probe-every",
            "0.2",
            "--log-level",
            "DEBUG",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cluster.root,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, _tail(cluster.root / "router.log")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:  # not listening yet (HTTPError is an OSError too)
                return False

        wait_for("the router to serve", healthy, timeout_s=20, every_s=0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@dataclass
class Answer:
    sent: float
    done: float
    status: int  # 0: no HTTP answer (see error)
    version: str = ""
    replica: str = ""
    error: str = ""


@dataclass
class Load:
    """`concurrency` clients, each sending the next POST as soon as the last is answered
    (so about that many requests are in flight at the router), on a thread of its own."""

    url: str
    concurrency: int
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)
        assert not self._thread.is_alive(), "the load's clients did not finish"
        return list(self.answers)

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.sent >= t]

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.concurrency)))

    async def _client(self, session: aiohttp.ClientSession, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            sent = time.monotonic()
            try:
                async with session.post(self.url, json={"client": i, "n": n}) as resp:
                    raw = await resp.read()
                    status = resp.status
                answer = Answer(sent, time.monotonic(), status)
                if status == 200:
                    body = json.loads(raw)
                    answer.version, answer.replica = body["version"], str(body["replica"])
                    assert resp.headers.get("X-Version") == answer.version
                else:
                    answer.error = raw[:200].decode(errors="replace")
            except Exception as e:  # every failure is an answer the test reports
                answer = Answer(sent, time.monotonic(), 0, error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.05)
            self.answers.append(answer)


# --- reading the cluster ---------------------------------------------------------------


NOISE = ("decide() took", "Loaded running loop")  # DEBUG lines of every tick


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    kept = [line for line in text.splitlines() if not any(n in line for n in NOISE)]
    return "\n".join(kept[-lines:])


def _history(svc: pb.Service) -> list[tuple[str, str]]:
    return [(e.kind, e.message) for e in svc.history]


def _explain(cluster: Cluster, name: str, extra: str = "") -> str:
    """What a failed assertion prints: the service now, its history, the logs' tails."""
    try:
        svc = cluster.client.get_service(name)
        replicas = [
            (r.number, pb.ReplicaState.Name(r.state), r.generation, r.job_id, r.reason)
            for r in svc.replicas
        ]
        now = (
            f"desired {svc.desired_replicas}, ready {svc.ready_replicas}, "
            f"generation {svc.generation}, reason {svc.reason!r}\nreplicas {replicas}\n"
            "history:\n" + "\n".join(f"  {k}: {m}" for k, m in _history(svc))
        )
    except Exception as e:  # the daemon may be what failed
        now = f"get_service failed: {e}"
    return (
        f"{extra}\n{now}\n--- daemon.log ---\n{_tail(cluster.root / 'daemon.log', 40)}\n"
        f"--- agent log ---\n{_tail(cluster.root / f'agent-{NODE}.log', 15)}\n"
        f"--- router.log ---\n{_tail(cluster.root / 'router.log', 15)}"
    )


def _trace(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            rows.append(json.loads(line))
    return rows


def _world_now(path: Path) -> int:
    rows = _trace(path)
    return int(rows[-1]["world"]) if rows else 0


def _replica_server(tmp_path: Path) -> Path:
    path = tmp_path / "replica.py"
    path.write_text(REPLICA)
    return path


def _spec(name: str, server: Path, **kw: Any) -> pb.ServiceSpec:
    return pb.ServiceSpec(
        name=name,
        consumer="/svc",
        command=[sys.executable, str(server), "v1"],
        gpus_per_replica=1,
        readiness_path="/healthz",
        public=True,
        **kw,
    )


def _ready(cluster: Cluster, name: str, count: int, generation: int = 0) -> pb.Service | None:
    """The service once exactly `count` replicas are left, all ready (of `generation` or
    newer), else None."""
    svc = cluster.client.get_service(name)
    live = [r for r in svc.replicas if r.state != pb.REPLICA_ENDED]
    if (
        len(live) == count
        and svc.ready_replicas == count
        and all(r.state == pb.REPLICA_READY and r.generation >= generation for r in live)
    ):
        return svc
    return None


def _members(rows: list[dict[str, Any]]) -> dict[int, int]:
    """Worker id -> PID of the members at the latest step every member has logged."""
    by_step: dict[int, dict[int, int]] = defaultdict(dict)
    worlds: dict[int, int] = {}
    for r in rows:
        by_step[int(r["step"])][int(r["worker"])] = int(r["pid"])
        worlds[int(r["step"])] = int(r["world"])
    for step in sorted(by_step, reverse=True):
        if len(by_step[step]) == worlds[step]:
            return by_step[step]
    return {}


def _check_trace(rows: list[dict[str, Any]]) -> list[int]:
    """test_e2e_elastic's checks: every step once, from every rank of its world, same
    parameters on every rank, one PID per worker all along. Returns the world per step."""
    by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_step[int(r["step"])].append(r)
    steps = sorted(by_step)
    assert steps == list(range(steps[0], steps[-1] + 1)), "a step was lost"
    for step in steps:
        ranks = sorted(int(r["rank"]) for r in by_step[step])
        world = {int(r["world"]) for r in by_step[step]}
        assert len(world) == 1 and ranks == list(range(world.pop())), (step, by_step[step])
        assert len({r["checksum"] for r in by_step[step]}) == 1, by_step[step]
    pids: dict[int, set[int]] = defaultdict(set)
    for r in rows:
        pids[int(r["worker"])].add(int(r["pid"]))
    assert all(len(p) == 1 for p in pids.values()), f"a worker was restarted: {pids}"
    return [int(by_step[s][0]["world"]) for s in steps]


# --- 1. lending ------------------------------------------------------------------------


def test_service_takes_back_gpus_lent_to_training_and_lends_them_again(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # the training job (the replicas need none)
    t0 = time.monotonic()
    trace = tmp_path / "trace.jsonl"
    server = _replica_server(tmp_path)
    name = "lend"
    with running_cluster(tmp_path, POLICY, {NODE: 4}) as cluster, running_router(cluster) as url:
        c = cluster.client
        c.create_service(
            _spec(
                name,
                server,
                min_replicas=1,
                max_replicas=3,
                target_in_flight=2,
                window_s=3,
                scale_down_delay_s=4,
            )
        )
        first = wait_for("replica 0 ready", lambda: _ready(cluster, name, 1), timeout_s=20)
        # The training job gets every GPU the service does not use: 3 of 4.
        job = c.submit(
            "/train",
            [
                sys.executable,
                str(ROOT / "examples" / "elastic_train.py"),
                "--steps",
                "100000",
                "--step-time",
                "0.05",
                "--trace",
                str(trace),
            ],
            gpus=1,
            gpus_max=4,
            env={"GLOO_SOCKET_IFNAME": "lo"},
            name="elastic",
        )
        wait_for("training on 3 workers", lambda: _world_now(trace) == 3, timeout_s=60)
        before = _members(_trace(trace))
        t_grown = time.monotonic()

        # Load: 6 in flight, target 2 per replica: the service wants 3 replicas, 2 of
        # them on GPUs lent to training. Reclaim shrinks training in place to 1.
        load = Load(f"{url}/services/{name}/infer", concurrency=6).start()
        try:
            svc = wait_for(
                "3 ready replicas under load",
                lambda: _ready(cluster, name, 3),
                timeout_s=40,
                every_s=0.25,
            )
        except AssertionError as e:
            load.stop()
            raise AssertionError(_explain(cluster, name, str(e))) from None
        t_three = time.monotonic()
        assert _world_now(trace) == 1, _explain(cluster, name, f"world {_world_now(trace)}")
        assert len(c.get_job(job.id).gpus) == 1
        shrunk = _members(_trace(trace))
        # All three serve: answers from each replica after they were ready.
        time.sleep(1.5)
        served = {a.replica for a in load.since(t_three) if a.status == 200}
        answers = load.stop()
        t_stopped = time.monotonic()
        failed = [a for a in answers if a.status != 200]
        assert not failed, _explain(cluster, name, f"{len(failed)} failed: {failed[:5]}")
        assert served == {str(r.number) for r in svc.replicas}, (served, svc.replicas)

        # No load: after the window and the scale-down delay, back to 1 replica (the
        # other two drained, then stopped), and training grows back into their GPUs.
        try:
            last = wait_for("1 replica again", lambda: _ready(cluster, name, 1), timeout_s=30)
            t_one = time.monotonic()
            wait_for("training on 3 workers again", lambda: _world_now(trace) == 3, timeout_s=45)
        except AssertionError as e:
            raise AssertionError(_explain(cluster, name, str(e))) from None
        t_regrown = time.monotonic()
        after = _members(_trace(trace))
        svc = c.get_service(name)
        history = _history(svc)
        kinds = [k for k, _ in history]
        moves = [(e.kind, e.from_replicas, e.to_replicas) for e in svc.history]
        # Up from 1 to 3: in one step, or in two when the first report caught only part
        # of the load (how many requests were in flight then is the machine's timing).
        ups = [(a, b) for k, a, b in moves if k == "scale-up"]
        assert ups in ([(1, 3)], [(1, 2), (2, 3)]), _explain(cluster, name)
        assert ("scale-down", 3, 1) in moves, _explain(cluster, name)
        assert kinds.count("drain") == 2, _explain(cluster, name)
        stops = [m for k, m in history if k == "stop"]
        assert len(stops) == 2 and all("drained" in m for m in stops), _explain(cluster, name)
        assert "replica-failed" not in kinds, _explain(cluster, name)
        # The one left is the first, protected within /svc's owned GPUs all along.
        assert [(r.number, r.job_id) for r in last.replicas if r.state == pb.REPLICA_READY] == [
            (r.number, r.job_id) for r in first.replicas
        ], (first.replicas, last.replicas)
        jhist = [e.kind for e in c.get_job(job.id).history]
        assert "shrink-requested" in jhist and "shrunk" in jhist and "grown" in jhist, jhist

        c.cancel(job.id)
        wait_for("training to end", lambda: c.get_job(job.id).state == jobs_pb2.CANCELLED)
        c.delete_service(name)
        wait_for(
            "the service deleted",
            lambda: c.get_service(name).state == pb.SERVICE_DELETED,
            timeout_s=20,
        )

    # Survivors kept their PIDs across the shrink and the regrowth; every step once.
    # The one worker left after the shrink was one of the three, with its PID, and is
    # still there, with its PID, after the regrowth; the two new ones are new workers.
    assert len(before) == 3 and len(shrunk) == 1 and len(after) == 3, (before, shrunk, after)
    survivors = sorted(shrunk)
    assert all(before.get(w) == shrunk[w] == after.get(w) for w in survivors), (
        before,
        shrunk,
        after,
    )
    assert not (set(after) - set(shrunk)) & set(before), (before, after)
    worlds = _check_trace(_trace(trace))
    i3 = worlds.index(3)
    i1 = worlds.index(1, i3)
    assert 3 in worlds[i1:], worlds
    print(
        f"\ntimings (s from start): grown {t_grown - t0:.1f}, 3 replicas {t_three - t0:.1f}, "
        f"load stopped {t_stopped - t0:.1f}, 1 replica {t_one - t0:.1f}, "
        f"regrown {t_regrown - t0:.1f}; {len(answers)} requests, all 200; "
        f"survivors {survivors}; workers {before} -> {shrunk} -> {after}\n"
        + "\n".join(f"  {k}: {m}" for k, m in history)
    )


# --- 2. rolling update -----------------------------------------------------------------


def test_rolling_update_under_load_loses_no_request(tmp_path: Path) -> None:
    t0 = time.monotonic()
    server = _replica_server(tmp_path)
    name = "roll"
    with running_cluster(tmp_path, POLICY, {NODE: 4}) as cluster, running_router(cluster) as url:
        c = cluster.client
        spec = _spec(name, server, min_replicas=2, max_replicas=2, target_in_flight=4)
        c.create_service(spec)
        first = wait_for("2 ready replicas", lambda: _ready(cluster, name, 2), timeout_s=20)
        old_jobs = {r.job_id for r in first.replicas}

        load = Load(f"{url}/services/{name}/infer", concurrency=3).start()
        try:
            wait_for("v1 answers", lambda: len(load.since(0)) >= 10, timeout_s=10)
            new = pb.ServiceSpec(command=[sys.executable, str(server), "v2"])
            updated = c.update_service(name, new, ["command"])
            t_update = time.monotonic()
            assert updated.generation == first.generation + 1
            ready_seen: list[int] = []

            def rolled() -> pb.Service | None:
                ready_seen.append(c.get_service(name).ready_replicas)
                return _ready(cluster, name, 2, updated.generation)

            done = wait_for(
                "every replica of the new generation, ready", rolled, timeout_s=40, every_s=0.1
            )
            t_rolled = time.monotonic()
            time.sleep(1.0)
        except AssertionError as e:
            load.stop()
            raise AssertionError(_explain(cluster, name, str(e))) from None
        answers = load.stop()
        failed = [a for a in answers if a.status != 200]
        assert not failed, _explain(cluster, name, f"{len(failed)} failed: {failed[:5]}")
        before = [a.version for a in answers if a.done < t_update]
        after = [a.version for a in answers if a.sent > t_rolled]
        assert before and set(before) == {"v1"}, set(before)
        assert after and set(after) == {"v2"}, set(after)
        assert not old_jobs & {r.job_id for r in done.replicas}
        # Ready capacity never fell below what the service wants (as often as we looked).
        assert min(ready_seen) >= 2, ready_seen

        svc = c.get_service(name)
        history = _history(svc)
        kinds = [k for k, _ in history]
        assert "update" in kinds, _explain(cluster, name)
        rollout = history[kinds.index("update") :]
        assert [k for k, _ in rollout].count("drain") == 2, _explain(cluster, name)
        stops = [m for k, m in rollout if k == "stop"]
        assert len(stops) == 2 and all("drained" in m for m in stops), _explain(cluster, name)
        assert "replica-failed" not in kinds, _explain(cluster, name)
        # The old replicas' jobs were stopped after their drain, not failed.
        ended = wait_for("the old replicas' jobs to end", lambda: _all_ended(cluster, old_jobs))
        assert all(j.state == jobs_pb2.CANCELLED for j in ended), [
            (j.id, j.state, j.reason) for j in ended
        ]
        c.delete_service(name)
        wait_for(
            "the service deleted",
            lambda: c.get_service(name).state == pb.SERVICE_DELETED,
            timeout_s=20,
        )
    print(
        f"\ntimings (s from start): update {t_update - t0:.1f}, rolled {t_rolled - t0:.1f} "
        f"({t_rolled - t_update:.1f} s); {len(answers)} requests, all 200 "
        f"({len(before)} v1 before, {len(after)} v2 after)\n"
        + "\n".join(f"  {k}: {m}" for k, m in history)
    )


def _all_ended(cluster: Cluster, ids: set[int]) -> list[jobs_pb2.Job] | None:
    jobs = [cluster.client.get_job(i) for i in sorted(ids)]
    done = all(j.state not in (jobs_pb2.PENDING, jobs_pb2.RUNNING) for j in jobs)
    return jobs if done else None
