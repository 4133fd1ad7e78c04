"""Through the whole system: a job submitted by a real Unix user (a token of hers) runs
with her uid and groups, without the agent's environment, and her log is hers alone
through the API, even when the job turns it into a symlink to a root-only file."""

from __future__ import annotations

import grp
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, wait_for
from unix_users import throwaway_user

from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import Client, ClientError

SECRET = "root-only-secret-7d1f"


@pytest.fixture
def root_dir() -> Iterator[Path]:
    # Under /tmp itself, 0755: the job's user must reach the agent's job folders (pytest's
    # own folder is private to root).
    root = Path(tempfile.mkdtemp(prefix="sd-asuser-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _log(c: Client, job_id: int) -> str:
    return b"".join(c.logs(job_id, follow=False)).decode(errors="replace")


def test_a_users_job_runs_as_her_and_her_log_is_hers_alone(root_dir: Path) -> None:
    with throwaway_user("sda") as alice, throwaway_user("sdb") as bob:
        policy = f"""
version: 1
users: [{alice.pw_name}, {bob.pw_name}]
consumers:
  a:
    owned: 0
"""
        secret_file = root_dir / "secret"
        secret_file.write_text(SECRET)
        secret_file.chmod(0o600)
        cluster = Cluster(root_dir, policy)
        os.environ["SCHEDULERD_AGENT_SECRET"] = "agent-env-secret"  # the agent inherits it
        try:
            cluster.start_daemon()
            cluster.start_agent("u1", 2)
            cluster.wait_nodes_up(1)
            admin = cluster.client
            tokens = {u.pw_name: admin.create_token(u.pw_name, 3600).secret for u in (alice, bob)}
            as_alice = Client(cluster.address, timeout_s=10, token=tokens[alice.pw_name])
            as_bob = Client(cluster.address, timeout_s=10, token=tokens[bob.pw_name])
            script = (
                "import os; print('ids', os.getuid(), os.getgid(), sorted(os.getgroups())); "
                "print('leak', os.environ.get('SCHEDULERD_AGENT_SECRET', 'none')); "
                "print('home', os.environ.get('HOME'))"
            )
            job = as_alice.submit("/a", ["/usr/bin/python3", "-c", script])
            assert job.spec.user == alice.pw_name
            wait_for(
                "alice's job to succeed",
                lambda: as_alice.get_job(job.id).state == jobs_pb2.SUCCEEDED,
            )
            log = _log(as_alice, job.id)
            groups = sorted(os.getgrouplist(alice.pw_name, alice.pw_gid))
            assert f"ids {alice.pw_uid} {alice.pw_gid} {groups}" in log, log
            assert "leak none" in log and f"home {alice.pw_dir}" in log, log
            assert grp.getgrgid(alice.pw_gid).gr_name == alice.pw_name

            # bob may not read it through the API.
            with pytest.raises(ClientError) as refused:
                _log(as_bob, job.id)
            assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED

            # Her next job swaps its own log for a link to a root-only file: nothing of it
            # comes back through the API, to her or to anyone.
            swap = (
                "import os, glob; "
                "log = [p for p in glob.glob('/proc/self/fd/*') "
                "if os.path.realpath(p).endswith('job.log')][0]; "
                "real = os.path.realpath(log); os.remove(real); "
                f"os.symlink({str(secret_file)!r}, real); print('swapped')"
            )
            evil = as_alice.submit("/a", ["/usr/bin/python3", "-c", swap])
            wait_for(
                "the swapping job to end",
                lambda: as_alice.get_job(evil.id).state in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED),
            )
            assert as_alice.get_job(evil.id).state == jobs_pb2.SUCCEEDED  # it did swap
            for reader in (as_alice, admin):
                try:
                    text = _log(reader, evil.id)
                except ClientError as e:  # no log at all is a fine answer too
                    text = e.details
                assert SECRET not in text
            as_alice.close()
            as_bob.close()
        finally:
            os.environ.pop("SCHEDULERD_AGENT_SECRET", None)
            cluster.stop()
