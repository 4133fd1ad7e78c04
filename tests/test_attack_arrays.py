"""Issue 15 item 5, attacked: job arrays (docs/arrays.md) as a hostile user would try
them, through a real daemon (no agent: the elements wait) and `schedctl` run as a
process, as a user runs it; another user is the kernel's `nobody`, known to the daemon
by its loopback uid."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from harness import Cluster, running_cluster

from schedulerd.api.v1 import jobs_pb2
from schedulerd.arrays import ArrayError, parse_indices, parse_job_ref
from schedulerd.client import ClientError

ME = pwd.getpwuid(os.getuid()).pw_name
POLICY = f"""
version: 1
consumers:
  lab:
    consumers:
      mine: {{users: [{ME}]}}
      theirs: {{users: [nobody]}}
"""
SECRET = "s3cret-argument"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("attack-arrays"), POLICY, {}) as c:
        yield c


def schedctl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-m", "schedulerd.cli", "--daemon", cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


# The CLI as `nobody`: everything imported while still root (the interpreter lives
# under /root, which nobody may not enter), then the uid dropped, then the command.
AS_NOBODY = """
import os, sys
import grpc, json, shutil, schedulerd.cli.main as cli
os.setgroups([]); os.setgid(65534); os.setuid(65534)
cli.main(sys.argv[1:])
"""


def as_nobody(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-c", AS_NOBODY, "--daemon", cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd="/",
    )


def _array_id(out: str) -> int:
    m = re.search(r"submitted job array (\d+) ", out)
    assert m, out
    return int(m.group(1))


def _states(cluster: Cluster, array_id: int) -> Counter[str]:
    jobs = cluster.client.list_jobs(array_id=array_id, states=())
    return Counter(jobs_pb2.JobState.Name(j.state) for j in jobs)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_can_neither_cancel_nor_read_an_array(cluster: Cluster) -> None:
    done = schedctl(
        cluster, "submit", "--consumer", "/lab/mine", "--array", "0-9", "--", "sleep", SECRET
    )
    assert done.returncode == 0, done.stderr
    array = _array_id(done.stdout)
    assert as_nobody(cluster, "whoami").returncode == 0  # (the daemon knows nobody)
    for args in (
        ["show", str(array)],
        ["show", f"{array}_3"],
        ["show", str(array), "--json"],
        ["jobs", "--all", "--expand", "--json"],
    ):
        seen = as_nobody(cluster, *args)
        assert seen.returncode == 0, (args, seen.stderr)
        assert SECRET not in seen.stdout, args  # redacted, as another user's job
    for ref in (str(array), f"{array}_3", str(array + 3)):
        refused = as_nobody(cluster, "cancel", ref)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert _states(cluster, array) == Counter({"PENDING": 10})
    # An element's own id is one job, even when asked as a whole array.
    cluster.client.cancel(array + 3, whole_array=True)
    assert _states(cluster, array) == Counter({"PENDING": 9, "CANCELLED": 1})


def test_cancelling_a_partly_ended_array_leaves_the_ended_as_they_were(
    cluster: Cluster,
) -> None:
    array = cluster.client.submit("/lab/mine", ["true"], array="0-4").id
    one = schedctl(cluster, "cancel", f"{array}_2")
    assert one.returncode == 0 and f"job {array}_2: CANCELLED" in one.stdout, one.stdout
    reason = cluster.client.get_job(array, array_index=2).reason
    whole = schedctl(cluster, "cancel", str(array))
    assert whole.returncode == 0, whole.stderr
    assert _states(cluster, array) == Counter({"CANCELLED": 5})
    assert cluster.client.get_job(array, array_index=2).reason == reason
    again = schedctl(cluster, "cancel", str(array))  # all ended: nothing to do, no error
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    "text",
    [
        "123_",
        "_7",
        "١٢٣",
        "123_٧",
        "１２３",
        "123_7_8",
        "+5",
        "-1",
        " 5",
        "5 ",
        "0x10",
        "5_-1",
        "",
        "_",
    ],
)
def test_odd_spellings_of_a_job_are_refused_in_words(text: str) -> None:
    with pytest.raises(ArrayError):
        parse_job_ref(text)


def test_odd_spellings_through_the_cli(cluster: Cluster) -> None:
    assert parse_job_ref("0123_007") == (123, 7)  # leading zeros: the same job, as Slurm
    for text in ("123_", "_7", "١٢٣_٧", "9" * 21, "1_" + "9" * 8):
        done = schedctl(cluster, "show", text)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (text, done.stderr)


@pytest.mark.parametrize(
    "text",
    [
        "5-1",
        "1-5:0",
        "1-5:-1",
        "0-1000000",
        "1000000",
        "00000001",
        "1,,2",
        "٣",
        "1-",
        "-1",
        "1:2",
        "0-9%0",
        "%",
        "0-9999,10000",
        "1 2",
    ],
)
def test_odd_indices_are_refused(text: str) -> None:
    with pytest.raises(ArrayError):
        parse_indices(text)


def test_duplicate_indices_are_counted_once() -> None:
    assert parse_indices("1,1,1-3,2") == [1, 2, 3]
    assert parse_indices(" 0-4:2 , 4 ") == [0, 2, 4]
    assert len(parse_indices("999990-999999")) == 10


def test_an_array_written_twice_is_its_indices_once() -> None:
    assert len(parse_indices("0-9999,0-9999")) == 10_000


def test_ten_thousand_elements_are_listed_in_a_few_lines_and_cancelled_in_one_call(
    cluster: Cluster,
) -> None:
    done = schedctl(cluster, "submit", "--consumer", "/lab/mine", "--array", "0-9999", "--", "true")
    assert done.returncode == 0, done.stderr
    array = _array_id(done.stdout)
    assert f"(10000 jobs, {array}_[0-9999])" in done.stdout
    jobs = schedctl(cluster, "jobs", "--consumer", "/lab/mine")
    assert jobs.returncode == 0, jobs.stderr
    mine = [line for line in jobs.stdout.splitlines() if line.startswith(f"{array}_")]
    assert mine and mine[0].startswith(f"{array}_[0-9999]") and len(mine) == 1
    show = schedctl(cluster, "show", str(array))
    assert show.returncode == 0 and "10000 elements" in show.stdout, show.stdout
    assert len(show.stdout.splitlines()) < 20
    cancel = schedctl(cluster, "cancel", str(array))
    assert cancel.returncode == 0, cancel.stderr
    assert _states(cluster, array) == Counter({"CANCELLED": 10_000})


def test_an_array_cannot_multiply_a_large_spec_past_what_a_batch_may_carry(
    cluster: Cluster,
) -> None:
    before = len(cluster.client.list_jobs(consumer="/lab/mine", states=()))
    argv = ["true", "x" * 4000]  # 4 KB, 5,000 times: 20 MB, more than any batch's 16 MiB
    try:
        with pytest.raises(ClientError) as e:
            cluster.client.submit("/lab/mine", argv, array="0-4999")
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        for j in cluster.client.list_jobs(consumer="/lab/mine"):
            if len(j.spec.command) == 2 and j.array_index == 0:
                cluster.client.cancel(j.id, whole_array=True)
    assert len(cluster.client.list_jobs(consumer="/lab/mine", states=())) == before
