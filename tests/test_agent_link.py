"""The agent as a real `python -m agent --fake-gpus 2` process against a stand-in daemon.

The daemon side is a small grpc.aio AgentService written here (a test double of the daemon
only): it records what the agent sends and lets the test send commands. Everything is real:
the agent process, its jobs, gRPC on 127.0.0.1, and the daemon going away and coming back.
No timing is asserted; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import agent
from agent.backoff import backoff_delay
from schedulerd.api.v1 import agent_pb2, agent_pb2_grpc
from schedulerd.api.v1.agent_pb2 import PHASE_EXITED, PHASE_RUNNING, PHASE_START_FAILED

DEADLINE = 30.0
# The agent runs jobs as their users (docs/agent.md); these run as the test's own, maybe root.
AS_ME: dict[str, Any] = {"user": pwd.getpwuid(os.geteuid()).pw_name, "allow_root": True}
AgentMessage = agent_pb2.AgentMessage
DaemonMessage = agent_pb2.DaemonMessage


class DaemonDouble(agent_pb2_grpc.AgentServiceServicer):
    """The daemon's end of one agent stream, driven by the test."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[AgentMessage] = asyncio.Queue()
        self.outbox: asyncio.Queue[DaemonMessage] = asyncio.Queue()

    async def Connect(
        self, request_iterator: AsyncIterator[AgentMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DaemonMessage]:
        async def read() -> None:
            async for msg in request_iterator:
                await self.received.put(msg)

        reader = asyncio.create_task(read())
        try:
            while True:
                get = asyncio.create_task(self.outbox.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:  # the agent ended its side: end ours too
                    get.cancel()
                    return
                yield get.result()
        finally:
            reader.cancel()

    def send(self, **kind: object) -> None:
        self.outbox.put_nowait(DaemonMessage(**kind))  # type: ignore[arg-type]

    async def expect(
        self, kind: str, match: Callable[[AgentMessage], bool] = lambda m: True
    ) -> AgentMessage:
        """The next message of this kind that matches; others (heartbeats...) are skipped."""

        async def next_match() -> AgentMessage:
            while True:
                msg = await self.received.get()
                if msg.WhichOneof("msg") == kind and match(msg):
                    return msg

        try:
            return await asyncio.wait_for(next_match(), DEADLINE)
        except TimeoutError:
            raise AssertionError(f"the agent sent no {kind} message in {DEADLINE} s") from None

    async def report(self, job: int, phase: int) -> agent_pb2.JobReport:
        msg = await self.expect(
            "report", lambda m: m.report.job_id == job and m.report.phase == phase
        )
        return msg.report

    async def round_trip(self, request_id: int, job: int = 0) -> agent_pb2.LogData:
        """A ReadLog and its answer: the agent handles messages in order, so everything sent
        before has been handled once this returns."""
        self.send(read_log=agent_pb2.ReadLog(request_id=request_id, job_id=job, max_bytes=65536))
        msg = await self.expect("log_data", lambda m: m.log_data.request_id == request_id)
        return msg.log_data

    async def wait_for_log(self, job: int, needle: bytes, present: bool = True) -> None:
        """Read the job's log until the needle is there (present) or the job's output has
        started without it (absent: the log has more than its header line)."""
        for request_id in itertools.count(1000):
            data = (await self.round_trip(request_id, job)).data
            lines = data.splitlines()
            if present and needle in lines:
                return
            if not present and len(lines) > 1:
                assert needle not in lines
                return
            await asyncio.sleep(0.02)


async def start_daemon(port: int) -> tuple[grpc.aio.Server, DaemonDouble]:
    server = grpc.aio.server()
    double = DaemonDouble()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(double, server)  # type: ignore[no-untyped-call]
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    await server.start()
    return server, double


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(what: str, check: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def reaped(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def start_agent(
    port: int, tmp_path: Path, node: str = "n1", *extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"agent-{node}.log"
    # The agent under test is the code this test imported, wherever it is installed from.
    src = str(Path(agent.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--daemon", f"127.0.0.1:{port}", "--node", node,
             "--fake-gpus", "2", "--state-dir", str(tmp_path / "state"),
             "--shutdown-grace", "10", "--log-level", "DEBUG",
             "--lock-dir", str(tmp_path / "locks"), *extra],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
        )  # fmt: skip
    return proc, log


def stop_agent(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    print(log.read_text())  # shown by pytest when the test fails


def job_7(wd: Path) -> agent_pb2.StartJob:
    # Runs until the test creates the file "go", then exits 5.
    code = (
        "import os, pathlib, sys, time\n"
        "while not pathlib.Path('go').exists(): time.sleep(0.02)\n"
        "print('job 7 done, GPUs', os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
        "sys.exit(5)\n"
    )
    return agent_pb2.StartJob(
        job_id=7, attempt=0, command=[sys.executable, "-c", code], working_dir=str(wd),
        gpu_indices=[1], consumer="/team", name="seven", num_nodes=1, **AS_ME,
    )  # fmt: skip


def test_agent_registers_runs_jobs_and_survives_a_daemon_restart(tmp_path: Path) -> None:
    port = free_port()
    wd = tmp_path / "wd"
    wd.mkdir()
    proc, log = start_agent(port, tmp_path)  # before the daemon: it must keep trying
    try:
        asyncio.run(asyncio.wait_for(_scenario(port, wd, proc), 180))
    finally:
        stop_agent(proc, log)


async def _scenario(port: int, wd: Path, proc: subprocess.Popen[bytes]) -> None:
    # 1. Register carries the node, the fake GPUs, and no jobs yet.
    server, daemon = await start_daemon(port)
    reg = (await daemon.expect("register")).register
    assert (reg.node, reg.pool, reg.fake_gpus) == ("n1", "default", True)
    assert [(g.index, g.uuid) for g in reg.gpus] == [(0, "GPU-fake-n1-0"), (1, "GPU-fake-n1-1")]
    assert all(g.memory_bytes == 80 * 1024**3 and "fake" in g.model for g in reg.gpus)
    assert reg.agent_version == agent.__version__ and reg.hostname and not reg.jobs
    daemon.send(registered=agent_pb2.Registered(heartbeat_interval=0.2))
    await daemon.expect("heartbeat")

    # 2. StartJob gives RUNNING with a pid; a resent StartJob starts no second process.
    daemon.send(start=job_7(wd))
    running = await daemon.report(7, PHASE_RUNNING)
    assert running.pid > 0 and running.attempt == 0
    daemon.send(start=job_7(wd))
    again = await daemon.report(7, PHASE_RUNNING)
    assert again.pid == running.pid

    # 3. ReadLog answers with the same request id.
    page = await daemon.round_trip(42, job=7)
    assert page.found
    assert page.data.startswith(b"--- schedulerd job 7 attempt 0 on node n1, GPUs 1 ---\n")
    assert page.next_offset == len(page.data)
    assert not (await daemon.round_trip(43, job=99)).found

    # 4. StopJob: SIGTERM ends a plain job (-15); a bad command is START_FAILED; both acked.
    daemon.send(start=agent_pb2.StartJob(job_id=8, command=["sleep", "1000"], **AS_ME))
    await daemon.report(8, PHASE_RUNNING)
    daemon.send(stop=agent_pb2.StopJob(job_id=8, grace_seconds=20, reason="test"))
    assert (await daemon.report(8, PHASE_EXITED)).exit_code == -15
    daemon.send(start=agent_pb2.StartJob(job_id=9, command=["/no/such/program"], **AS_ME))
    failed = await daemon.report(9, PHASE_START_FAILED)
    assert failed.exit_code == 127 and "/no/such/program" in failed.message
    daemon.send(ack=agent_pb2.AckReport(job_id=8))
    daemon.send(ack=agent_pb2.AckReport(job_id=9))
    await daemon.round_trip(44)

    # 5. The daemon goes away; job 7 ends while it is away.
    await server.stop(None)
    (wd / "go").touch()
    await until("the agent to reap job 7", lambda: reaped(running.pid))

    # 6. A new daemon on the same port: the agent comes back and reports the exit it saw.
    server, daemon = await start_daemon(port)
    reg = (await daemon.expect("register")).register
    assert [(j.job_id, j.attempt, j.phase, j.exit_code, j.pid) for j in reg.jobs] == [
        (7, 0, PHASE_EXITED, 5, running.pid)
    ]
    daemon.send(registered=agent_pb2.Registered(heartbeat_interval=0.2))
    page = await daemon.round_trip(45, job=7)
    assert b"job 7 done, GPUs 1\n" in page.data
    assert b"--- schedulerd job 7 attempt 0 ended: exit code 5 ---" in page.data

    # 7. AckReport clears it: the next Register no longer lists it.
    daemon.send(ack=agent_pb2.AckReport(job_id=7, attempt=0))
    daemon.send(start=agent_pb2.StartJob(job_id=10, command=["sleep", "1000"], **AS_ME))
    ten = await daemon.report(10, PHASE_RUNNING)
    await server.stop(None)
    server, daemon = await start_daemon(port)
    reg = (await daemon.expect("register")).register
    assert [(j.job_id, j.phase, j.pid) for j in reg.jobs] == [(10, PHASE_RUNNING, ten.pid)]
    daemon.send(registered=agent_pb2.Registered(heartbeat_interval=0.2))

    # 8. SIGTERM to the agent: it stops its jobs, reports them, and exits 0.
    proc.send_signal(signal.SIGTERM)
    assert (await daemon.report(10, PHASE_EXITED)).exit_code == -15
    assert await asyncio.to_thread(proc.wait, DEADLINE) == 0
    assert reaped(ten.pid)
    await server.stop(None)


def test_two_agents_on_one_machine_and_the_shutdown_choice(tmp_path: Path) -> None:
    """Two nodes on one machine keep apart; on SIGTERM n1 stops its job (the default) and n2,
    started with --keep-jobs-on-exit, leaves its job running."""
    ports = {"n1": free_port(), "n2": free_port()}
    agents = {
        "n1": start_agent(ports["n1"], tmp_path, "n1"),
        "n2": start_agent(ports["n2"], tmp_path, "n2", "--keep-jobs-on-exit"),
    }
    pids: dict[str, int] = {}
    try:
        asyncio.run(asyncio.wait_for(_two_agents(ports, agents, pids), 120))
        assert pids["n1"] > 0 and pids["n2"] > 0
    finally:
        for proc, log in agents.values():
            stop_agent(proc, log)
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


async def _two_agents(
    ports: dict[str, int],
    agents: dict[str, tuple[subprocess.Popen[bytes], Path]],
    pids: dict[str, int],
) -> None:
    servers, daemons = [], {}
    for node, port in ports.items():
        server, daemon = await start_daemon(port)
        servers.append(server)
        daemons[node] = daemon
        reg = (await daemon.expect("register")).register
        assert reg.node == node and reg.gpus[0].uuid == f"GPU-fake-{node}-0"
        daemon.send(registered=agent_pb2.Registered(heartbeat_interval=1))
        # The same job id on both nodes: each agent has its own state dir, so its own log.
        command = ["sh", "-c", "echo node=$SCHEDULERD_NODE; exec sleep 1000"]
        daemon.send(start=agent_pb2.StartJob(job_id=1, command=command, **AS_ME))
        pids[node] = (await daemon.report(1, PHASE_RUNNING)).pid
    for node, daemon in daemons.items():
        for n in ports:
            await daemon.wait_for_log(1, f"node={n}".encode(), present=(n == node))
    for proc, _ in agents.values():
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, DEADLINE) == 0
    # n1 stopped its job and told its daemon; n2's job outlives its agent.
    assert (await daemons["n1"].report(1, PHASE_EXITED)).exit_code == -15
    assert reaped(pids["n1"])
    os.killpg(pids["n2"], 0)  # raises if the group is gone
    for server in servers:
        await server.stop(None)


@pytest.mark.parametrize("failures", range(12))
def test_backoff_doubles_from_0_2_to_5_seconds_with_jitter(failures: int) -> None:
    ceiling = min(5.0, 0.2 * 2**failures)
    delays = [backoff_delay(failures, random.Random(seed)) for seed in range(50)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1  # jittered
