"""The agent looks at its jobs when the kernel says something happened (agent/wakeups): a
shim's exit fires its pidfd, a cgroup v2 emptying fires its cgroup.events with POLLPRI, and
the runner names those sources and its own deadlines. Real processes, real cgroups.

No timing is asserted. Each test waits for the event source itself (select on the epoll set,
with a deadline that only a missing event would reach) before it looks, so a job that ends
is seen through its event, never because a clock came round.
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import job_spec, make_runner, pid_alive, read_pid, sh, unique_node, wait_for
from test_agent_adopt import FirstAgent
from test_agent_link import AS_ME, free_port, start_daemon

import agent.link
from agent.cgroups import ContainmentUnavailable, choose_containment, purge
from agent.gpus import GpuDevice
from agent.link import Identity, Link
from agent.model import PartReport, Phase, StopRequest
from agent.runner import Runner
from agent.wakeups import Emptied, Exit, Wakeups
from agent.worker import AdoptedShim, ChildShim
from schedulerd.api.v1 import agent_pb2
from schedulerd.api.v1.agent_pb2 import PHASE_EXITED, PHASE_RUNNING

DEADLINE = 30.0


def cgroup2_usable() -> bool:
    try:
        choose_containment("cgroup2", unique_node())
    except ContainmentUnavailable:
        return False
    return True


needs_cgroup2 = pytest.mark.skipif(not cgroup2_usable(), reason="no writable cgroup v2 here")


def fired(wakeups: Wakeups, timeout: float) -> bool:
    """Does the epoll set read ready within `timeout` (0: right now)?"""
    return bool(select.select([wakeups.fileno()], [], [], timeout)[0])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def wakeups() -> Iterator[Wakeups]:
    w = Wakeups()
    try:
        yield w
    finally:
        w.close()


def test_a_shims_exit_fires_its_pidfd(wakeups: Wakeups) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    shim = ChildShim(proc, proc.pid)
    try:
        wakeups.watch([Exit(shim.pid, shim.start_time, shim)])
        assert wakeups.watching() == 1
        assert not fired(wakeups, 0) and wakeups.drain() == 0  # it runs: nothing to say
        assert proc.stdin is not None
        proc.stdin.close()  # now it ends
        assert fired(wakeups, DEADLINE), "no wakeup from the pidfd of a process that exited"
        assert wakeups.drain() == 1
        assert shim.exited() and shim.fileno() == -1  # its own pidfd is closed once seen
        wakeups.watch([])
        assert wakeups.watching() == 0 and not fired(wakeups, 0)
    finally:
        proc.kill()
        proc.wait()


@needs_cgroup2
def test_a_cgroup_emptying_fires_its_events_file(wakeups: Wakeups) -> None:
    node = unique_node()
    box = choose_containment("cgroup2", node)
    cgroup = box.create("job-1.0", 0)
    member = subprocess.Popen(
        ["/bin/sh", "-c", f"echo $$ > {box.procs_file(cgroup)}; exec cat"], stdin=subprocess.PIPE
    )
    try:
        wait_for("the process to join its cgroup", lambda: box.populated(cgroup))
        wakeups.watch([Emptied(box.events_file(cgroup))])
        assert not wakeups.pending and not fired(wakeups, 0)
        assert member.stdin is not None
        member.stdin.close()  # cat ends, and with it the only process of the cgroup
        assert fired(wakeups, DEADLINE), "no POLLPRI from cgroup.events when it emptied"
        assert wakeups.drain() == 1
        assert not box.populated(cgroup)
        assert not fired(wakeups, 0)  # read again: re-armed, nothing new
    finally:
        member.kill()
        member.wait()
        purge(node)


@needs_cgroup2
def test_a_cgroup_empty_or_gone_before_it_is_watched_is_pending(wakeups: Wakeups) -> None:
    node = unique_node()
    box = choose_containment("cgroup2", node)
    try:
        empty = box.create("job-1.0", 0)
        wakeups.watch([Emptied(box.events_file(empty))])
        assert wakeups.pending  # its event is past: whoever watches must look again
        assert wakeups.drain() == 1 and not wakeups.pending
        wakeups.watch([Emptied(box.events_file(empty)), Emptied("/no/such/cgroup.events")])
        assert wakeups.pending and wakeups.watching() == 1
    finally:
        purge(node)


def test_watch_keeps_exactly_what_is_wanted_and_leaks_no_fd(tmp_path: Path) -> None:
    before = open_fds()
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    shims = [ChildShim(p, p.pid) for p in procs]
    sources = [Exit(s.pid, s.start_time, s) for s in shims]
    w = Wakeups()
    try:
        w.watch(sources)
        assert w.watching() == 3
        w.watch(sources[1:])  # one no longer wanted: forgotten
        assert w.watching() == 2
        w.watch(sources)
        assert w.watching() == 3
    finally:
        w.close()
        for p in procs:
            p.kill()
            p.wait()
        for s in shims:
            assert s.exited()
    assert open_fds() == before


@pytest.mark.parametrize("kind", [pytest.param("cgroup2", marks=needs_cgroup2), "pgroup"])
def test_a_job_that_ends_is_seen_through_its_events_alone(
    tmp_path: Path, kind: str, wakeups: Wakeups
) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    with make_runner(tmp_path / "state", kind) as runner:
        runner.start(job_spec(1, 0, sh(f"read x < {fifo}; exit 3")))
        runner.poll()
        sources = runner.sources()
        shim = runner._parts[(1, 0)].workers[0].shim
        assert shim is not None
        wanted = {Exit(shim.pid, shim.start_time, shim)}
        if kind == "cgroup2":
            wanted.add(Emptied(f"{runner._parts[(1, 0)].workers[0].cgroup}/cgroup.events"))
        assert set(sources) == wanted
        assert runner.due_in() is None  # nothing is due: only an event can change it
        wakeups.watch(sources)
        assert not fired(wakeups, 0) and not wakeups.pending
        fd = os.open(fifo, os.O_WRONLY)  # the job reads its line and exits
        os.write(fd, b"go\n")
        os.close(fd)
        report = _ended_through_events(runner, wakeups, 1)
        assert report.exit_code == 3
        assert runner.sources() == [] and runner.due_in() is None


@needs_cgroup2
def test_a_straggler_left_in_the_cgroup_is_killed_and_its_end_seen_through_events(
    tmp_path: Path, wakeups: Wakeups
) -> None:
    # The command leaves a process in another session (out of reach of the shim's group
    # kill): the worker ends only once the agent has killed its cgroup and the cgroup says
    # it is empty.
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    script = (
        f"setsid sleep 600 & echo $! > {tmp_path}/pid.tmp; mv {tmp_path}/pid.tmp {tmp_path}/pid; "
        f"read x < {fifo}"
    )
    with make_runner(tmp_path / "state", "cgroup2") as runner:
        runner.start(job_spec(1, 0, sh(script)))
        straggler = read_pid(tmp_path / "pid")
        wakeups.watch(runner.sources())
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, b"go\n")
        os.close(fd)
        report = _ended_through_events(runner, wakeups, 1)
        assert report.exit_code == 0
        assert not pid_alive(straggler)


def _ended_through_events(runner: Runner, wakeups: Wakeups, job: int) -> PartReport:
    """Wait for wakeups only, looking after each one, until the part has ended (the loop of
    agent/link.py, without its backstop)."""
    for _ in range(100):  # each turn is one wakeup; a job ends in a few
        report = runner.report((job, 0))
        assert report is not None
        if report.phase.ended:
            return report
        if not wakeups.pending:
            assert fired(wakeups, DEADLINE), "the job's end announced no event"
        wakeups.drain()
        runner.poll()
        wakeups.watch(runner.sources())
    raise AssertionError("the job did not end after 100 wakeups")


def test_due_in_is_the_grace_of_a_stop_and_then_nothing(tmp_path: Path) -> None:
    now = [1000.0]
    with make_runner(tmp_path / "state", monotonic=lambda: now[0]) as runner:
        runner.start(job_spec(1, 0, ("sleep", "600")))
        assert runner.due_in() is None
        runner.stop(StopRequest(1, 0, 7.0, "test"))
        assert runner.due_in() == 7.0  # its SIGKILL, if SIGTERM has not ended it
        runner.stop(StopRequest(1, 0, 2.0, "test"))
        assert runner.due_in() == 2.0  # a second stop can only shorten it
        now[0] += 5.0
        assert runner.due_in() == 0.0


def test_the_links_poller_reports_an_exit_with_its_backstop_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the backstop an hour away, the EXITED report can only come from the pidfd (and
    # the cgroup's events): the link's poller is woken by them.
    monkeypatch.setattr(agent.link, "BACKSTOP_S", 3600.0)
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    asyncio.run(asyncio.wait_for(_link_scenario(tmp_path, fifo), 120))


async def _link_scenario(tmp_path: Path, fifo: Path) -> None:
    port = free_port()
    server, daemon = await start_daemon(port)
    identity = Identity(
        node=unique_node(),
        pool="default",
        gpus=(GpuDevice(0, "GPU-fake-0", "fake", 1 << 30),),
        fake_gpus=True,
        hostname="test",
        agent_version="test",
    )
    with make_runner(tmp_path / "state", node=identity.node) as runner:
        link = Link(f"127.0.0.1:{port}", identity, runner, state_dir=tmp_path / "state")
        task = asyncio.create_task(link.run())
        try:
            await daemon.expect("register")
            daemon.send(registered=agent_pb2.Registered(heartbeat_interval=3600, epoch=1))
            start = agent_pb2.StartJob(
                job_id=1, command=["/bin/sh", "-c", f"read x < {fifo}; exit 4"], epoch=1, **AS_ME
            )
            daemon.send(start=start)
            await daemon.report(1, PHASE_RUNNING)
            looks = link.looks
            await asyncio.to_thread(_write_line, fifo)
            assert (await daemon.report(1, PHASE_EXITED)).exit_code == 4
            assert link.looks > looks
            assert runner.report((1, 0)) is not None
            assert runner.report((1, 0)).phase is Phase.EXITED  # type: ignore[union-attr]
        finally:
            link.request_stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.stop(None)


def _write_line(fifo: Path) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, b"go\n")
    os.close(fd)


@pytest.mark.parametrize("kind", [pytest.param("cgroup2", marks=needs_cgroup2), "pgroup"])
def test_an_adopted_parts_end_is_seen_through_its_events(
    tmp_path: Path, kind: str, wakeups: Wakeups
) -> None:
    # The agent that started it was SIGKILLed: the shim is no child of this runner, which
    # holds it by the pidfd adoption opened (agent/worker.AdoptedShim).
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    wd = tmp_path / "wd"
    wd.mkdir()
    node = unique_node()
    first = FirstAgent(tmp_path / "state", node, kind)
    try:
        first.ask(op="start", job=1, command=sh(f"read x < {fifo}; exit 6"), wd=str(wd))
    finally:
        first.sigkill()
    with make_runner(tmp_path / "state", kind, node=node) as second:
        (report,) = second.adopt()
        assert report.phase is Phase.RUNNING
        shim = second._parts[(1, 0)].workers[0].shim
        assert isinstance(shim, AdoptedShim)
        assert Exit(shim.pid, shim.start_time, shim) in second.sources()
        wakeups.watch(second.sources())
        assert not fired(wakeups, 0) and not wakeups.pending
        _write_line(fifo)
        assert _ended_through_events(second, wakeups, 1).exit_code == 6
