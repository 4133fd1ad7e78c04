"""The daemon link: one grpc.aio `AgentService.Connect` stream, reconnected forever.

A session: open a channel, send Register (with every part the runner still has: running ones
and ended ones the daemon has not acked), wait for Registered, send a Heartbeat every
interval, send a JobReport whenever a part changes phase, and execute what the daemon sends
(through `reconcile`, so a resent StartJob never starts a second process).

When the stream breaks or the daemon is not there, the link waits (exponential backoff with
jitter, see agent.backoff) and tries again, forever. Jobs keep running meanwhile: the runner
is polled whether or not a daemon is connected, and a report that could not be sent stays in
the runner until acked, so the next Register carries it. Nothing that ended while the daemon
was away is lost. Messages queued for a broken stream are dropped for the same reason: the
next Register supersedes them.

Sessions and leases (docs/fencing.md): the daemon's Registered carries the session's epoch,
and every start, stop and resize carries the epoch it was sent in; one from another session
is stale and ignored. The daemon answers each heartbeat; an agent that has heard nothing from
it for the lease (half the daemon's node timeout) stops its jobs, because by the node timeout
the daemon requeues them and may start them elsewhere: a partitioned node must not run them
on. The lease is kept in the state dir, so that an agent restarted during a partition still
knows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent import wire
from agent.backoff import backoff_delay
from agent.credentials import DaemonCredentials
from agent.gpus import GpuDevice
from agent.model import JobSpec, StopRequest
from agent.reconcile import Ignore, Report, StartPart, StopPart, reconcile
from agent.runner import Runner
from agent.wakeups import Wakeups
from agent.worker import LEASE_DEADLINE_FILE
from schedulerd.api.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

# The job processes are looked at when the kernel says one ended (agent/wakeups), when a
# deadline is due (a kill after its grace, the lease), after each daemon command and session
# change, and at least this often: a backstop for an event that never came, and the systemd
# watchdog's feed (WatchdogSec=60 in deploy/systemd wants one at least every 30 s; main.py
# shortens it for a shorter one).
BACKSTOP_S = 30.0
MIN_GAP_S = 0.01  # never more looks than this allows, whatever fires
FAILED_LOOK_RETRY_S = 1.0  # after a look that raised: an event still pending must not spin
DEFAULT_HEARTBEAT = 5.0  # used when the daemon's Registered says 0
MIN_HEARTBEAT = 0.05
LEASE_FILE = "daemon-lease"  # in the state dir: the last lease the daemon gave, in seconds

# A dead daemon host (no RST, e.g. powered off) would leave the stream hanging forever; HTTP/2
# keepalive pings find out. A gRPC server by default refuses pings more often than every 5
# minutes (and answers with GOAWAY "too_many_pings"), so stay above that.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 330_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # What one daemon message may be (a StartJob is bounded far below this).
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]

Outbox = asyncio.Queue[agent_pb2.AgentMessage | None]  # None: end the request stream


@dataclass(frozen=True)
class Identity:
    """Who this agent is, as told in every Register."""

    node: str
    pool: str
    gpus: tuple[GpuDevice, ...]
    fake_gpus: bool
    hostname: str
    agent_version: str
    address: str = ""  # where workers on other nodes reach this node


class Link:
    def __init__(
        self,
        target: str,
        identity: Identity,
        runner: Runner,
        *,
        rng: random.Random | None = None,
        state_dir: Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        credentials: DaemonCredentials | None = None,
    ) -> None:
        self.target = target
        self.credentials = credentials or DaemonCredentials()
        self.identity = identity
        self.runner = runner
        self._rng = rng or random.Random()
        self._out: Outbox | None = None  # the live session's outbox, if any
        self._stopping = asyncio.Event()
        self._registered = False
        self._epoch = 0  # this session's, from Registered; commands of others are stale
        self._mono = monotonic
        self._last_heard = monotonic()  # the daemon's last word (or this agent's start)
        self._lease_file = None if state_dir is None else Path(state_dir) / LEASE_FILE
        self._deadline_file = None if state_dir is None else Path(state_dir) / LEASE_DEADLINE_FILE
        self._deadline_written = 0.0
        self.lease_s = _read_lease(self._lease_file)
        self.lease_expired = False
        self.shutting_down = False
        # The live session's key for vouching for this node's users (agent/vouch.py).
        self.vouch_key: bytes | None = None
        # Called after every look at the job processes: the systemd watchdog and STATUS
        # are fed from here (agent/main.py), so a wedged agent stops feeding them.
        self.on_poll: Callable[[], None] | None = None
        self._look = asyncio.Event()  # look at the jobs now (a command, an event, a session)
        # At most this long between looks; main.py shortens it for a systemd watchdog that
        # wants to be fed more often.
        self.backstop_s = BACKSTOP_S
        self.looks = 0  # how many times the jobs were looked at (tests, benchmarks)
        # Called with the kind of each message as it goes on the stream (register,
        # heartbeat, report, log_data): the agent's metrics count them.
        self.on_send: Callable[[str], None] | None = None

    async def run(self) -> None:
        """Poll the jobs and keep a session with the daemon, until `request_stop`."""
        poller = asyncio.create_task(self._poll_forever())
        try:
            await self._connect_forever()
        finally:
            poller.cancel()

    def announce_shutdown(self) -> None:
        """Tell the daemon at once that nothing new should land here."""
        self.shutting_down = True
        self._send(_heartbeat(True))

    def check_lease(self) -> bool:
        """Stop every job if the daemon has been silent for the lease; True if it did."""
        if self.lease_s <= 0 or self._mono() - self._last_heard < self.lease_s:
            self.lease_expired = False
            return False
        if self.lease_expired or not self.runner.any_running():
            return False
        self.lease_expired = True
        silent = self._mono() - self._last_heard
        log.error(
            "no word from the daemon for %.0f s (lease %.0f s): stopping every job here, "
            "as the daemon will requeue them at its node timeout",
            silent,
            self.lease_s,
        )
        self.runner.stop_all(
            self.lease_grace_s(), f"no word from the daemon for {silent:.0f} s", by_node=True
        )
        return True

    @property
    def connected(self) -> bool:
        """Registered with the daemon in the live session."""
        return self._registered and self._out is not None

    def request_stop(self) -> None:
        """End the stream politely (half-close); `run` returns when the daemon ends its side."""
        self._stopping.set()
        if self._out is not None:
            self._out.put_nowait(None)

    def poll_once(self) -> None:
        """Look at the job processes and report what changed (if a daemon is connected)."""
        for report in self.runner.poll():
            self._send(wire.report_message(report))

    def look_soon(self) -> None:
        """Have the poller look at the jobs at once (the runner's state was changed)."""
        self._look.set()

    # --- connection -----------------------------------------------------------------------

    async def _connect_forever(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            # The first try at INFO; the retries are logged by the warning below.
            log.log(
                logging.DEBUG if failures else logging.INFO,
                "connecting to the daemon at %s (try %d)",
                self.target,
                failures + 1,
            )
            self._registered = False
            try:
                await self._session()
                reason = "the daemon ended the stream"
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details()}"
                if _daemon_answered(e):
                    # Refused (its store is full, another agent has this node): but the
                    # daemon is there and requeues nothing meanwhile, so the lease holds.
                    self._heard()
            except Exception as e:
                # A bug here must not end the agent: its jobs still run, so keep trying.
                log.exception("daemon link failed unexpectedly")
                reason = f"{type(e).__name__}: {e}"
            if self._stopping.is_set():
                break
            if self._registered:
                failures = 0  # it worked for a while: start the backoff over
            delay = backoff_delay(failures, self._rng)
            failures += 1
            log.warning(
                "daemon link %s (%s); retrying in %.2f s",
                "lost" if self._registered else "failed",
                reason,
                delay,
            )
            with contextlib.suppress(TimeoutError):  # woken early by request_stop
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _session(self) -> None:
        async with self.credentials.channel(self.target, CHANNEL_OPTIONS) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            out: Outbox = asyncio.Queue()
            self.runner.poll()  # fresh state; what changed goes in the Register below
            out.put_nowait(
                wire.register(
                    node=self.identity.node,
                    pool=self.identity.pool,
                    gpus=self.identity.gpus,
                    fake_gpus=self.identity.fake_gpus,
                    agent_version=self.identity.agent_version,
                    hostname=self.identity.hostname,
                    jobs=self.runner.reports(),
                    address=self.identity.address,
                )
            )
            self._out = out
            if self._stopping.is_set():  # request_stop came while we were connecting
                out.put_nowait(None)
            heartbeats: asyncio.Task[None] | None = None
            call = stub.Connect(_drain(out, self._sending), metadata=self.credentials.metadata())
            try:
                async for msg in call:
                    self._heard()
                    if msg.WhichOneof("msg") == "registered":
                        self._epoch = msg.registered.epoch
                        self._set_lease(msg.registered.lease_seconds)
                        self.vouch_key = msg.registered.vouch_key or None
                        interval = _heartbeat_interval(msg.registered.heartbeat_interval)
                        log.info(
                            "registered with the daemon at %s as node %r (%d jobs reported), "
                            "heartbeat every %.2f s",
                            self.target,
                            self.identity.node,
                            len(self.runner.reports()),
                            interval,
                        )
                        self._registered = True
                        self.look_soon()  # the STATUS line and metrics say connected
                        if heartbeats is not None:
                            heartbeats.cancel()
                        heartbeats = asyncio.create_task(self._heartbeats(out, interval))
                    else:
                        await self._handle(msg)
            finally:
                self._out = None
                self.look_soon()
                self.vouch_key = None  # the daemon takes it back with the session
                if heartbeats is not None:
                    heartbeats.cancel()
                call.cancel()

    # --- what the daemon says -------------------------------------------------------------

    async def _handle(self, msg: agent_pb2.DaemonMessage) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "heartbeat":
            return  # the daemon is there: _last_heard is set
        if kind in ("start", "stop", "resize"):
            epoch = getattr(msg, kind).epoch
            if epoch != self._epoch:
                log.warning(
                    "ignoring a stale %s of job %d: sent in session %d, this is session %d",
                    kind,
                    getattr(msg, kind).job_id,
                    epoch,
                    self._epoch,
                )
                return
        try:
            if kind == "start":
                self._apply(wire.job_spec(msg.start))
            elif kind == "stop":
                self._apply(wire.stop_request(msg.stop))
            elif kind == "resize":
                report = self.runner.resize(wire.resize_request(msg.resize))
                if report is not None:
                    self._send(wire.report_message(report))
            elif kind == "ack":
                if not self.runner.ack(msg.ack.job_id, msg.ack.attempt):
                    log.debug(
                        "ack for job %d attempt %d: nothing to forget",
                        msg.ack.job_id,
                        msg.ack.attempt,
                    )
            elif kind == "read_log":
                await self._read_log(msg.read_log)
            else:
                log.warning("ignoring a daemon message of unknown kind %r", kind)
        except Exception:
            # One bad command must not take the link (and the node) down.
            log.exception("failed to handle a %r message from the daemon", kind)
        if kind in ("start", "stop", "resize"):
            self.look_soon()  # new processes to watch, new deadlines

    def _apply(self, command: JobSpec | StopRequest) -> None:
        for action in reconcile(command, self.runner.reports()):
            if isinstance(action, StartPart):
                self._send(wire.report_message(self.runner.start(action.spec)))
            elif isinstance(action, StopPart):
                self.runner.stop(action.request)  # the EXITED report comes from the poller
            elif isinstance(action, Report):
                report = self.runner.report(action.key)
                if report is not None:
                    self._send(wire.report_message(report))
            elif isinstance(action, Ignore):
                log.warning("%s", action.reason)

    async def _read_log(self, req: agent_pb2.ReadLog) -> None:
        data, found, next_offset = await asyncio.to_thread(
            self.runner.read_log, req.job_id, req.offset, req.max_bytes
        )
        self._send(
            agent_pb2.AgentMessage(
                log_data=agent_pb2.LogData(
                    request_id=req.request_id, data=data, found=found, next_offset=next_offset
                )
            )
        )

    # --- helpers --------------------------------------------------------------------------

    def _sending(self, msg: agent_pb2.AgentMessage) -> None:
        if self.on_send is not None:
            self.on_send(msg.WhichOneof("msg") or "")

    def _send(self, msg: agent_pb2.AgentMessage) -> None:
        if self._out is not None:
            self._out.put_nowait(msg)

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        wakeups = Wakeups()
        loop.add_reader(wakeups.fileno(), self._look.set)
        try:
            while True:
                self._look.clear()
                wakeups.drain()
                try:
                    self.check_lease()
                    self.poll_once()
                    self.looks += 1
                    wakeups.watch(self.runner.sources())
                    delay, gap = self._next_look(), MIN_GAP_S
                except Exception:
                    log.exception("polling the job processes failed")
                    delay = gap = FAILED_LOOK_RETRY_S
                if self.on_poll is not None:
                    self.on_poll()
                await asyncio.sleep(gap)
                if wakeups.pending or self._look.is_set():
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._look.wait(), delay)
        finally:
            loop.remove_reader(wakeups.fileno())
            wakeups.close()

    def _next_look(self) -> float:
        """Seconds until the jobs must be looked at if no event comes first."""
        due = [self.backstop_s]
        if (runner := self.runner.due_in()) is not None:
            due.append(runner)
        if self.lease_s > 0 and not self.lease_expired and self.runner.any_running():
            due.append(self._last_heard + self.lease_s - self._mono())
        return max(0.0, min(due))

    async def _heartbeats(self, out: Outbox, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            out.put_nowait(_heartbeat(self.shutting_down))

    def lease_grace_s(self) -> float:
        """The grace of a stop at the lease's end: the jobs are gone a quarter of the lease
        later (at most 10 s), well before the daemon requeues them at the node timeout."""
        return min(self.lease_s / 4, 10.0)

    def _heard(self) -> None:
        """The daemon said something: the lease runs from now. The shims learn it through
        the deadline file, written when it has moved on by a twentieth of the lease (at
        least a second): not at every heartbeat's answer, and a shim whose agent is gone
        then stops its job at most that much before the lease is over, never after."""
        self._last_heard = self._mono()
        if self._deadline_file is None or self.lease_s <= 0:
            return
        deadline = time.time() + self.lease_s
        if deadline - self._deadline_written < max(1.0, self.lease_s / 20):
            return
        try:
            tmp = self._deadline_file.with_suffix(".tmp")
            tmp.write_text(f"{deadline:.3f} {self.lease_grace_s():.3f}\n")
            tmp.replace(self._deadline_file)
            self._deadline_written = deadline
        except OSError as e:
            log.warning("cannot write the lease deadline %s: %s", self._deadline_file, e)

    def _set_lease(self, seconds: float) -> None:
        lease = seconds if math.isfinite(seconds) and seconds > 0 else 0.0
        if lease == self.lease_s:
            return
        self.lease_s = lease
        self._deadline_written = 0.0
        if lease <= 0 and self._deadline_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self._deadline_file.unlink()  # no lease: the shims keep their jobs
        if self._lease_file is not None:
            try:
                tmp = self._lease_file.with_suffix(".tmp")
                tmp.write_text(f"{lease}\n")
                tmp.replace(self._lease_file)
            except OSError as e:
                log.warning("cannot keep the daemon's lease in %s: %s", self._lease_file, e)


DAEMON_ANSWERED = "schedulerd-daemon-answered"  # schedulerd/daemon/services/agent_link.py


def _daemon_answered(e: grpc.aio.AioRpcError) -> bool:
    metadata = e.trailing_metadata() or ()
    return any(key == DAEMON_ANSWERED for key, _ in metadata)


def _read_lease(path: Path | None) -> float:
    """The lease the daemon last gave (0: none known, never self-fence)."""
    if path is None:
        return 0.0
    try:
        value = float(path.read_text().strip())
    except (OSError, ValueError):
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _heartbeat(shutting_down: bool) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(shutting_down=shutting_down))


async def _drain(
    out: Outbox, sending: Callable[[agent_pb2.AgentMessage], None] | None = None
) -> AsyncIterator[agent_pb2.AgentMessage]:
    while (msg := await out.get()) is not None:
        if sending is not None:
            sending(msg)
        yield msg


def _heartbeat_interval(asked: float) -> float:
    if not asked > 0:  # 0 (unset), negative or NaN
        return DEFAULT_HEARTBEAT
    return max(MIN_HEARTBEAT, asked)
