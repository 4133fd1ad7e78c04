"""The job runner with real processes: env, logs, exit codes, stop with grace, process groups.

No timing is asserted; every wait has a deadline so that a broken runner fails, not hangs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from agent.model import JobSpec, PartReport, Phase, StopRequest
from agent.runner import START_FAILED_EXIT_CODE, Runner

T = TypeVar("T")
DEADLINE = 30.0


def wait_for(what: str, check: Callable[[], T | None], timeout: float = DEADLINE) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_ended(runner: Runner, job: int, attempt: int = 0) -> PartReport:
    def ended() -> PartReport | None:
        runner.poll()
        r = runner.report((job, attempt))
        return r if r is not None and r.phase.ended else None

    return wait_for(f"job {job} attempt {attempt} to end", ended)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may linger as a zombie until reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def sh(script: str) -> tuple[str, ...]:
    return ("/bin/sh", "-c", script)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path / "state", "n1")
    yield r
    # Whatever a failed test left running: kill it, so no test leaks processes.
    r.stop_all(0.0, "test teardown")

    def all_ended() -> bool:
        r.poll()
        return not r.any_running()

    wait_for("every job to end", all_ended)


@pytest.fixture
def wd(tmp_path: Path) -> Path:
    d = tmp_path / "wd"
    d.mkdir()
    return d


def test_job_env_has_gpus_and_identity(runner: Runner, wd: Path) -> None:
    dump = "import json, os; json.dump(dict(os.environ), open('env.json', 'w'))"
    spec = JobSpec(
        job_id=12,
        attempt=2,
        command=python(dump),
        env={"FOO": "bar", "CUDA_VISIBLE_DEVICES": "7"},  # the job cannot pick its own GPUs
        working_dir=str(wd),
        gpu_indices=(0, 3),
        consumer="/research/vision",
        user="ada",
        name="resnet",
        node_rank=1,
        num_nodes=2,
    )
    assert runner.start(spec).phase is Phase.RUNNING
    assert wait_ended(runner, 12, 2).exit_code == 0
    env = json.loads((wd / "env.json").read_text())
    assert env["FOO"] == "bar"
    assert env["PATH"] == os.environ["PATH"]  # the agent's environment is inherited
    assert env["CUDA_VISIBLE_DEVICES"] == "0,3"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert {k: v for k, v in env.items() if k.startswith("SCHEDULERD_")} == {
        "SCHEDULERD_JOB_ID": "12",
        "SCHEDULERD_ATTEMPT": "2",
        "SCHEDULERD_CONSUMER": "/research/vision",
        "SCHEDULERD_USER": "ada",
        "SCHEDULERD_JOB_NAME": "resnet",
        "SCHEDULERD_NODE": "n1",
        "SCHEDULERD_NODE_RANK": "1",
        "SCHEDULERD_NUM_NODES": "2",
        "SCHEDULERD_GPUS": "2",
    }


def test_job_without_gpus_sees_none(runner: Runner, wd: Path) -> None:
    dump = "import os; open('cvd', 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])"
    runner.start(JobSpec(1, 0, python(dump), working_dir=str(wd)))
    wait_ended(runner, 1)
    assert (wd / "cvd").read_text() == ""


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_reported(runner: Runner, code: int) -> None:
    started = runner.start(JobSpec(5, 0, python(f"import sys; sys.exit({code})")))
    assert started.pid > 0
    ended = wait_ended(runner, 5)
    assert (ended.phase, ended.exit_code, ended.pid) == (Phase.EXITED, code, started.pid)
    assert ended.message == f"exit code {code}"
    assert ended.time >= started.time > 0


def test_stdout_and_stderr_land_in_the_log(runner: Runner) -> None:
    script = sh("echo to-stdout; echo to-stderr >&2; pwd")
    runner.start(JobSpec(12, 0, script, gpu_indices=(0, 1)))
    wait_ended(runner, 12)
    runner.start(JobSpec(12, 1, script))
    wait_ended(runner, 12, 1)
    log = runner.log_path(12).read_text()
    assert runner.log_path(12) == runner.state_dir / "logs" / "job-12.log"
    lines = log.splitlines()
    assert lines[0] == "--- schedulerd job 12 attempt 0 on node n1, GPUs 0,1 ---"
    assert "to-stdout" in lines and "to-stderr" in lines
    # No working dir given: a per-job directory under the state dir.
    assert str(runner.state_dir / "work" / "job-12") in lines
    # Each attempt appends under its own header.
    assert "--- schedulerd job 12 attempt 1 on node n1, GPUs none ---" in lines
    assert lines.count("to-stdout") == 2


def test_read_log_pages_through_the_file(runner: Runner) -> None:
    runner.start(JobSpec(4, 0, sh("echo hello")))
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
    report = runner.start(JobSpec(3, 0, command, working_dir=working_dir))
    assert report.phase is Phase.START_FAILED
    assert report.exit_code == START_FAILED_EXIT_CODE == 127
    assert report.message and report.pid == 0
    assert runner.poll() == []
    assert runner.reports() == [report]


def test_start_failure_is_written_to_the_log(runner: Runner) -> None:
    report = runner.start(JobSpec(3, 0, ("/no/such/program",)))
    assert report.message in runner.log_path(3).read_text()


def test_resent_start_does_not_start_a_second_process(runner: Runner) -> None:
    first = runner.start(JobSpec(6, 0, sh("exec sleep 1000")))
    assert runner.start(JobSpec(6, 0, sh("exec sleep 1000"))) == first
    assert runner.reports() == [first]


def test_stop_sends_sigterm_and_a_trapping_job_exits_0(runner: Runner, wd: Path) -> None:
    code = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "pathlib.Path('ready').write_text('1')\n"
        "while True: time.sleep(0.05)\n"
    )
    runner.start(JobSpec(8, 0, python(code), working_dir=str(wd)))
    wait_for("the job to trap SIGTERM", (wd / "ready").exists)
    assert runner.stop(StopRequest(8, 0, 60.0, "preempted")) is not None
    ended = wait_ended(runner, 8)
    assert ended.exit_code == 0
    assert ended.message == "exit code 0; stop requested: preempted"


def test_stop_of_a_plain_job_ends_it_by_sigterm(runner: Runner, wd: Path) -> None:
    runner.start(JobSpec(8, 0, sh("echo 1 > ready; exec sleep 1000"), working_dir=str(wd)))
    wait_for("the job to start", (wd / "ready").exists)
    runner.stop(StopRequest(8, 0, 60.0, "user asked"))
    assert wait_ended(runner, 8).exit_code == -15


def test_job_ignoring_sigterm_is_killed_with_its_whole_group(runner: Runner, wd: Path) -> None:
    # The child inherits the ignored SIGTERM too: only the group SIGKILL can end it.
    script = "trap '' TERM; sleep 1000 & echo $! > child.pid; echo 1 > ready; wait"
    runner.start(JobSpec(9, 0, sh(script), working_dir=str(wd)))
    wait_for("the job and its child to start", (wd / "ready").exists)
    child = int((wd / "child.pid").read_text())
    assert pid_alive(child)
    runner.stop(StopRequest(9, 0, 0.5, "reclaim"))
    ended = wait_ended(runner, 9)
    assert ended.exit_code == -9
    assert ended.message.startswith("killed by signal 9 (SIGKILL)")
    wait_for("the child to die", lambda: not pid_alive(child))


def test_stragglers_die_when_the_leader_exits(runner: Runner, wd: Path) -> None:
    runner.start(JobSpec(10, 0, sh("sleep 1000 & echo $! > child.pid"), working_dir=str(wd)))
    assert wait_ended(runner, 10).exit_code == 0
    child = int((wd / "child.pid").read_text())
    wait_for("the leftover child to die", lambda: not pid_alive(child))


def test_stop_of_unknown_or_ended_parts_is_harmless(runner: Runner) -> None:
    assert runner.stop(StopRequest(1, 0, 1.0)) is None
    runner.start(JobSpec(1, 0, sh("exit 4")))
    ended = wait_ended(runner, 1)
    assert runner.stop(StopRequest(1, 0, 1.0)) == ended
    assert runner.stop(StopRequest(1, 1, 1.0)) is None  # another attempt: unknown


def test_reports_are_kept_until_acked(runner: Runner) -> None:
    running = runner.start(JobSpec(2, 0, sh("exec sleep 1000")))
    runner.start(JobSpec(1, 0, sh("exit 3")))
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
        pytest.param((2,), "GPU [2] not on node n1 (it has GPUs 0,1)", id="not-on-this-node"),
        pytest.param((1, 1), "GPU indices repeat: [1, 1]", id="repeated"),
    ],
)
def test_gpus_the_node_does_not_have_are_start_failed(
    tmp_path: Path, gpus: tuple[int, ...], expected: str
) -> None:
    runner = Runner(tmp_path / "state", "n1", gpu_indices=[0, 1])
    report = runner.start(JobSpec(3, 0, ("true",), gpu_indices=gpus))
    assert (report.phase, report.message) == (Phase.START_FAILED, expected)
    assert expected in runner.log_path(3).read_text()
