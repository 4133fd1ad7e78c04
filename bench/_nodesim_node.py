"""One simulated node of bench/nodesim.py: an AgentService stream to the real daemon,
and the job parts it plays without starting a process.

It speaks as agent/link.py does (docs/fencing.md, docs/agent.md), so that the daemon
cannot tell it from a real agent:

- Register first, with every part it still has (running ones, and ended ones the daemon
  has not acked), then a heartbeat every interval the daemon asked for;
- start, stop and resize commands of another session (epoch) are ignored;
- a start goes through agent.reconcile (the real agent's rules: a resent start is
  answered with the part's report, an older attempt of the job is stopped first);
- a start whose GPUs a live part still holds is REFUSED, as the real runner does (and
  counted: with a correct daemon it never happens);
- a part runs for its drawn time (or for ever), then EXITED with its drawn code; a stop
  ends it after min(grace, stop delay), killed by SIGTERM (or SIGKILL at grace 0); a
  release leaves after min(grace, release delay) with a RUNNING report of the GPUs
  still alive; a grow adds the joiners' GPUs at once;
- an ended part is kept, and repeated in every Register, until the daemon acks it.

Memory per node is its parts (bounded by its GPUs: a part ends or is refused before
another takes its GPUs, and acked parts are forgotten) and one outgoing queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from agent import wire
from agent.backoff import backoff_delay
from agent.model import JobSpec, PartReport, Phase, StopRequest
from agent.reconcile import Ignore, Report, StartPart, StopPart, reconcile
from schedulerd.api.v1 import agent_pb2, agent_pb2_grpc
from schedulerd.exits import describe_exit

log = logging.getLogger("nodesim")

DEFAULT_HEARTBEAT = 5.0  # when the daemon's Registered says 0, as agent/link.py
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 330_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
# A job's own say over how it behaves, in its environment (like KWOK's stage annotations).
ENV_RUN = "NODESIM_RUN_S"  # seconds it runs; "inf" for ever
ENV_EXIT = "NODESIM_EXIT"  # its exit code when it ends by itself


@dataclass(frozen=True)
class Behaviour:
    """How parts behave when their job's environment does not say.

    `draw_run(rng)` gives a part's run time in seconds (math.inf: for ever); `fail_rate`
    of the jobs exit with `fail_code`, the others with 0. Delays are in seconds."""

    draw_run: Callable[[random.Random], float]
    fail_rate: float = 0.0
    fail_code: int = 1
    start_delay_s: float = 0.0  # StartJob -> RUNNING report
    stop_delay_s: float = 0.0  # StopJob -> EXITED (capped at the stop's grace)
    release_delay_s: float = 0.0  # ResizeJob release -> the worker gone (capped at grace)
    seed: int = 0


@dataclass
class SimPart:
    job_id: int
    attempt: int
    consumer: str
    gpus: tuple[int, ...]  # what the start gave it
    live: set[int]  # GPUs whose (simulated) processes are alive
    elastic: bool
    report: agent_pb2.JobReport
    timer: asyncio.TimerHandle | None = None
    stopping: bool = False
    releasing: set[int] = field(default_factory=set)

    @property
    def key(self) -> tuple[int, int]:
        return (self.job_id, self.attempt)

    @property
    def ended(self) -> bool:
        return self.report.phase != agent_pb2.PHASE_RUNNING


@dataclass
class Counters:
    """What the whole fleet did; shared by every node (one event loop, no locks)."""

    registers: int = 0
    sessions_lost: int = 0
    starts: int = 0
    refused: int = 0  # starts on GPUs still held: a double booking by the daemon
    exits: int = 0
    stops: int = 0
    releases: int = 0
    grows: int = 0
    stale: int = 0  # commands of another session, ignored
    reports: int = 0
    repeats: int = 0  # reports sent again: a start or stop of a part already known
    heartbeats: int = 0
    busy_by_consumer: dict[str, int] = field(default_factory=dict)
    busy_total: int = 0
    gpu_seconds: float = 0.0  # the integral of busy GPUs over time (usage)
    _since: float = field(default_factory=time.monotonic)

    def gpu_seconds_now(self) -> float:
        return self.gpu_seconds + self.busy_total * (time.monotonic() - self._since)

    def busy(self, consumer: str, delta: int) -> None:
        now = time.monotonic()
        self.gpu_seconds += self.busy_total * (now - self._since)
        self._since = now
        self.busy_total += delta
        n = self.busy_by_consumer.get(consumer, 0) + delta
        if n:
            self.busy_by_consumer[consumer] = n
        else:
            self.busy_by_consumer.pop(consumer, None)


Outbox = asyncio.Queue[agent_pb2.AgentMessage | None]


class SimNode:
    def __init__(
        self,
        name: str,
        gpus: int,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        behaviour: Behaviour,
        counters: Counters,
        *,
        pool: str = "",
        metadata: tuple[tuple[str, str], ...] = (),
        on_registered: Callable[[SimNode], None] | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.credentials = credentials
        self.metadata = metadata
        self.behaviour = behaviour
        self.counters = counters
        self.pool = pool
        self.gpu_count = gpus
        self.gpus = [
            agent_pb2.GpuInfo(
                index=i,
                uuid=_fake_uuid(name, i),
                model="nodesim fake GPU",
                memory_bytes=80 * 2**30,
            )
            for i in range(gpus)
        ]
        self.parts: dict[tuple[int, int], SimPart] = {}
        self.registered = False
        self.epoch = 0
        self.on_registered = on_registered
        self._out: Outbox | None = None
        self._gone = False  # powered off: no more sessions, parts forgotten
        self._task: asyncio.Task[None] | None = None
        self._session_task: asyncio.Task[None] | None = None

    # --- the fleet's handles --------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def close(self) -> None:
        """End the stream politely (half-close), as an agent stopping does."""
        self._gone = True
        if self._out is not None:
            self._out.put_nowait(None)
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        self._cancel_timers()

    def power_off(self) -> None:
        """The machine is gone: the stream is cut without a word, its parts vanish and
        it never comes back (the daemon finds out by the node timeout)."""
        self._gone = True
        if self._task is not None:
            self._task.cancel()
        self._cancel_timers()
        for part in self.parts.values():
            if not part.ended:
                self.counters.busy(part.consumer, -len(part.live))
        self.parts.clear()
        self.registered = False

    def running_gpus(self) -> dict[int, tuple[int, int]]:
        """GPU index -> the (job, attempt) whose process is alive on it."""
        return {g: p.key for p in self.parts.values() if not p.ended for g in p.live}

    # --- the session ----------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        rng = random.Random(f"{self.behaviour.seed}:{self.name}")
        while not self._gone:
            self.registered = False
            try:
                await self._session()
                why = "the daemon ended the stream"
            except grpc.aio.AioRpcError as e:
                why = f"{e.code().name}: {e.details()}"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not end the node: say it and go on
                log.exception("node %s: session failed", self.name)
                why = f"{type(e).__name__}: {e}"
            if self._gone:
                return
            self.counters.sessions_lost += 1
            if self.registered:
                failures = 0
            delay = backoff_delay(failures, rng)
            failures += 1
            log.info("node %s: %s; again in %.2f s", self.name, why, delay)
            await asyncio.sleep(delay)

    def _channel(self) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(self.target, self.credentials, options=CHANNEL_OPTIONS)

    async def _session(self) -> None:
        out: Outbox = asyncio.Queue()
        out.put_nowait(
            agent_pb2.AgentMessage(
                register=agent_pb2.Register(
                    node=self.name,
                    pool=self.pool,
                    gpus=self.gpus,
                    fake_gpus=True,
                    agent_version="nodesim",
                    hostname=self.name,
                    jobs=[self.parts[k].report for k in sorted(self.parts)],
                )
            )
        )
        self._out = out
        heartbeats: asyncio.Task[None] | None = None
        async with self._channel() as channel:
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect(
                _drain(out), metadata=self.metadata
            )
            try:
                async for msg in call:
                    kind = msg.WhichOneof("msg")
                    if kind == "registered":
                        self.epoch = msg.registered.epoch
                        asked = msg.registered.heartbeat_interval
                        interval = asked if asked > 0 else DEFAULT_HEARTBEAT
                        if heartbeats is not None:
                            heartbeats.cancel()
                        heartbeats = asyncio.create_task(self._heartbeats(out, interval))
                        self.registered = True
                        self.counters.registers += 1
                        if self.on_registered is not None:
                            self.on_registered(self)
                    else:
                        self._handle(msg, kind)
            finally:
                self._out = None
                self.registered = False
                if heartbeats is not None:
                    heartbeats.cancel()
                call.cancel()

    async def _heartbeats(self, out: Outbox, interval: float) -> None:
        # The first one at a random point of the interval: 500 nodes registered in the same
        # second must not beat in step for ever.
        await asyncio.sleep(random.uniform(0, interval))
        beat = agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())
        while True:
            out.put_nowait(beat)
            self.counters.heartbeats += 1
            await asyncio.sleep(interval)

    def _send(self, report: agent_pb2.JobReport) -> None:
        if self._out is not None:
            self.counters.reports += 1
            self._out.put_nowait(agent_pb2.AgentMessage(report=report))

    # --- what the daemon says -------------------------------------------------------------

    def _handle(self, msg: agent_pb2.DaemonMessage, kind: str | None) -> None:
        if kind in ("start", "stop", "resize") and getattr(msg, kind).epoch != self.epoch:
            self.counters.stale += 1
            return
        if kind == "start":
            self._apply(wire.job_spec(msg.start))
        elif kind == "stop":
            self._apply(wire.stop_request(msg.stop))
        elif kind == "resize":
            self._resize(msg.resize)
        elif kind == "ack":
            part = self.parts.get((msg.ack.job_id, msg.ack.attempt))
            if part is not None and part.ended:
                del self.parts[part.key]
        elif kind == "read_log" and self._out is not None:
            r = msg.read_log
            data = b"" if r.offset else f"nodesim: job {r.job_id} ran on {self.name}\n".encode()
            self._out.put_nowait(
                agent_pb2.AgentMessage(
                    log_data=agent_pb2.LogData(
                        request_id=r.request_id,
                        data=data,
                        found=True,
                        next_offset=r.offset + len(data),
                    )
                )
            )

    def _apply(self, command: JobSpec | StopRequest) -> None:
        known = [_model_report(p.report) for p in self.parts.values()]
        for action in reconcile(command, known):
            if isinstance(action, StartPart):
                self._start(action.spec)
            elif isinstance(action, StopPart):
                self._stop(action.request)
            elif isinstance(action, Report):
                part = self.parts.get(action.key)
                if part is not None:
                    self.counters.repeats += 1
                    log.debug(
                        "node %s: %s again for part %s", self.name, kind_of(command), part.key
                    )
                    self._send(part.report)
            elif isinstance(action, Ignore):
                log.warning("node %s: %s", self.name, action.reason)

    def _start(self, spec: JobSpec) -> None:
        self.counters.starts += 1
        held = self.running_gpus()
        clash = sorted({held[g] for g in spec.gpu_indices if g in held})
        if clash:
            # As agent/runner.py: never two parts on one GPU.
            self.counters.refused += 1
            why = f"GPUs {list(spec.gpu_indices)} still held by job parts {clash}"
            log.error("node %s: refusing job %d: %s", self.name, spec.job_id, why)
            report = _report(spec.job_id, spec.attempt, agent_pb2.PHASE_REFUSED, message=why)
            self.parts[spec.key] = SimPart(
                spec.job_id, spec.attempt, spec.consumer, spec.gpu_indices, set(), False, report
            )
            self._send(report)
            return
        if spec.elastic is not None:
            live = {gpu for _, gpu in spec.elastic.workers}
        else:
            live = set(spec.gpu_indices)
        run_s, code = self._draw(spec)
        report = _report(
            spec.job_id,
            spec.attempt,
            agent_pb2.PHASE_RUNNING,
            pid=100_000 + len(self.parts),
            gpus=live,
        )
        part = SimPart(
            spec.job_id,
            spec.attempt,
            spec.consumer,
            spec.gpu_indices,
            live,
            spec.elastic is not None,
            report,
        )
        self.parts[spec.key] = part
        self.counters.busy(part.consumer, len(live))
        loop = asyncio.get_running_loop()
        delay = self.behaviour.start_delay_s
        if delay > 0:
            loop.call_later(delay, self._send_if_running, part)
        else:
            self._send(report)
        if run_s != float("inf"):
            part.timer = loop.call_later(delay + run_s, self._end, part, code, "")

    def _send_if_running(self, part: SimPart) -> None:
        if not part.ended and self.parts.get(part.key) is part:
            self._send(part.report)

    def _draw(self, spec: JobSpec) -> tuple[float, int]:
        """(run time, exit code): from the job's environment, else drawn from a seed of
        the job and attempt, so that every node of a multi-node job draws the same."""
        rng = random.Random(f"{self.behaviour.seed}:{spec.job_id}:{spec.attempt}")
        run_s = _float(spec.env.get(ENV_RUN))
        if run_s is None:
            run_s = max(0.0, self.behaviour.draw_run(rng))
        code = _int(spec.env.get(ENV_EXIT))
        if code is None:
            failed = rng.random() < self.behaviour.fail_rate
            code = self.behaviour.fail_code if failed else 0
        return run_s, code

    def _stop(self, req: StopRequest) -> None:
        part = self.parts.get(req.key)
        if part is None or part.ended or part.stopping:
            return  # a second stop cannot lengthen the grace; ours ends within the first
        self.counters.stops += 1
        part.stopping = True
        if part.timer is not None:
            part.timer.cancel()
        grace = max(0.0, req.grace_seconds)
        code = -signal.SIGTERM if grace > 0 else -signal.SIGKILL
        why = f"; stop requested: {req.reason or 'stop requested'}"
        delay = min(grace, self.behaviour.stop_delay_s)
        part.timer = asyncio.get_running_loop().call_later(delay, self._end, part, code, why)

    def _end(self, part: SimPart, code: int, why: str) -> None:
        if part.ended or self.parts.get(part.key) is not part:
            return
        self.counters.exits += 1
        self.counters.busy(part.consumer, -len(part.live))
        part.live.clear()
        part.timer = None
        part.report = _report(
            part.job_id,
            part.attempt,
            agent_pb2.PHASE_EXITED,
            exit_code=code,
            pid=part.report.pid,
            message=describe_exit(code) + why,
        )
        self._send(part.report)

    def _resize(self, msg: agent_pb2.ResizeJob) -> None:
        part = self.parts.get((msg.job_id, msg.attempt))
        if part is None or not part.elastic:
            return
        if part.ended:
            self._send(part.report)
            return
        leaving = [g for g in msg.release_gpus if g in part.live and g not in part.releasing]
        if msg.add and not part.stopping:
            added = [w.gpu_index for w in msg.add if w.gpu_index not in part.live]
            held = self.running_gpus()
            if any(g in held for g in added):
                log.error(
                    "node %s: joiners of job %d on held GPUs %s", self.name, part.job_id, added
                )
                self.counters.refused += 1
            else:
                self.counters.grows += 1
                part.live.update(added)
                self.counters.busy(part.consumer, len(added))
        part.releasing.update(leaving)
        if leaving:
            self.counters.releases += 1
            delay = min(max(0.0, msg.grace_seconds), self.behaviour.release_delay_s)
            asyncio.get_running_loop().call_later(delay, self._released, part, leaving)
        part.report = _with_gpus(part.report, part.live)
        self._send(part.report)

    def _released(self, part: SimPart, gpus: list[int]) -> None:
        if part.ended or self.parts.get(part.key) is not part:
            return
        gone = [g for g in gpus if g in part.live]
        part.live.difference_update(gone)
        part.releasing.difference_update(gpus)
        self.counters.busy(part.consumer, -len(gone))
        part.report = _with_gpus(part.report, part.live)
        self._send(part.report)

    def _cancel_timers(self) -> None:
        for part in self.parts.values():
            if part.timer is not None:
                part.timer.cancel()
                part.timer = None


def kind_of(command: JobSpec | StopRequest) -> str:
    return "start" if isinstance(command, JobSpec) else "stop"


async def _drain(out: Outbox) -> AsyncIterator[agent_pb2.AgentMessage]:
    while (msg := await out.get()) is not None:
        yield msg


def _report(
    job_id: int,
    attempt: int,
    phase: int,
    *,
    exit_code: int = 0,
    pid: int = 0,
    message: str = "",
    gpus: set[int] | tuple[int, ...] = (),
) -> agent_pb2.JobReport:
    return agent_pb2.JobReport(
        job_id=job_id,
        attempt=attempt,
        phase=phase,  # type: ignore[arg-type]
        exit_code=exit_code,
        pid=pid,
        message=message,
        time=time.time(),
        gpu_indices=sorted(gpus),
    )


def _with_gpus(report: agent_pb2.JobReport, live: set[int]) -> agent_pb2.JobReport:
    new = agent_pb2.JobReport()
    new.CopyFrom(report)
    del new.gpu_indices[:]
    new.gpu_indices.extend(sorted(live))
    new.time = time.time()
    return new


_PHASES = {
    agent_pb2.PHASE_RUNNING: Phase.RUNNING,
    agent_pb2.PHASE_EXITED: Phase.EXITED,
    agent_pb2.PHASE_REFUSED: Phase.REFUSED,
}


def _model_report(r: agent_pb2.JobReport) -> PartReport:
    """The agent model's PartReport of a wire report, for agent.reconcile."""
    return PartReport(r.job_id, r.attempt, _PHASES[r.phase])


def _fake_uuid(node: str, index: int) -> str:
    """Stable and unique per (node, index), shaped like NVML's."""
    h = hashlib.sha256(f"{node}/{index}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        value = float(text)
        if value >= 0:
            return value
    return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return int(text)
    return None
