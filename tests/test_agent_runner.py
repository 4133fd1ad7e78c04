"""The job runner with real processes: env, logs, exit codes, stop with grace, process groups.

No timing is asserted; every wait has a deadline so that a broken runner fails, not hangs.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import (
    ME,
    job_spec,
    make_runner,
    pid_alive,
    python,
    read_pid,
    sh,
    wait_ended,
    wait_for,
)

from agent.model import ElasticSpec, JobSpec, Phase, ResizeRequest, StopRequest
from agent.runner import START_FAILED_EXIT_CODE, Runner


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    # Whatever a failed test left running is killed, and its cgroups removed.
    with make_runner(tmp_path / "state") as r:
        yield r


@pytest.fixture
def wd(tmp_path: Path) -> Path:
    d = tmp_path / "wd"
    d.mkdir()
    return d


def test_job_env_has_gpus_and_identity(runner: Runner, wd: Path) -> None:
    dump = "import json, os; json.dump(dict(os.environ), open('env.json', 'w'))"
    spec = job_spec(
        job_id=12,
        attempt=2,
        command=python(dump),
        env={"FOO": "bar", "CUDA_VISIBLE_DEVICES": "7"},  # the job cannot pick its own GPUs
        working_dir=str(wd),
        gpu_indices=(0, 3),
        consumer="/research/vision",
        name="resnet",
        node_rank=1,
        num_nodes=2,
        master_address="10.1.2.3:29500",
    )
    assert runner.start(spec).phase is Phase.RUNNING
    assert wait_ended(runner, 12, 2).exit_code == 0
    env = json.loads((wd / "env.json").read_text())
    assert env["FOO"] == "bar"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"  # --job-path, not the agent's
    assert env["CUDA_VISIBLE_DEVICES"] == "0,3"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.1.2.3", "29500")
    assert {k: v for k, v in env.items() if k.startswith("SCHEDULERD_")} == {
        "SCHEDULERD_JOB_ID": "12",
        "SCHEDULERD_ATTEMPT": "2",
        "SCHEDULERD_CONSUMER": "/research/vision",
        "SCHEDULERD_USER": ME,
        "SCHEDULERD_JOB_NAME": "resnet",
        "SCHEDULERD_NODE": runner.node,
        "SCHEDULERD_NODE_RANK": "1",
        "SCHEDULERD_NUM_NODES": "2",
        "SCHEDULERD_GPUS": "2",
    }


def test_job_without_gpus_sees_none(runner: Runner, wd: Path) -> None:
    dump = "import os; open('cvd', 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])"
    runner.start(job_spec(1, 0, python(dump), working_dir=str(wd)))
    wait_ended(runner, 1)
    assert (wd / "cvd").read_text() == ""


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_reported(runner: Runner, code: int) -> None:
    started = runner.start(job_spec(5, 0, python(f"import sys; sys.exit({code})")))
    assert started.pid > 0
    ended = wait_ended(runner, 5)
    assert (ended.phase, ended.exit_code, ended.pid) == (Phase.EXITED, code, started.pid)
    assert ended.message == f"exit code {code}"
    assert ended.time >= started.time > 0


def test_stdout_and_stderr_land_in_the_log(runner: Runner) -> None:
    script = sh("echo to-stdout; echo to-stderr >&2; pwd")
    runner.start(job_spec(12, 0, script, gpu_indices=(0, 1)))
    wait_ended(runner, 12)
    runner.start(job_spec(12, 1, script))
    wait_ended(runner, 12, 1)
    log = runner.log_path(12).read_text()
    assert runner.log_path(12) == runner.state_dir / "logs" / "job-12" / "job.log"
    lines = log.splitlines()
    assert lines[0] == f"--- schedulerd job 12 attempt 0 on node {runner.node}, GPUs 0,1 ---"
    assert "to-stdout" in lines and "to-stderr" in lines
    # No working dir given: a per-job directory under the state dir.
    assert str(runner.state_dir / "work" / "job-12") in lines
    # Each attempt appends under its own header.
    assert f"--- schedulerd job 12 attempt 1 on node {runner.node}, GPUs none ---" in lines
    assert lines.count("to-stdout") == 2


def test_read_log_pages_through_the_file(runner: Runner) -> None:
    runner.start(job_spec(4, 0, sh("echo hello")))
    wait_ended(runner, 4)
    whole = runner.log_path(4).read_bytes()
    data, found, nxt = runner.read_log(4, 0, 10)
    assert (data, found, nxt) == (whole[:10], True, 10)
    rest, found, end = runner.read_log(4, nxt, 0)  # 0: the default page size
    assert data + rest == whole and end == len(whole)
    assert runner.read_log(4, end, 10) == (b"", True, end)
    assert runner.read_log(99, 0, 10) == (b"", False, 0)


@pytest.mark.parametrize(
    "command, working_dir",
    [
        pytest.param(("/no/such/program",), "", id="missing-program"),
        pytest.param(("no-such-program-on-path-xyz",), "", id="not-on-path"),
        pytest.param(("NOT_EXECUTABLE",), "", id="not-executable"),
        pytest.param(("true",), "/no/such/dir", id="bad-working-dir"),
        pytest.param((), "", id="empty-command"),
    ],
)
def test_bad_command_is_start_failed(
    runner: Runner, tmp_path: Path, command: tuple[str, ...], working_dir: str
) -> None:
    if command == ("NOT_EXECUTABLE",):
        plain = tmp_path / "plain-file"
        plain.write_text("echo never\n")
        command = (str(plain),)
    report = runner.start(job_spec(3, 0, command, working_dir=working_dir))
    assert report.phase is Phase.START_FAILED
    assert report.exit_code == START_FAILED_EXIT_CODE == 127
    assert report.message and report.pid == 0
    assert runner.poll() == []
    assert runner.reports() == [report]


def test_start_failure_is_written_to_the_log(runner: Runner) -> None:
    report = runner.start(job_spec(3, 0, ("/no/such/program",)))
    assert report.message in runner.log_path(3).read_text()


def test_resent_start_does_not_start_a_second_process(runner: Runner) -> None:
    first = runner.start(job_spec(6, 0, sh("exec sleep 1000")))
    assert runner.start(job_spec(6, 0, sh("exec sleep 1000"))) == first
    assert runner.reports() == [first]


def test_stop_sends_sigterm_and_a_trapping_job_exits_0(runner: Runner, wd: Path) -> None:
    code = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "pathlib.Path('ready').write_text('1')\n"
        "while True: time.sleep(0.05)\n"
    )
    runner.start(job_spec(8, 0, python(code), working_dir=str(wd)))
    wait_for("the job to trap SIGTERM", (wd / "ready").exists)
    assert runner.stop(StopRequest(8, 0, 60.0, "preempted")) is not None
    ended = wait_ended(runner, 8)
    assert ended.exit_code == 0
    assert ended.message == "exit code 0; stop requested: preempted"


def test_stop_of_a_plain_job_ends_it_by_sigterm(runner: Runner, wd: Path) -> None:
    runner.start(job_spec(8, 0, sh("echo 1 > ready; exec sleep 1000"), working_dir=str(wd)))
    wait_for("the job to start", (wd / "ready").exists)
    runner.stop(StopRequest(8, 0, 60.0, "user asked"))
    assert wait_ended(runner, 8).exit_code == -15


def test_job_ignoring_sigterm_is_killed_with_its_whole_group(runner: Runner, wd: Path) -> None:
    # The child inherits the ignored SIGTERM too: only the group SIGKILL can end it.
    script = "trap '' TERM; sleep 1000 & echo $! > child.pid; echo 1 > ready; wait"
    runner.start(job_spec(9, 0, sh(script), working_dir=str(wd)))
    wait_for("the job and its child to start", (wd / "ready").exists)
    child = int((wd / "child.pid").read_text())
    assert pid_alive(child)
    runner.stop(StopRequest(9, 0, 0.5, "reclaim"))
    ended = wait_ended(runner, 9)
    assert ended.exit_code == -9
    assert ended.message.startswith("killed by signal 9 (SIGKILL)")
    wait_for("the child to die", lambda: not pid_alive(child))


def test_stragglers_die_when_the_leader_exits(runner: Runner, wd: Path) -> None:
    runner.start(job_spec(10, 0, sh("sleep 1000 & echo $! > child.pid"), working_dir=str(wd)))
    assert wait_ended(runner, 10).exit_code == 0
    child = int((wd / "child.pid").read_text())
    wait_for("the leftover child to die", lambda: not pid_alive(child))


def test_stop_of_unknown_or_ended_parts_is_harmless(runner: Runner) -> None:
    assert runner.stop(StopRequest(1, 0, 1.0)) is None
    runner.start(job_spec(1, 0, sh("exit 4")))
    ended = wait_ended(runner, 1)
    assert runner.stop(StopRequest(1, 0, 1.0)) == ended
    assert runner.stop(StopRequest(1, 1, 1.0)) is None  # another attempt: unknown


def test_reports_are_kept_until_acked(runner: Runner) -> None:
    running = runner.start(job_spec(2, 0, sh("exec sleep 1000")))
    runner.start(job_spec(1, 0, sh("exit 3")))
    ended = wait_ended(runner, 1)
    for _ in range(3):
        runner.poll()
        assert runner.reports() == [ended, running]
    assert not runner.ack(2, 0)  # a running part is not forgotten
    assert runner.ack(1, 0)
    assert runner.reports() == [running]
    assert not runner.ack(1, 0)  # acking twice is fine


@pytest.mark.parametrize(
    "gpus, expected",
    [
        pytest.param((2,), "GPU [2] not on node {node} (it has GPUs 0,1)", id="not-on-this-node"),
        pytest.param((1, 1), "GPU indices repeat: [1, 1]", id="repeated"),
    ],
)
def test_gpus_the_node_does_not_have_are_start_failed(
    tmp_path: Path, gpus: tuple[int, ...], expected: str
) -> None:
    with make_runner(tmp_path / "state", gpu_indices=[0, 1]) as runner:
        expected = expected.format(node=runner.node)
        report = runner.start(job_spec(3, 0, ("true",), gpu_indices=gpus))
        assert (report.phase, report.message) == (Phase.START_FAILED, expected)
        assert expected in runner.log_path(3).read_text()


# --- the shim: exit statuses, start failures, what it leaves on disk -----------------------


def test_a_job_killed_by_a_signal_reports_minus_the_signal(runner: Runner) -> None:
    runner.start(job_spec(5, 0, sh("kill -USR2 $$")))
    ended = wait_ended(runner, 5)
    assert (ended.phase, ended.exit_code) == (Phase.EXITED, -signal.SIGUSR2)
    assert ended.message == "killed by signal 12 (SIGUSR2)"


def test_the_shim_records_the_exit_status_and_ack_removes_every_trace(runner: Runner) -> None:
    running = runner.start(job_spec(5, 1, sh("exit 3")))
    state = runner.state_dir
    record = json.loads((state / "parts" / "5.1.json").read_text())
    assert record["report"]["phase"] == "running" and record["report"]["pid"] == running.pid
    (worker,) = record["workers"]
    assert worker["child_pid"] == running.pid and worker["shim_pid"] != running.pid
    ended = wait_ended(runner, 5, 1)
    status = json.loads((state / "status" / "5.1.w0.json").read_text())
    assert status["exit_code"] == 3 and status["time"] == ended.time
    record = json.loads((state / "parts" / "5.1.json").read_text())
    assert (record["report"]["phase"], record["report"]["exit_code"]) == ("exited", 3)
    if runner.containment.base:  # the part's cgroup went as soon as it was empty
        assert not Path(worker["cgroup"]).exists()
    assert runner.ack(5, 1)
    assert not (state / "parts" / "5.1.json").exists()
    assert not (state / "status" / "5.1.w0.json").exists()


def test_a_command_that_cannot_be_executed_leaves_no_cgroup(runner: Runner) -> None:
    report = runner.start(job_spec(3, 0, ("no-such-program-on-path-xyz", "arg")))
    assert report.message == (
        "cannot start 'no-such-program-on-path-xyz': "
        "[Errno 2] No such file or directory: 'no-such-program-on-path-xyz'"
    )
    assert not (runner.state_dir / "status" / "3.0.w0.json").exists()
    if runner.containment.base:
        assert not Path(runner.containment.base, "job-3.0").exists()
    # The record stays until acked, so that a restarted agent still reports it.
    assert json.loads((runner.state_dir / "parts" / "3.0.json").read_text())["report"]["phase"] == (
        "start_failed"
    )


# --- refusals ---------------------------------------------------------------------------------


def test_gpus_held_by_another_live_part_are_refused(runner: Runner) -> None:
    holder = runner.start(job_spec(1, 0, sh("exec sleep 1000"), gpu_indices=(0, 1)))
    refused = runner.start(job_spec(2, 0, sh("echo never"), gpu_indices=(1, 2)))
    assert refused.phase is Phase.REFUSED
    assert refused.message == "GPU 1 is held by job 1 attempt 0"
    assert (refused.exit_code, refused.pid) == (0, 0)
    assert "never" not in runner.log_path(2).read_text()
    # Another attempt of the same job is "another part" too: it may still be dying.
    assert runner.start(job_spec(1, 1, ("true",), gpu_indices=(0,))).phase is Phase.REFUSED
    assert runner.start(job_spec(3, 0, sh("exec sleep 1000"), gpu_indices=(2,))).phase is (
        Phase.RUNNING
    )
    assert runner.report(holder.key) == holder
    # An ended part holds nothing, acked or not.
    runner.stop(StopRequest(1, 0, 0.0))
    wait_ended(runner, 1)
    assert runner.start(job_spec(2, 1, ("true",), gpu_indices=(0, 1))).phase is Phase.RUNNING


def test_nothing_starts_while_the_agent_is_stopping(runner: Runner) -> None:
    runner.stopping = True
    report = runner.start(job_spec(4, 0, sh("echo never")))
    assert (report.phase, report.message) == (Phase.REFUSED, "the agent is shutting down")
    assert runner.reports() == [report] and not runner.any_running()
    assert "the agent is shutting down" in runner.log_path(4).read_text()


# --- stop_all by the node -------------------------------------------------------------------


def test_stop_all_by_node_marks_the_reports(runner: Runner, wd: Path) -> None:
    runner.start(job_spec(1, 0, sh("exec sleep 1000")))
    # Job 2 is already being stopped by the daemon: that stop is the daemon's, not the node's.
    runner.start(
        job_spec(
            2, 0, sh("trap '' TERM; echo 1 > ready; while :; do sleep 1; done"), working_dir=str(wd)
        )
    )
    wait_for("job 2 to ignore SIGTERM", (wd / "ready").exists)
    runner.stop(StopRequest(2, 0, 60.0, "cancelled"))
    runner.stop_all(0.0, "agent shutting down", by_node=True)
    one, two = wait_ended(runner, 1), wait_ended(runner, 2)
    assert (one.exit_code, one.stopped_by_node) == (-signal.SIGKILL, True)
    assert one.message == "killed by signal 9 (SIGKILL); stop requested: agent shutting down"
    assert (two.exit_code, two.stopped_by_node) == (-signal.SIGKILL, False)
    assert two.message.endswith("stop requested: cancelled")


def test_stop_all_without_by_node_is_the_daemon_s_stop(runner: Runner) -> None:
    runner.start(job_spec(1, 0, sh("exec sleep 1000")))
    runner.stop_all(5.0, "drain")
    ended = wait_ended(runner, 1)
    assert (ended.exit_code, ended.stopped_by_node) == (-signal.SIGTERM, False)


# --- logs are never read or written through a link ---------------------------------------


def test_read_log_refuses_symlinks_and_fifos(runner: Runner, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root's secret\n")
    for job in (4, 5):
        runner.log_dir(job).mkdir(parents=True)
    runner.log_path(4).symlink_to(secret)
    assert runner.read_log(4, 0, 100) == (b"", False, 0)
    os.mkfifo(runner.log_path(5))  # opening it to read would block without O_NONBLOCK
    assert runner.read_log(5, 0, 100) == (b"", False, 0)
    runner.log_dir(6).symlink_to(secret.parent)  # the folder itself is not followed either
    assert runner.read_log(6, 0, 100) == (b"", False, 0)


def test_a_log_that_is_a_symlink_is_not_written_through(runner: Runner, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep\n")
    runner.log_dir(6).mkdir(parents=True)
    runner.log_path(6).symlink_to(target)
    report = runner.start(job_spec(6, 0, sh("echo clobbered")))
    assert report.phase is Phase.START_FAILED
    assert report.message.startswith("cannot open the job's log")
    assert target.read_text() == "keep\n"


# --- elastic workers through the shim ----------------------------------------------------

# Worker 1 starts a child (a DataLoader worker, say). On SIGUSR1 it pokes its child with
# SIGUSR2, waits for the answer and leaves with 0. Had the release gone to the whole group,
# the child would have seen SIGUSR1 before SIGUSR2 (pending standard signals are delivered
# lowest first, and Python runs handlers in that order).
ELASTIC_WORKER = """
import os, pathlib, signal, subprocess, sys, time
d, wid = pathlib.Path(sys.argv[1]), os.environ["SCHEDULERD_WORKER_ID"]
if os.environ.get("EXIT_AT_ONCE") == wid:
    sys.exit(0)
CHILD = '''
import os, pathlib, signal, sys, time
d = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGUSR1, lambda *a: (d / "child-usr1").write_text("1"))
signal.signal(signal.SIGUSR2, lambda *a: (d / "child-usr2").write_text("1"))
(d / "child.tmp").write_text(str(os.getpid()))
os.rename(d / "child.tmp", d / "child.pid")
while True:
    time.sleep(0.05)
'''
def leave(*_):
    child.send_signal(signal.SIGUSR2)
    while not (d / "child-usr2").exists():
        time.sleep(0.01)
    sys.exit(0)
if wid == "1":
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(d)])
    signal.signal(signal.SIGUSR1, leave)
    while not (d / "child.pid").exists():
        time.sleep(0.01)
(d / f"ready-{wid}").write_text("1")
while True:
    time.sleep(0.05)
"""


def elastic(wd: Path, env: dict[str, str] | None = None) -> JobSpec:
    return job_spec(
        job_id=7,
        attempt=0,
        command=python(ELASTIC_WORKER, str(wd)),
        env=env or {},
        gpu_indices=(0, 1),
        elastic=ElasticSpec("127.0.0.1:29555", 1, 4, (0, 1), ((0, 0), (1, 1))),
    )


def test_a_release_reaches_the_worker_and_not_its_children(runner: Runner, wd: Path) -> None:
    runner.start(elastic(wd))
    wait_for("worker 1 to be ready", (wd / "ready-1").exists)
    child = read_pid(wd / "child.pid")
    runner.resize(ResizeRequest(7, 0, release=(1,), grace_seconds=30.0))

    def gpu_1_free() -> bool:
        runner.poll()
        report = runner.report((7, 0))
        return report is not None and report.gpu_indices == (0,)

    wait_for("GPU 1 to be reported free", gpu_1_free)
    assert not pid_alive(child)  # nothing of the released worker holds GPU 1 any more
    assert (wd / "child-usr2").exists() and not (wd / "child-usr1").exists()
    assert runner.report((7, 0)).phase is Phase.RUNNING  # type: ignore[union-attr]


def test_joiners_are_refused_once_a_worker_not_released_has_exited(
    runner: Runner, wd: Path
) -> None:
    runner.start(elastic(wd, {"EXIT_AT_ONCE": "1"}))
    shim = json.loads((runner.state_dir / "parts" / "7.0.json").read_text())["workers"][1]
    wait_for("worker 1 to exit", lambda: not pid_alive(shim["shim_pid"]))
    # Not polled yet: resize looks for itself. The training has ended; a joiner would wait
    # for it in vain.
    report = runner.resize(ResizeRequest(7, 0, add=((2, 2),)))
    assert report is not None and report.phase is Phase.RUNNING and report.gpu_indices == (0,)
    workers = json.loads((runner.state_dir / "parts" / "7.0.json").read_text())["workers"]
    assert [w["worker_id"] for w in workers] == [0, 1]


def test_joiners_are_refused_while_the_agent_is_stopping(runner: Runner, wd: Path) -> None:
    runner.start(elastic(wd))
    wait_for("worker 1 to be ready", (wd / "ready-1").exists)
    runner.stopping = True
    report = runner.resize(ResizeRequest(7, 0, add=((2, 2),)))
    assert report is not None and report.gpu_indices == (0, 1)
    assert len(json.loads((runner.state_dir / "parts" / "7.0.json").read_text())["workers"]) == 2
