"""Adoption: an agent that was SIGKILLed is restarted on the same state dir and takes its
parts back. The first agent is a real process (a runner driven over stdin) that the test
SIGKILLs, so its jobs really are orphans of a dead agent and not children of the test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    Users,
    job_spec,
    kill_quietly,
    make_runner,
    open_dir,
    pid_alive,
    read_pid,
    sh,
    throwaway_users,
    unique_node,
    wait_ended,
    wait_for,
)

import agent
from agent import partstate
from agent.cgroups import ContainmentUnavailable, choose_containment, find_mount
from agent.model import PartReport, Phase, ResizeRequest, StopRequest
from agent.part import LOST_MESSAGE
from agent.runner import Runner
from agent.worker import start_time

# The first agent: a Runner that starts, stops and polls parts when told (one JSON line each) and
# answers with the part's report, until it is SIGKILLed.
DRIVER = """
import json, os, pwd, sys
from pathlib import Path
from agent.cgroups import choose_containment
from agent.model import ElasticSpec, JobSpec, StopRequest
from agent.runner import Runner
state, node, kind = sys.argv[1:4]
runner = Runner(Path(state), node, containment=choose_containment(kind, node))
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "start":
        elastic = cmd.pop("elastic", None)
        if elastic:
            workers = tuple((w, w) for w in elastic)
            elastic = ElasticSpec("127.0.0.1:1", 1, 4, tuple(elastic), workers)
        report = runner.start(JobSpec(
            cmd["job"], 0, tuple(cmd["command"]), env=cmd.get("env", {}),
            working_dir=cmd["wd"], gpu_indices=tuple(cmd.get("gpus", ())), elastic=elastic,
            user=cmd.get("user", pwd.getpwuid(os.geteuid()).pw_name), allow_root=True))
    elif cmd["op"] == "stop":
        report = runner.stop(StopRequest(cmd["job"], 0, cmd["grace"], "preempted"))
    else:
        runner.poll()
        report = runner.report((cmd["job"], 0))
    answer = {"phase": report.phase.value, "pid": report.pid, "gpus": report.gpu_indices}
    print(json.dumps(answer), flush=True)
"""

KINDS = ["cgroup2", "cgroup1", "pgroup"]


def usable(kind: str) -> bool:
    try:
        choose_containment(kind, unique_node())
    except ContainmentUnavailable:
        return False
    return True


class FirstAgent:
    def __init__(self, state: Path, node: str, kind: str) -> None:
        src = str(Path(agent.__file__).resolve().parent.parent)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(state), node, kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": src},
            text=True,
        )

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def sigkill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(
    params=[pytest.param(k, marks=pytest.mark.skipif(not usable(k), reason=k)) for k in KINDS]
)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def node() -> str:
    return unique_node()


@pytest.fixture
def wd(tmp_path: Path) -> Path:
    d = tmp_path / "wd"
    d.mkdir()
    return d


@pytest.fixture
def first(tmp_path: Path, node: str, kind: str) -> Iterator[FirstAgent]:
    agent = FirstAgent(tmp_path / "state", node, kind)
    yield agent
    agent.sigkill()


@pytest.fixture
def second(tmp_path: Path, node: str, kind: str) -> Iterator[Runner]:
    """The restarted agent (made before `first` is torn down: it cleans up after both)."""
    with make_runner(tmp_path / "state", kind, node=node) as runner:
        yield runner


def shim_of(state: Path, job: int, worker: int = 0) -> dict[str, Any]:
    record = json.loads((state / "parts" / f"{job}.0.json").read_text())
    shim: dict[str, Any] = record["workers"][worker]
    return shim


def wait_shim_gone(state: Path, job: int) -> None:
    shim = shim_of(state, job)
    wait_for("the shim to exit", lambda: start_time(shim["shim_pid"]) != shim["shim_start"])


# Traps the first SIGTERM (writes term-1), exits 7 on the second: tells whether a restarted
# agent sent SIGTERM again to a part that was stopping.
TWO_TERMS = (
    "n=0; trap 'n=$((n+1)); echo > term-$n; [ $n -ge 2 ] && exit 7' TERM; "
    "echo $$ > leader.pid; while :; do sleep 0.05; done"
)


def test_a_running_part_is_adopted_stopped_and_its_real_exit_code_seen(
    first: FirstAgent, second: Runner, wd: Path
) -> None:
    script = "trap 'exit 7' TERM; echo $$ > leader.pid; while :; do sleep 0.05; done"
    started = first.ask(op="start", job=1, command=sh(script), wd=str(wd), gpus=[0])
    leader = read_pid(wd / "leader.pid")
    first.sigkill()

    (report,) = second.adopt()
    assert (report.phase, report.pid, report.gpu_indices) == (Phase.RUNNING, started["pid"], (0,))
    # Its GPU is held: a part of another job is refused it.
    assert second.start(job_spec(2, 0, ("true",), gpu_indices=(0,))).phase is Phase.REFUSED
    second.stop(StopRequest(1, 0, 30.0, "preempted"))
    ended = wait_ended(second, 1)
    assert (ended.phase, ended.exit_code) == (Phase.EXITED, 7)  # from the shim's status file
    assert ended.message == "exit code 7; stop requested: preempted"
    assert not pid_alive(leader)


def test_a_part_that_ended_while_the_agent_was_away_has_its_real_exit_code(
    tmp_path: Path, first: FirstAgent, second: Runner, wd: Path
) -> None:
    script = "echo $$ > leader.pid; while [ ! -e go ]; do sleep 0.02; done; exit 5"
    first.ask(op="start", job=1, command=sh(script), wd=str(wd))
    read_pid(wd / "leader.pid")
    first.sigkill()
    (wd / "go").write_text("")
    wait_shim_gone(tmp_path / "state", 1)
    status = json.loads(Path(shim_of(tmp_path / "state", 1)["status_file"]).read_text())

    (report,) = second.adopt()
    assert (report.phase, report.exit_code, report.message) == (Phase.EXITED, 5, "exit code 5")
    assert report.time == status["time"]  # when it ended, not when the agent came back
    assert second.poll() == []  # reported once, by adopt
    assert second.reports() == [report]  # and kept until acked
    assert second.ack(1, 0)
    assert list((tmp_path / "state" / "parts").iterdir()) == []


def test_no_status_file_means_lost(
    tmp_path: Path, first: FirstAgent, second: Runner, wd: Path
) -> None:
    script = "echo $$ > leader.pid; while [ ! -e go ]; do sleep 0.02; done; exit 5"
    first.ask(op="start", job=1, command=sh(script), wd=str(wd))
    read_pid(wd / "leader.pid")
    first.sigkill()
    (wd / "go").write_text("")
    wait_shim_gone(tmp_path / "state", 1)
    Path(shim_of(tmp_path / "state", 1)["status_file"]).unlink()

    (report,) = second.adopt()
    assert (report.phase, report.message) == (Phase.LOST, LOST_MESSAGE)


def test_a_part_that_was_stopping_gets_sigterm_again(
    first: FirstAgent, second: Runner, wd: Path
) -> None:
    first.ask(op="start", job=1, command=sh(TWO_TERMS), wd=str(wd))
    read_pid(wd / "leader.pid")
    first.ask(op="stop", job=1, grace=60.0)
    wait_for("the first SIGTERM", (wd / "term-1").exists)
    first.sigkill()  # maybe before it could have sent SIGTERM: the next agent cannot know

    second.adopt()
    ended = wait_ended(second, 1)
    assert (ended.exit_code, ended.message) == (7, "exit code 7; stop requested: preempted")


def test_a_part_whose_kill_was_due_while_the_agent_was_away_is_killed_at_once(
    tmp_path: Path, first: FirstAgent, second: Runner, wd: Path
) -> None:
    script = "trap '' TERM; sleep 1000 & echo $! > child.pid; echo $$ > leader.pid; wait"
    first.ask(op="start", job=1, command=sh(script), wd=str(wd))
    pids = [read_pid(wd / "leader.pid"), read_pid(wd / "child.pid")]
    first.ask(op="stop", job=1, grace=0.2)  # the first agent never polls: no SIGKILL from it
    first.sigkill()
    deadline = shim_of(tmp_path / "state", 1)["kill_deadline"]
    wait_for("the kill deadline to pass", lambda: time.time() > deadline)
    assert all(pid_alive(p) for p in pids)

    second.adopt()
    ended = wait_ended(second, 1)
    assert ended.exit_code == -signal.SIGKILL
    assert [p for p in pids if pid_alive(p)] == []


def test_an_adopted_elastic_part_can_be_shrunk_and_stopped(
    first: FirstAgent, second: Runner, wd: Path
) -> None:
    script = (
        "trap 'exit 0' USR1; trap 'exit 143' TERM; "
        "echo $$ > leader-$SCHEDULERD_WORKER_ID.pid; while :; do sleep 0.05; done"
    )
    first.ask(op="start", job=1, command=sh(script), wd=str(wd), gpus=[0, 1], elastic=[0, 1])
    read_pid(wd / "leader-0.pid"), read_pid(wd / "leader-1.pid")
    first.sigkill()

    (report,) = second.adopt()
    assert report.gpu_indices == (0, 1)
    second.resize(ResizeRequest(1, 0, release=(1,), grace_seconds=30.0))

    def shrunk() -> PartReport | None:
        second.poll()
        r = second.report((1, 0))
        return r if r is not None and r.gpu_indices == (0,) else None

    assert wait_for("GPU 1 to be free", shrunk).phase is Phase.RUNNING
    second.stop(StopRequest(1, 0, 30.0, "cancelled"))
    assert wait_ended(second, 1).exit_code == 143


@pytest.fixture
def users() -> Iterator[Users]:
    with throwaway_users() as made:
        yield made


# Each worker writes the uid it runs as, then says who it is in the log.
WHO = (
    "id -u > uid-$SCHEDULERD_WORKER_ID.tmp; mv uid-$SCHEDULERD_WORKER_ID.tmp "
    "uid-$SCHEDULERD_WORKER_ID; echo worker $SCHEDULERD_WORKER_ID; exec sleep 1000"
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None, reason="makes a user: root only"
)
def test_a_user_s_part_is_adopted_and_its_joiners_run_as_that_user(
    users: Users, first: FirstAgent, second: Runner
) -> None:
    """The record keeps who a part runs as: a joiner started by the next agent runs as the
    same user, and the job's log, in its user's folder, is still read and written."""
    user = users.add()  # `users` first: torn down last, once no process of the user is left
    with open_dir() as wd:
        os.chown(wd, user.pw_uid, user.pw_gid)
        first.ask(
            op="start", job=1, command=sh(WHO), wd=str(wd), gpus=[0], elastic=[0], user=user.pw_name
        )
        assert read_pid(wd / "uid-0") == user.pw_uid
        first.sigkill()

        (report,) = second.adopt()
        assert report.phase is Phase.RUNNING
        second.resize(ResizeRequest(1, 0, add=((1, 1),)))
        assert read_pid(wd / "uid-1") == user.pw_uid
        second.stop(StopRequest(1, 0, 0.0, "done"))
        wait_ended(second, 1)
    log = second.read_log(1, 0, 0)[0].decode().splitlines()
    assert {"worker 0", "worker 1"} <= set(log)
    assert log[-1].startswith("--- schedulerd job 1 attempt 0 ended: killed by signal 9")


def test_an_elastic_part_whose_training_ended_before_the_restart_gets_no_joiners(
    tmp_path: Path, first: FirstAgent, second: Runner, wd: Path
) -> None:
    script = '[ "$SCHEDULERD_WORKER_ID" = 1 ] && exit 0; while :; do sleep 0.05; done'
    first.ask(op="start", job=1, command=sh(script), wd=str(wd), gpus=[0, 1], elastic=[0, 1])
    wait_for("worker 1's end to be recorded", lambda: first.ask(op="poll", job=1)["gpus"] == [0])
    first.sigkill()

    (report,) = second.adopt()
    assert (report.phase, report.gpu_indices) == (Phase.RUNNING, (0,))
    report = second.resize(ResizeRequest(1, 0, add=((2, 2),)))
    assert report is not None and report.gpu_indices == (0,)
    assert len(json.loads((tmp_path / "state" / "parts" / "1.0.json").read_text())["workers"]) == 2


# --- what no record owns, and records that cannot be trusted -------------------------------


@pytest.mark.parametrize("cgroup_kind", [k for k in ("cgroup2", "cgroup1") if usable(k)])
def test_an_orphan_cgroup_is_killed_and_removed(
    tmp_path: Path, cgroup_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with make_runner(tmp_path / "state", cgroup_kind) as runner:
        orphan = Path(runner.containment.create("job-99.0", 0))
        proc = subprocess.Popen(sh(f"echo 0 > {orphan}/cgroup.procs; exec sleep 1000"))
        wait_for(
            "the orphan to be in its cgroup", lambda: runner.containment.populated(str(orphan))
        )
        with caplog.at_level(logging.WARNING, logger="agent.adopt"):
            assert runner.adopt() == []
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert not orphan.exists() and not orphan.parent.exists()
        assert any(str(orphan) in r.getMessage() for r in caplog.records)


def test_an_orphan_under_another_base_of_the_node_is_killed(tmp_path: Path) -> None:
    """An earlier agent of this node ran in another cgroup (a shell before a systemd unit)
    and its records are gone (a wiped state dir): its processes are still found and killed
    (review finding: they ran on beside a new attempt on the same GPU)."""
    mount = Path(find_mount(Path("/proc/self/mounts").read_text(), "cgroup2") or "")
    if not (mount / "cgroup.procs").exists():
        pytest.skip("no cgroup v2 here")
    elsewhere = mount / f"t-unit-{os.getpid()}"
    with make_runner(tmp_path / "state", "cgroup2") as runner:
        base = elsewhere / f"schedulerd-{runner.node}"
        orphan = base / "job-7.0" / "w0"
        orphan.mkdir(parents=True)
        proc = subprocess.Popen(sh(f"echo 0 > {orphan}/cgroup.procs; exec sleep 1000"))
        try:
            wait_for("the orphan in its cgroup", lambda: (orphan / "cgroup.procs").read_text())
            assert runner.adopt() == []
            assert proc.wait(timeout=30) == -signal.SIGKILL
            assert not orphan.exists()
        finally:
            kill_quietly(proc.pid)
            proc.wait()
            for d in (orphan, orphan.parent, base, elsewhere):
                with contextlib.suppress(OSError):
                    d.rmdir()


def test_a_reused_pid_is_not_taken_for_the_shim(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "1000"])
    try:
        started = wait_for("the stranger to start", lambda: start_time(stranger.pid))
        with make_runner(tmp_path / "state", "pgroup") as runner:
            spec = job_spec(1, 0, ("true",))
            worker = partstate.WorkerRecord(
                0,
                (),
                "",
                str(tmp_path / "none.json"),
                shim_pid=stranger.pid,
                shim_start=started + 1,
                kill_deadline=0.0,  # its kill would be overdue
            )
            report = PartReport(1, 0, Phase.RUNNING, pid=stranger.pid)
            record = partstate.PartRecord(spec, [worker], report, stop_reason="x", boot_id="")
            record.boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            partstate.save(runner.parts_dir, record)
            (adopted,) = runner.adopt()
            assert adopted.phase is Phase.LOST
        assert stranger.poll() is None  # never signalled
    finally:
        kill_quietly(stranger.pid)
        stranger.wait()


def test_an_unreadable_record_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with make_runner(tmp_path / "state") as runner:
        runner.parts_dir.mkdir(parents=True)
        (runner.parts_dir / "3.0.json").write_text('{"version": 1, "spec": ')
        with caplog.at_level(logging.ERROR, logger="agent.partstate"):
            assert runner.adopt() == []
        assert (runner.parts_dir / "3.0.bad").exists()
        assert not (runner.parts_dir / "3.0.json").exists()
        assert any("3.0.json" in r.getMessage() for r in caplog.records)


def test_a_record_of_an_agent_before_jobs_ran_as_users_is_read(tmp_path: Path) -> None:
    """No user in it (the part ran as the agent's user), no allow_root in its spec."""
    parts = tmp_path / "parts"
    record = partstate.PartRecord(job_spec(1, 0, ("true",)), [], PartReport(1, 0, Phase.LOST))
    partstate.save(parts, record)
    data = json.loads((parts / "1.0.json").read_text())
    del data["user"], data["spec"]["allow_root"]
    (parts / "1.0.json").write_text(json.dumps(data))
    (loaded,) = partstate.load_all(parts)
    assert (loaded.user, loaded.spec.allow_root) == (None, False)


def test_ended_parts_survive_a_restart_until_acked(tmp_path: Path) -> None:
    state, node = tmp_path / "state", unique_node()
    with make_runner(state, node=node) as runner:
        runner.start(job_spec(1, 0, sh("exit 2")))
        refused = runner.start(job_spec(2, 0, ("true",), gpu_indices=(0, 0)))
        ended = wait_ended(runner, 1)
    with make_runner(state, node=node) as runner:
        assert runner.adopt() == [ended, refused]
        assert runner.poll() == []
        assert runner.ack(1, 0) and runner.ack(2, 0)
    with make_runner(state, node=node) as runner:
        assert runner.adopt() == []
