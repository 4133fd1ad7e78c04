"""A user on a node needs no credential file: the node's agent vouches for the uid the
kernel reports on its Unix socket (agent/vouch.py, docs/security.md). Real daemon, real
agent, a throwaway Unix user whose process asks."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, wait_for
from unix_users import throwaway_user

from agent.vouch import serve
from schedulerd.api.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from schedulerd.auth.vouch import fetch

POLICY = """
version: 1
users: "*"
consumers:
  a:
    owned: 0
"""
REPO = Path(__file__).resolve().parent.parent
# Another user cannot run the venv's python (it may live under /root): the system's
# python of the same version, with the venv's packages and this checkout on its path.
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Under /tmp itself: pytest's own folder is private to root, and a user's process
    # must reach the sockets.
    root = Path(tempfile.mkdtemp(prefix="sd-vouch-", dir="/tmp"))
    root.chmod(0o755)
    c = Cluster(root, POLICY, daemon_args=("--also-listen", f"unix:{root}/daemon.sock"))
    try:
        c.start_daemon()
        c.start_agent("v1", 1)
        c.wait_nodes_up(1)
        wait_for("the vouching socket", lambda: _socket(c).exists())
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _socket(c: Cluster) -> Path:
    return c.root / "auth-v1.sock"


def _whoami(c: Cluster, credential: str) -> admin_pb2.WhoAmIResponse:
    with grpc.insecure_channel(f"unix:{c.root}/daemon.sock") as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        answer: admin_pb2.WhoAmIResponse = stub.WhoAmI(
            admin_pb2.WhoAmIRequest(),
            metadata=(("authorization", f"Bearer {credential}"),),
            timeout=10,
        )
        return answer


def _as_user(uid: int, gid: int, code: str, env: dict[str, str]) -> str:
    site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), None)
    path = f"{REPO}:{site}" if site else str(REPO)
    out = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", textwrap.dedent(code)],
        user=uid,
        group=gid,
        env={"PYTHONPATH": path, "HOME": "/", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_a_users_process_is_known_by_its_uid_through_the_agent(cluster: Cluster) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no system python for the other user")
    with throwaway_user() as user:
        # The user's own process fetches the credential (stdlib only, as any client
        # could), so the uid the agent sees is the user's.
        credential = _as_user(
            user.pw_uid,
            user.pw_gid,
            f"""
            import socket
            s = socket.socket(socket.AF_UNIX); s.connect({str(_socket(cluster))!r})
            print(s.recv(8192).decode().strip())
            """,
            {},
        )
        status, _, secret = credential.partition(" ")
        assert status == "ok", credential
        me = _whoami(cluster, secret)
        assert me.identity == user.pw_name
        assert me.credential == "node-vouched"
        assert not me.cluster_admin


def test_the_client_library_asks_the_agent_by_itself(cluster: Cluster) -> None:
    """schedulerd.client on a Unix socket with no token: the agent's credential goes
    with every call; the job it submits is the user's."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no system python for the other user")
    with throwaway_user() as user:
        out = _as_user(
            user.pw_uid,
            user.pw_gid,
            f"""
            from schedulerd.client import Client
            c = Client("unix:{cluster.root}/daemon.sock", timeout_s=20)
            who = c.whoami()
            job = c.submit("/a", ["/bin/true"])
            print(who.identity, who.credential, job.spec.user)
            """,
            {"SCHEDULERD_AUTH_SOCKET": str(_socket(cluster))},
        )
        assert out.split() == [user.pw_name, "node-vouched", user.pw_name]


def test_root_vouched_by_a_node_is_not_a_cluster_admin(cluster: Cluster) -> None:
    """Root on a node must not own the cluster: vouched credentials carry no admin."""
    secret = fetch(str(_socket(cluster)))
    me = _whoami(cluster, secret)
    assert me.identity == "root" and me.credential == "node-vouched"
    assert not me.cluster_admin
    with (
        grpc.insecure_channel(f"unix:{cluster.root}/daemon.sock") as ch,
        pytest.raises(grpc.RpcError) as refused,
    ):
        admin_pb2_grpc.AdminStub(ch).DrainNode(
            admin_pb2.DrainNodeRequest(node="v1"),
            metadata=(("authorization", f"Bearer {secret}"),),
            timeout=10,
        )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_a_credential_dies_with_its_agents_session(tmp_path: Path) -> None:
    c = Cluster(tmp_path, POLICY, daemon_args=("--also-listen", f"unix:{tmp_path}/daemon.sock"))
    try:
        c.start_daemon()
        agent = c.start_agent("v2", 1)
        c.wait_nodes_up(1)
        sock = tmp_path / "auth-v2.sock"
        wait_for("the vouching socket", sock.exists)
        secret = wait_for("a credential", lambda: _try_fetch(sock))
        assert _whoami_as(c, secret).identity == "root"
        agent.terminate()
        agent.wait(30)
        with pytest.raises(grpc.RpcError) as refused:
            _whoami_as(c, secret)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "no live session" in (refused.value.details() or "")
    finally:
        c.stop()


def _try_fetch(sock: Path) -> str | None:
    try:
        return fetch(str(sock))
    except Exception:
        return None


def _whoami_as(c: Cluster, secret: str) -> admin_pb2.WhoAmIResponse:
    with grpc.insecure_channel(f"unix:{c.root}/daemon.sock") as ch:
        answer: admin_pb2.WhoAmIResponse = admin_pb2_grpc.AdminStub(ch).WhoAmI(
            admin_pb2.WhoAmIRequest(),
            metadata=(("authorization", f"Bearer {secret}"),),
            timeout=10,
        )
        return answer


def test_nothing_is_vouched_for_a_uid_without_a_name() -> None:
    from agent.vouch import answer

    assert answer(os.getuid(), "n", None, 0).startswith(b"error")
    assert answer(2**31 - 7, "n", b"k" * 32, 0).startswith(b"error uid")


def test_a_node_vouched_user_mints_no_token_and_never_runs_as_root(cluster: Cluster) -> None:
    """Root on a node holds the session's key and could vouch for anyone: such a
    credential makes no token (which would outlive the session and carry admin), and
    its jobs never run as root, though the policy lets root run as root here."""
    secret = fetch(str(_socket(cluster)))
    meta = (("authorization", f"Bearer {secret}"),)
    with grpc.insecure_channel(f"unix:{cluster.root}/daemon.sock") as ch:
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminStub(ch).CreateToken(
                admin_pb2.CreateTokenRequest(user="root", ttl_seconds=3600),
                metadata=meta,
                timeout=10,
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        spec = jobs_pb2.JobSpec(
            consumer="/a", command=["/bin/true"], gpus=jobs_pb2.GpuRequest(min=1)
        )
        stub = jobs_pb2_grpc.SchedulerStub(ch)
        job = stub.SubmitJob(jobs_pb2.SubmitJobRequest(spec=spec), metadata=meta, timeout=10).job
        # The same through a batch and as a job array (docs/arrays.md).
        one = jobs_pb2.SubmitJobRequest(spec=spec)
        batch = stub.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=[one]), metadata=meta, timeout=10)
        array = stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(spec=spec, array="0-1"), metadata=meta, timeout=10
        ).job
    assert job.spec.user == "root"
    for job_id in (job.id, batch.jobs[0].id, array.id, array.id + 1):
        ended = wait_for(
            "the vouched root job to end",
            lambda job_id=job_id: (
                (j := cluster.client.get_job(job_id)).state == jobs_pb2.FAILED and j
            ),
        )
        assert "root" in ended.reason and "run_as_root" in ended.reason, ended.reason
    # The same job from root's login on the daemon's machine runs (as root).
    local = cluster.client.submit("/a", ["/bin/true"])
    wait_for(
        "root's own job to succeed",
        lambda: cluster.client.get_job(local.id).state == jobs_pb2.SUCCEEDED,
    )


def test_no_vouching_socket_in_a_folder_others_may_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # There another user could put their own socket in its place, or a symlink for the
    # agent's chmod to follow: the agent serves none, and says why.
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    socket_path = folder / "auth.sock"
    caplog.set_level(logging.WARNING, logger="agent.vouch")
    asyncio.run(asyncio.wait_for(serve(socket_path, "n1", lambda: b"k" * 32), 10))
    assert not socket_path.exists()
    assert "writable by others (mode 0777)" in caplog.text, caplog.text
