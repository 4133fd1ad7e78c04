"""Containment: every process of a job, however it hides, is gone when its part is reported
ended, on cgroup v2 and on the cgroup v1 freezer; with process groups only, a process that
calls setsid escapes (which is why the agent uses cgroups). Real processes, real cgroups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import (
    job_spec,
    kill_quietly,
    make_runner,
    pid_alive,
    python,
    read_pid,
    sh,
    unique_node,
    wait_ended,
    wait_for,
)

from agent.cgroups import (
    ESCAPE_WARNING,
    ContainmentUnavailable,
    ProcessGroups,
    choose_containment,
    find_mount,
    own_cgroup,
)
from agent.model import StopRequest
from agent.runner import Runner

HYBRID_MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
CLUSTER_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
SYSTEMD_CGROUP = "0::/system.slice/schedulerd-agent.service\n"


def usable(kind: str) -> bool:
    try:
        choose_containment(kind, unique_node())
    except ContainmentUnavailable:
        return False
    return True


CGROUP_KINDS = [
    pytest.param(k, marks=pytest.mark.skipif(not usable(k), reason=f"no writable {k} here"))
    for k in ("cgroup2", "cgroup1")
]


@pytest.fixture(params=CGROUP_KINDS)
def runner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runner]:
    with make_runner(tmp_path / "state", request.param) as r:
        yield r


@pytest.fixture
def wd(tmp_path: Path) -> Path:
    d = tmp_path / "wd"
    d.mkdir()
    return d


# --- finding the hierarchy -------------------------------------------------------------------


def test_the_v2_mount_is_read_from_mounts_never_assumed() -> None:
    assert find_mount(HYBRID_MOUNTS, "cgroup2") == "/sys/fs/cgroup/unified"
    assert find_mount(CLUSTER_MOUNTS, "cgroup2") == "/sys/fs/cgroup"
    assert find_mount(HYBRID_MOUNTS, "cgroup", "freezer") == "/sys/fs/cgroup/freezer"
    assert find_mount(CLUSTER_MOUNTS, "cgroup", "freezer") is None
    escaped = "cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n"
    assert find_mount(escaped, "cgroup2") == "/mnt/my cgroups"


def test_the_agent_s_own_cgroup_is_the_parent_of_its_base() -> None:
    assert own_cgroup("0::/\n") == "/"
    assert own_cgroup(SYSTEMD_CGROUP) == "/system.slice/schedulerd-agent.service"
    v1 = "6:freezer:/agents\n4:memory:/x\n0::/\n"
    assert own_cgroup(v1, "freezer") == "/agents"
    assert own_cgroup(v1) == "/"


def test_auto_takes_v2_where_it_is_writable() -> None:
    if not usable("cgroup2"):
        pytest.skip("no writable cgroup v2 here")
    node = unique_node()
    box = choose_containment("auto", node)
    mount = find_mount(Path("/proc/self/mounts").read_text(), "cgroup2")
    own = own_cgroup(Path("/proc/self/cgroup").read_text()).lstrip("/")
    assert box.kind == "cgroup2"
    assert Path(box.base) == Path(str(mount), own, f"schedulerd-{node}")
    assert not Path(box.base).exists()  # made with the first part, not by looking


def test_a_kind_that_is_asked_for_and_missing_is_an_error() -> None:
    with pytest.raises(ContainmentUnavailable, match="cgroup2: no cgroup2 mount"):
        choose_containment("cgroup2", "n1", mounts="proc /proc proc rw 0 0\n")
    with pytest.raises(ContainmentUnavailable, match="unknown containment"):
        choose_containment("cgroup3", "n1")


def test_auto_without_cgroups_falls_back_to_process_groups_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.cgroups"):
        box = choose_containment("auto", "n1", mounts="proc /proc proc rw 0 0\n")
    assert isinstance(box, ProcessGroups)
    assert any(ESCAPE_WARNING in r.getMessage() for r in caplog.records)


# --- nothing escapes --------------------------------------------------------------------------

# Each job leaves a process outside its process group and writes its pid, then the leader
# ends by itself (exit 0) or is stopped.
SETSID_CHILD = (
    "import os, sys, time\n"
    "os.setsid()\n"
    "open('esc.tmp', 'w').write(str(os.getpid())); os.rename('esc.tmp', 'esc.pid')\n"
    "time.sleep(1000)\n"
)
DOUBLE_FORK = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        open('esc.tmp', 'w').write(str(os.getpid())); os.rename('esc.tmp', 'esc.pid')\n"
    "        time.sleep(1000)\n"
    "    os._exit(0)\n"
    "os.wait()\n"
    "while not os.path.exists('esc.pid'):\n"
    "    time.sleep(0.01)\n"
)


def in_the_workers_cgroup(runner: Runner, pid: int, job: int) -> bool:
    """Is `pid` in worker 0's cgroup of `job`, as /proc/<pid>/cgroup says?"""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    wanted = f"/schedulerd-{runner.node}/job-{job}.0/w0"
    hierarchy = "0::" if runner.containment.kind == "cgroup2" else ":freezer:"
    return any(hierarchy in line and line.endswith(wanted) for line in lines)


def assert_all_gone(runner: Runner, job: int, pids: list[int]) -> None:
    """Checked at the moment the part is reported ended: no waiting."""
    assert [p for p in pids if pid_alive(p)] == []
    assert not Path(runner.containment.base, f"job-{job}.0").exists()


def test_a_setsid_child_dies_with_its_job(runner: Runner, wd: Path) -> None:
    script = f'{python(SETSID_CHILD)[0]} -c "$CODE" & while [ ! -s esc.pid ]; do sleep 0.01; done'
    runner.start(job_spec(1, 0, sh(script), env={"CODE": SETSID_CHILD}, working_dir=str(wd)))
    escapee = read_pid(wd / "esc.pid")
    assert in_the_workers_cgroup(runner, escapee, 1)
    ended = wait_ended(runner, 1)
    assert ended.exit_code == 0
    assert_all_gone(runner, 1, [escapee])


def test_a_double_forked_daemon_dies_with_its_job(runner: Runner, wd: Path) -> None:
    runner.start(job_spec(2, 0, python(DOUBLE_FORK), working_dir=str(wd)))
    daemon = read_pid(wd / "esc.pid")
    ended = wait_ended(runner, 2)
    assert ended.exit_code == 0
    assert_all_gone(runner, 2, [daemon])


def test_a_job_ignoring_sigterm_is_killed_with_all_it_started(runner: Runner, wd: Path) -> None:
    script = (
        "trap '' TERM; "
        f'{python(SETSID_CHILD)[0]} -c "$CODE" & '
        "sleep 1000 & echo $! > child.pid; "
        "while [ ! -s esc.pid ]; do sleep 0.01; done; echo $$ > leader.pid; wait"
    )
    runner.start(job_spec(3, 0, sh(script), env={"CODE": SETSID_CHILD}, working_dir=str(wd)))
    pids = [read_pid(wd / "leader.pid"), read_pid(wd / "child.pid"), read_pid(wd / "esc.pid")]
    runner.stop(StopRequest(3, 0, 0.3, "reclaim"))
    ended = wait_ended(runner, 3)
    assert ended.exit_code == -9
    assert_all_gone(runner, 3, pids)


# A job running as root makes a cgroup of its own inside its worker's and moves a child that
# left its process group there.
NESTED = (
    "import os, sys, time\n"
    "mount, kind = sys.argv[1:3]\n"
    "for line in open('/proc/self/cgroup'):\n"
    "    hid, controllers, path = line.rstrip('\\n').split(':', 2)\n"
    "    if (hid == '0') if kind == 'cgroup2' else ('freezer' in controllers.split(',')):\n"
    "        inner = mount + path + '/inner'\n"
    "os.mkdir(inner)\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    open(inner + '/cgroup.procs', 'w').write('0')\n"
    "    open('esc.tmp', 'w').write(str(os.getpid())); os.rename('esc.tmp', 'esc.pid')\n"
    "    time.sleep(1000)\n"
    "while not os.path.exists('esc.pid'):\n"
    "    time.sleep(0.01)\n"
)


def test_a_cgroup_the_job_made_inside_its_own_is_killed_and_removed(
    runner: Runner, wd: Path
) -> None:
    kind = runner.containment.kind
    fstype, controller = ("cgroup2", "") if kind == "cgroup2" else ("cgroup", "freezer")
    mount = find_mount(Path("/proc/self/mounts").read_text(), fstype, controller)
    runner.start(job_spec(4, 0, python(NESTED, str(mount), kind), working_dir=str(wd)))
    hidden = read_pid(wd / "esc.pid")
    assert wait_ended(runner, 4).exit_code == 0
    assert_all_gone(runner, 4, [hidden])


def test_with_process_groups_only_a_setsid_child_escapes(tmp_path: Path, wd: Path) -> None:
    """Why cgroups: the same job as above under process groups leaves its escapee alive."""
    with make_runner(tmp_path / "state", "pgroup") as runner:
        script = (
            f'{python(SETSID_CHILD)[0]} -c "$CODE" & while [ ! -s esc.pid ]; do sleep 0.01; done'
        )
        runner.start(job_spec(1, 0, sh(script), env={"CODE": SETSID_CHILD}, working_dir=str(wd)))
        escapee = read_pid(wd / "esc.pid")
        try:
            assert wait_ended(runner, 1).exit_code == 0
            assert pid_alive(escapee)  # reported ended, yet still running
        finally:
            kill_quietly(escapee)
        wait_for("the escapee to die", lambda: not pid_alive(escapee))
