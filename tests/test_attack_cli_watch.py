"""Attacks on the CLI and the client library of issue 14: Client.watch(ids=...) must end,
and what `schedctl` prints of other users' text must not drive the reader's terminal."""

from __future__ import annotations

import threading
from pathlib import Path

from harness import Cluster

from schedulerd.api.v1 import jobs_pb2
from schedulerd.cli import format as fmt
from schedulerd.client import Client, ClientError

POLICY = """
version: 1
consumers:
  a: {share: 1}
"""


def _watch_ends(client: Client, ids: list[int], within_s: float) -> tuple[bool, object]:
    """Whether client.watch(ids=ids) returned or raised within `within_s`."""
    outcome: list[object] = []

    def go() -> None:
        try:
            outcome.append(list(client.watch(ids=ids)))
        except ClientError as e:
            outcome.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(within_s)
    return (not t.is_alive(), outcome[0] if outcome else None)


def test_watch_of_an_unknown_job_id_ends(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, POLICY)
    try:
        cluster.start_daemon()
        watcher = Client(cluster.address, timeout_s=10)
        try:
            ended, _ = _watch_ends(watcher, [987654321], 5.0)
            assert ended, "watch(ids=[987654321]) neither returned nor raised in 5 s"
        finally:
            watcher.close()
    finally:
        cluster.stop()


def _hostile_job() -> jobs_pb2.Job:
    job = jobs_pb2.Job(id=7, state=jobs_pb2.PENDING, redacted=True)
    # Another user's job as ListJobs shows it: its name is kept (only argv[0] is not).
    job.spec.name = "x\x1b]0;owned\x07\x1b[2J\x1b]52;c;ZWNobyBwd25lZA==\x07"
    job.spec.consumer = "/a"
    job.spec.user = "mallory"
    job.reason = "waits"
    return job


def test_jobs_table_does_not_print_terminal_escapes_from_job_names() -> None:
    out = fmt.jobs_table([_hostile_job()], 120)
    assert "\x1b" not in out and "\x07" not in out


def test_job_detail_does_not_print_terminal_escapes_from_job_names() -> None:
    out = fmt.job_detail(_hostile_job())
    assert "\x1b" not in out and "\x07" not in out


def test_exit_codes_read_as_signals() -> None:
    assert fmt.exit_code_text(-15) == "killed by SIGTERM (-15)"
    assert fmt.exit_code_text(137) == "137 (128 + SIGKILL)"
    assert fmt.exit_code_text(0) == "0"
    assert "signal 99" in fmt.exit_code_text(-99)  # no such signal: no crash


def test_commands_are_quoted_so_they_can_be_pasted_back() -> None:
    import shlex

    for argv in (
        ["python", "-c", "import time,os; print('x')"],
        ["sh", "-c", 'echo "$HOME" `id`; rm -rf /tmp/x*'],
        ["a b", "", "--flag=$(whoami)"],
    ):
        assert shlex.split(fmt.command_text(argv)) == argv
