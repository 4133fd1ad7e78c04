"""Issue 15 item 5: job arrays as Slurm users expect them (docs/arrays.md), through a real
daemon and agent and `schedctl` run as a user runs it."""

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
from harness import Cluster, running_cluster, wait_for

from schedulerd.arrays import MAX_ELEMENTS, ArrayError, compact, parse_indices, parse_job_ref
from schedulerd.client import ClientError, JobState

ME = pwd.getpwuid(os.getuid()).pw_name
NODE = f"arrays-{os.getpid()}"
POLICY = f"""
version: 1
consumers:
  lab:
    consumers:
      mine: {{users: [{ME}]}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("arrays"), POLICY, {NODE: 4}) as c:
        yield c


def schedctl(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    env.pop("COLUMNS", None)
    done = subprocess.run(
        [sys.executable, "-m", "schedulerd.cli", "--daemon", cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _array_id(out: str) -> int:
    m = re.search(r"submitted job array (\d+) ", out)
    assert m, out
    return int(m.group(1))


# --- the syntax -------------------------------------------------------------------------


def test_indices_as_slurm_writes_them() -> None:
    assert parse_indices("0-3") == [0, 1, 2, 3]
    assert parse_indices("0-20:10") == [0, 10, 20]
    assert parse_indices("1,3,5-7") == [1, 3, 5, 6, 7]
    assert parse_indices("5,1-2,2") == [1, 2, 5]  # sorted, once each
    assert len(parse_indices("0-9999")) == MAX_ELEMENTS
    assert compact([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_job_ref("123") == (123, None)
    assert parse_job_ref("123_7") == (123, 7)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0-10000", "more than 10,000"),
        ("0-99999:5,100000-200000", "more than 10,000"),
        ("0-9%2", "%N limit"),
        ("", "empty"),
        ("5-1", "ends before"),
        ("1-5:0", "step must be at least 1"),
        ("3:2", "step needs a range"),
        ("a-b", "not N"),
        ("-1", "not N"),
        ("1000000", "below 1,000,000"),
    ],
)
def test_indices_refused_with_the_reason(text: str, words: str) -> None:
    with pytest.raises(ArrayError, match=re.escape(words)):
        parse_indices(text)


# --- through the daemon -----------------------------------------------------------------


def test_a_thousand_element_array_is_one_call_and_listed_compactly(cluster: Cluster) -> None:
    out = schedctl(
        cluster, "submit", "--consumer", "/lab/mine", "--array", "0-999", "--", "sleep", "600"
    ).stdout
    array = _array_id(out)
    assert f"(1000 jobs, {array}_[0-999])" in out
    elements = cluster.client.list_jobs(array_id=array)
    assert sorted(e.array_index for e in elements) == list(range(1000))
    assert {e.array_id for e in elements} == {array}
    # One transaction: consecutive ids, the first element's id names the array.
    assert sorted(e.id for e in elements) == list(range(array, array + 1000))
    job = cluster.client.get_job(array, array_index=999)
    assert (job.array_index, job.id) == (999, array + 999)

    jobs = schedctl(cluster, "jobs").stdout
    lines = [line for line in jobs.splitlines() if line.startswith(f"{array}_")]
    assert any(re.match(rf"{array}_\[[0-9,-]+\] ", line) for line in lines), jobs
    assert len(lines) < 10, jobs  # the waiting ones are one line, the running ones few
    expanded = schedctl(cluster, "jobs", "--expand").stdout
    assert sum(line.startswith(f"{array}_") for line in expanded.splitlines()) == 1000

    summary = schedctl(cluster, "show", str(array)).stdout
    assert f"Job array {array}: sleep (1000 elements)" in summary
    counted = dict(re.findall(r"^\s+(PENDING|RUNNING)\s+(\d+)", summary, re.M))
    assert sum(int(n) for n in counted.values()) == 1000, summary

    one = schedctl(cluster, "show", f"{array}_7").stdout
    assert f"Job {array + 7} (array element {array}_7): sleep" in one

    # One element cancelled, then the whole array.
    out = schedctl(cluster, "cancel", f"{array}_7").stdout
    assert out.startswith(f"job {array}_7: CANCELLED"), out
    states = Counter(str(JobState.of(e.state)) for e in cluster.client.list_jobs(array_id=array))
    assert states["CANCELLED"] == 1
    out = schedctl(cluster, "cancel", str(array)).stdout
    assert f"job array {array}:" in out

    def all_ended() -> bool:
        elements = cluster.client.list_jobs(array_id=array)
        return all(JobState.of(e.state).ended for e in elements)

    wait_for("every element to end", all_ended, timeout_s=60)
    summary = schedctl(cluster, "show", str(array)).stdout
    assert re.search(r"CANCELLED\s+1000 ", summary), summary


def test_elements_run_with_their_own_index(cluster: Cluster) -> None:
    script = 'echo "index=$SCHEDULERD_ARRAY_INDEX array=$SCHEDULERD_ARRAY_JOB_ID"'
    out = schedctl(
        cluster, "submit", "--consumer", "/lab/mine", "--array", "0-9:3", "--", "sh", "-c", script
    ).stdout
    array = _array_id(out)

    def ended() -> list[object] | None:
        elements = cluster.client.list_jobs(array_id=array)
        done = all(JobState.of(e.state).ended for e in elements)
        return list(elements) if done and len(elements) == 4 else None

    elements = wait_for("the 4 elements to end", ended, timeout_s=60)
    assert sorted(e.array_index for e in elements) == [0, 3, 6, 9]  # type: ignore[attr-defined]
    for index in (0, 3, 6, 9):
        log = schedctl(cluster, "logs", f"{array}_{index}", "--no-follow").stdout
        lines = [line for line in log.splitlines() if not line.startswith("--- ")]
        assert lines == [f"index={index} array={array}"], log


def test_bounds_and_refusals(cluster: Cluster) -> None:
    too_many = schedctl(
        cluster,
        "submit",
        "--consumer",
        "/lab/mine",
        "--array",
        "0-10000",
        "--",
        "true",
        check=False,
    )
    assert too_many.returncode != 0 and "more than 10,000" in too_many.stderr
    throttle = schedctl(
        cluster, "submit", "--consumer", "/lab/mine", "--array", "0-9%2", "--", "true", check=False
    )
    assert throttle.returncode != 0 and "%N limit" in throttle.stderr
    waiting = schedctl(
        cluster,
        "submit",
        "--consumer",
        "/lab/mine",
        "--array",
        "0-1",
        "--wait",
        "--",
        "true",
        check=False,
    )
    assert waiting.returncode != 0 and "not for an array" in waiting.stderr
    # The daemon decides, whatever a client says.
    before = len(cluster.client.list_jobs(states=()))
    for text in ("0-10000", "0-9%2", "x", "1-" + "9" * 30):
        with pytest.raises(ClientError) as e:
            cluster.client.submit("/lab/mine", ["true"], array=text)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, text
    assert len(cluster.client.list_jobs(states=())) == before
    # An array to a consumer one may not use is refused whole.
    with pytest.raises(ClientError) as e:
        cluster.client.submit("/lab/nobody", ["true"], array="0-3")
    assert len(cluster.client.list_jobs(states=())) == before
    # A missing element, and a job that is not an array.
    missing = schedctl(cluster, "show", "999999_1", check=False)
    assert missing.returncode != 0 and "no job 999999_1" in missing.stderr
    assert schedctl(cluster, "show", "12x", check=False).returncode != 0
