"""Jobs run as their users (docs/agent.md): throwaway Unix users made with useradd, real
processes, the Runner driven directly. The jobs' probes are python3 from the jobs' PATH (the
venv's Python may be under /root, which its users cannot reach).

Root only: a test needs to make users, and the agent to switch to them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    Users,
    make_runner,
    open_dir,
    throwaway_users,
    unique_node,
    wait_ended,
)

import agent
from agent.cgroups import ContainmentUnavailable, choose_containment, find_mount
from agent.model import JobSpec, Phase
from agent.runner import Runner

JOB_PATH = "/usr/bin:/bin"  # not the default, to see that --job-path is what a job gets
PYTHON = shutil.which("python3", path=JOB_PATH)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="makes users and switches to them: root only"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="no useradd here"),
    pytest.mark.skipif(PYTHON is None, reason=f"no python3 on {JOB_PATH} for the jobs' probes"),
]

# Prints what a job is: its identity, where it is, its environment and its umask.
WHOAMI = """
import json, os
print(json.dumps({
    "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
    "groups": sorted(os.getgroups()),
    "cwd": os.getcwd(),
    "env": dict(os.environ),
    "umask": os.umask(0),
}), flush=True)
"""


@pytest.fixture
def users() -> Iterator[Users]:
    with throwaway_users() as made:
        yield made


@pytest.fixture
def state() -> Iterator[Path]:
    # A job's default working dir is under the state dir: its users must be able to reach it.
    with open_dir() as path:
        yield path


@pytest.fixture
def runner(users: Users, state: Path) -> Iterator[Runner]:
    # After `users` (so torn down before it): no process of a user is left when it goes.
    with make_runner(state / "agent", job_path=JOB_PATH) as r:
        yield r


def spec_of(user: str, job: int, code: str, *args: str, attempt: int = 0, **fields: Any) -> JobSpec:
    """Job `job` of `user`: python3 from the job's PATH, running `code` with `args`."""
    return JobSpec(job, attempt, ("python3", "-c", code, *args), user=user, **fields)


def output(runner: Runner, job: int) -> list[str]:
    """What the job printed: its log, less the agent's own lines."""
    data, found, _ = runner.read_log(job, 0, 0)
    assert found
    return [line for line in data.decode().splitlines() if not line.startswith("--- ")]


def whoami(runner: Runner, job: int) -> dict[str, Any]:
    report = wait_ended(runner, job)
    assert (report.phase, report.exit_code) == (Phase.EXITED, 0), report
    (line,) = output(runner, job)
    answer: dict[str, Any] = json.loads(line)
    return answer


def test_a_job_runs_with_its_user_s_uid_gid_and_groups(
    runner: Runner, users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    team = users.group()
    user = users.add(groups=(team.gr_name,))
    monkeypatch.setenv("SDU_AGENT_SECRET", "hunter2")  # the agent's environment: not the job's
    env = {"FOO": "bar", "HOME": "/elsewhere", "CUDA_VISIBLE_DEVICES": "7", "SCHEDULERD_USER": "x"}
    assert runner.start(spec_of(user.pw_name, 1, WHOAMI, env=env)).phase is Phase.RUNNING
    seen = whoami(runner, 1)

    assert seen["ids"] == [user.pw_uid, user.pw_uid, user.pw_gid, user.pw_gid]
    groups = sorted(os.getgrouplist(user.pw_name, user.pw_gid))
    assert seen["groups"] == groups and team.gr_gid in groups and 0 not in groups
    assert seen["umask"] == 0o022
    work = runner.state_dir / "work" / "job-1"
    assert seen["cwd"] == str(work)
    assert (work.stat().st_uid, stat.S_IMODE(work.stat().st_mode)) == (user.pw_uid, 0o700)

    job_env = seen["env"]
    assert "SDU_AGENT_SECRET" not in job_env
    assert {k: job_env[k] for k in ("PATH", "USER", "LOGNAME", "SHELL", "LANG")} == {
        "PATH": JOB_PATH,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "SHELL": "/bin/sh",
        "LANG": "C.UTF-8",
    }
    # The job's env may change the base, not the scheduler's word.
    assert (job_env["FOO"], job_env["HOME"]) == ("bar", "/elsewhere")
    assert (job_env["CUDA_VISIBLE_DEVICES"], job_env["SCHEDULERD_USER"]) == ("", user.pw_name)
    base = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "FOO", "CUDA_DEVICE_ORDER"}
    assert {k for k in job_env if not k.startswith(("SCHEDULERD_", "CUDA_VISIBLE"))} == base


def test_home_is_the_user_s_without_a_job_env(runner: Runner, users: Users) -> None:
    user = users.add()
    runner.start(spec_of(user.pw_name, 1, WHOAMI))
    assert whoami(runner, 1)["env"]["HOME"] == user.pw_dir


def test_the_log_and_working_dir_are_the_user_s_and_closed_to_others(
    runner: Runner, users: Users
) -> None:
    alice, bob = users.add(), users.add()
    runner.start(spec_of(alice.pw_name, 1, "print('alice was here')"))
    assert wait_ended(runner, 1).exit_code == 0
    logs, folder, log = runner.logs_dir, runner.log_dir(1), runner.log_path(1)
    assert (logs.stat().st_uid, stat.S_IMODE(logs.stat().st_mode)) == (0, 0o755)
    assert (folder.stat().st_uid, stat.S_IMODE(folder.stat().st_mode)) == (alice.pw_uid, 0o700)
    assert (log.stat().st_uid, stat.S_IMODE(log.stat().st_mode)) == (alice.pw_uid, 0o600)
    assert output(runner, 1) == ["alice was here"]

    # A job of another user can neither list nor read them.
    probe = """
import os, sys
for what, path in (("list", sys.argv[1]), ("read", sys.argv[2]), ("list", sys.argv[3])):
    try:
        os.listdir(path) if what == "list" else open(path).read()
        print(what, path, "ok")
    except OSError as e:
        print(what, path, e.strerror)
"""
    work = runner.state_dir / "work" / "job-1"
    runner.start(spec_of(bob.pw_name, 2, probe, str(folder), str(log), str(work)))
    assert wait_ended(runner, 2).exit_code == 0
    assert output(runner, 2) == [
        f"list {folder} Permission denied",
        f"read {log} Permission denied",
        f"list {work} Permission denied",
    ]


def test_a_job_s_folder_of_another_user_is_set_aside_not_handed_over(
    runner: Runner, users: Users
) -> None:
    """Job 1 again, of another user (the daemon's store was reset): what alice left is not
    given to bob, nor is her log served as his."""
    alice, bob = users.add(), users.add()
    runner.start(spec_of(alice.pw_name, 1, "print('alice was here')"))
    assert wait_ended(runner, 1).exit_code == 0
    runner.ack(1, 0)
    runner.start(spec_of(bob.pw_name, 1, WHOAMI))
    assert whoami(runner, 1)["ids"][0] == bob.pw_uid
    for parent in (runner.logs_dir, runner.state_dir / "work"):
        assert (parent / "job-1").stat().st_uid == bob.pw_uid
        (aside,) = parent.glob(f"job-1.uid-{alice.pw_uid}.*")
        assert aside.stat().st_uid == alice.pw_uid
    assert "alice was here" not in runner.log_path(1).read_text()


def test_a_working_dir_the_user_cannot_enter_fails_the_start(
    runner: Runner, users: Users, state: Path
) -> None:
    user = users.add()
    private = state / "private"
    private.mkdir(mode=0o700)  # root's: the agent could enter it, the user cannot
    report = runner.start(spec_of(user.pw_name, 1, "print('never')", working_dir=str(private)))
    assert (report.phase, report.exit_code, report.pid) == (Phase.START_FAILED, 127, 0)
    expected = f"working_dir {private} is not usable by user {user.pw_name}: Permission denied"
    assert report.message == expected
    assert expected in runner.log_path(1).read_text()


def test_an_unknown_user_is_refused(runner: Runner) -> None:
    name = f"sdu-{secrets.token_hex(4)}"  # never made
    report = runner.start(spec_of(name, 1, "print('never')"))
    assert (report.phase, report.message) == (
        Phase.START_FAILED,
        f"user {name!r} does not exist on node {runner.node}",
    )
    assert runner.start(spec_of("", 2, "print('never')")).message == (
        f"the job names no user to run as on node {runner.node}"
    )


def test_root_runs_as_root_only_when_the_policy_allows_it(runner: Runner) -> None:
    refused = runner.start(spec_of("root", 1, WHOAMI, consumer="/lab"))
    assert (refused.phase, refused.message) == (
        Phase.START_FAILED,
        "jobs of root may not run as root on /lab: the policy's run_as_root is off "
        f"(user 'root' is uid 0 on node {runner.node})",
    )
    runner.start(spec_of("root", 2, WHOAMI, consumer="/lab", allow_root=True))
    seen = whoami(runner, 2)
    assert seen["ids"] == [0, 0, 0, 0]
    assert seen["groups"] == sorted(os.getgrouplist("root", 0))


@pytest.fixture
def secret(state: Path) -> Path:
    """A file only root may read, on the state dir's filesystem (hard links stay on one)."""
    path = state / "secret"
    path.write_text("TOPSECRET\n")
    path.chmod(0o600)
    return path


# Swaps the job's own log (argv[1]) for a symlink to argv[2], or a FIFO.
SWAP = """
import os, sys
log, target, how = sys.argv[1:4]
print("before the swap", flush=True)
os.unlink(log)
os.symlink(target, log) if how == "symlink" else os.mkfifo(log)
"""


@pytest.mark.parametrize("how", ["symlink", "fifo"])
def test_a_log_swapped_for_a_symlink_or_fifo_gives_nothing(
    runner: Runner, users: Users, secret: Path, how: str
) -> None:
    user = users.add()
    runner.start(spec_of(user.pw_name, 1, SWAP, str(runner.log_path(1)), str(secret), how))
    assert wait_ended(runner, 1).exit_code == 0  # its end was seen, its footer not written
    assert runner.read_log(1, 0, 1 << 20) == (b"", False, 0)
    assert secret.read_text() == "TOPSECRET\n"  # not appended to through the link
    # Nor does the next attempt write through it: no log, no start.
    report = runner.start(spec_of(user.pw_name, 1, "print('never')", attempt=1))
    assert report.phase is Phase.START_FAILED
    assert report.message.startswith("cannot open the job's log")
    assert secret.read_text() == "TOPSECRET\n"


def test_a_log_hard_linked_to_a_root_file_gives_nothing(
    runner: Runner, users: Users, secret: Path
) -> None:
    """With fs.protected_hardlinks at 1 (the default of most distributions) a user cannot
    link a file it neither owns nor may read and write: the job's own attempt fails. Where it
    is 0 it could; the test makes that link itself, as root, to show the agent still serves
    nothing of the file: it reads only a log owned by the job's user."""
    user = users.add()
    code = """
import os, sys
try:
    os.link(sys.argv[2], sys.argv[1] + ".link")
    print("linked")
except OSError as e:
    print("not linked:", e.strerror)
"""
    runner.start(spec_of(user.pw_name, 1, code, str(runner.log_path(1)), str(secret)))
    assert wait_ended(runner, 1).exit_code == 0
    if Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "1":
        assert output(runner, 1) == ["not linked: Operation not permitted"]

    runner.log_path(1).unlink()
    os.link(secret, runner.log_path(1))  # what the job could do where the protection is off
    assert runner.read_log(1, 0, 1 << 20) == (b"", False, 0)
    report = runner.start(spec_of(user.pw_name, 1, "print('never')", attempt=1))
    assert report.message.startswith("cannot open the job's log")
    assert secret.read_text() == "TOPSECRET\n"


CGROUP_KINDS = ["cgroup2", "cgroup1"]


def usable(kind: str) -> bool:
    try:
        choose_containment(kind, unique_node())
    except ContainmentUnavailable:
        return False
    return True


@pytest.mark.parametrize(
    "kind",
    [pytest.param(k, marks=pytest.mark.skipif(not usable(k), reason=k)) for k in CGROUP_KINDS],
)
def test_a_job_cannot_leave_its_cgroup(users: Users, state: Path, kind: str) -> None:
    """Its cgroup and everything above it are root's: the job can write its pid in none."""
    user = users.add()
    code = """
import os, sys
for path in sys.argv[1:]:
    try:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        print(path, "joined")
    except OSError as e:
        print(path, e.strerror)
"""
    with make_runner(state / "agent", kind, job_path=JOB_PATH) as runner:
        mounts = Path("/proc/self/mounts").read_text()
        mount = (
            find_mount(mounts, "cgroup2")
            if kind == "cgroup2"
            else find_mount(mounts, "cgroup", "freezer")
        )
        base = Path(runner.containment.base)
        # The agent's folder, the agent's own cgroup, the hierarchy's root.
        folders = dict.fromkeys([base, base.parent, Path(mount or "/")])
        targets = [folder / "cgroup.procs" for folder in folders]
        runner.start(spec_of(user.pw_name, 1, code, *map(str, targets)))
        assert wait_ended(runner, 1).exit_code == 0
        assert output(runner, 1) == [f"{t} Permission denied" for t in targets]


NOT_ROOT_AGENT = """
import json, sys, time
from pathlib import Path
from agent.cgroups import ProcessGroups
from agent.model import JobSpec
from agent.runner import Runner
state, me, other = sys.argv[1:4]
runner = Runner(Path(state), "n-user", containment=ProcessGroups())
out = {}
for job, user in ((1, me), (2, "root"), (3, other)):
    spec = JobSpec(job, 0, ("sh", "-c", "id -u"), user=user, allow_root=True)
    report = runner.start(spec)
    while not report.phase.ended:
        time.sleep(0.02)
        runner.poll()
        report = runner.report((job, 0))
    out[job] = [report.phase.value, report.message, runner.read_log(job, 0, 0)[0].decode()]
print(json.dumps(out))
"""


def test_an_agent_that_is_not_root_runs_only_its_own_user_s_jobs(users: Users) -> None:
    me, other = users.add(), users.add()
    src = str(Path(agent.__file__).resolve().parent.parent)
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PYTHONPATH": os.pathsep.join([src, *site]), "PATH": JOB_PATH}
    as_me: dict[str, Any] = {"user": me.pw_uid, "group": me.pw_gid, "extra_groups": []}
    probe = subprocess.run(
        [PYTHON or "", "-c", "import agent.runner"], env=env, capture_output=True, **as_me
    )
    if probe.returncode != 0:
        pytest.skip(f"{PYTHON} cannot import the agent as another user: {probe.stderr!r}")
    done = subprocess.run(
        [PYTHON or "", "-c", NOT_ROOT_AGENT, f"{me.pw_dir}/state", me.pw_name, other.pw_name],
        env=env,
        cwd=me.pw_dir,
        capture_output=True,
        text=True,
        timeout=60,
        **as_me,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    phase, message, log = out["1"]
    assert (phase, message) == ("exited", "exit code 0")
    assert f"\n{me.pw_uid}\n" in log
    for job, user in (("2", "root"), ("3", other.pw_name)):
        assert out[job][:2] == [
            "start_failed",
            f"the agent on node n-user is not root (uid {me.pw_uid}): it cannot run jobs as "
            f"user {user!r}",
        ]
