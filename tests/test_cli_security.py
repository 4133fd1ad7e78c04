"""The client side of authentication: `schedctl ca` as real processes, token settings
(--ttl, token files and their permissions), and what a Client sends: its token on every
call, TLS with the cluster CA, pages of jobs followed to the end.

The daemon's side (tokens it accepts, whoami, audit) is tested with the daemon; here a
stand-in server only records what arrives."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from schedulerd.api.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from schedulerd.auth.ca import init_ca, issue_server, load_ca, node_name_of
from schedulerd.auth.tlsfiles import server_credentials
from schedulerd.cli.tokens import parse_ttl
from schedulerd.client import (
    Client,
    CredentialError,
    is_local_address,
    read_token_file,
    token_from_env,
)

REPO = Path(__file__).resolve().parent.parent


def schedctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "schedulerd.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# -- schedctl ca ---------------------------------------------------------------------


def test_ca_init_makes_a_ca_and_never_overwrites_one(tmp_path: Path) -> None:
    made = schedctl("ca", "init", str(tmp_path / "ca"))
    assert made.returncode == 0, made.stderr
    assert "secret" in made.stdout
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    first = (tmp_path / "ca" / "ca.crt").read_bytes()

    again = schedctl("ca", "init", str(tmp_path / "ca"))
    assert again.returncode == 2
    assert "exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == first

    forced = schedctl("ca", "init", str(tmp_path / "ca"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "ca" / "ca.crt").read_bytes() != first
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600


def test_ca_issues_node_and_server_certificates(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    ca = str(tmp_path / "ca")
    node = schedctl("ca", "issue-node", "--ca", ca, "n1", "--out", str(tmp_path / "n"))
    assert node.returncode == 0, node.stderr
    assert node_name_of((tmp_path / "n" / "n1.crt").read_bytes()) == "n1"
    assert _mode(tmp_path / "n" / "n1.key") == 0o600

    server = schedctl(
        "ca", "issue-server", "--ca", ca, "--host", "localhost", "--host", "10.1.2.3",
        "--out", str(tmp_path / "s"), "--days", "30",
    )  # fmt: skip
    assert server.returncode == 0, server.stderr
    assert _mode(tmp_path / "s" / "server.key") == 0o600
    assert "localhost, 10.1.2.3" in server.stdout


def test_ca_commands_say_what_is_wrong(tmp_path: Path) -> None:
    missing = schedctl("ca", "issue-node", "--ca", str(tmp_path / "nope"), "n1")
    assert missing.returncode == 2
    assert f"cannot read {tmp_path / 'nope' / 'ca.crt'}" in missing.stderr

    init_ca(tmp_path / "ca")
    bad = schedctl("ca", "issue-node", "--ca", str(tmp_path / "ca"), "../etc/x")
    assert bad.returncode == 2 and "node name '../etc/x'" in bad.stderr
    days = schedctl("ca", "issue-node", "--ca", str(tmp_path / "ca"), "n1", "--days", "0")
    assert days.returncode != 0 and "--days" in days.stderr
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.crt", "ca.key"]
    nohost = schedctl("ca", "issue-server", "--ca", str(tmp_path / "ca"))
    assert nohost.returncode == 2 and "--host" in nohost.stderr


# -- token settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("10m", 600), ("1h", 3600), ("30d", 30 * 86400)],
)
def test_ttl_takes_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["0s", "10", "1w", "-1h", "1.5h", "h", "", "1 h x"])
def test_ttl_refuses_anything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="45s, 10m, 1h or 30d"):
        parse_ttl(text)


def test_a_token_file_is_read_only_when_only_its_owner_can(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("secret-token\n")
    for mode in (0o644, 0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(CredentialError, match=f"permissions {mode:04o}.*chmod 600"):
            read_token_file(path)
    path.chmod(0o600)
    assert read_token_file(path) == "secret-token"
    assert token_from_env({"SCHEDULERD_TOKEN_FILE": str(path)}) == "secret-token"
    assert token_from_env({"SCHEDULERD_TOKEN": "t1", "SCHEDULERD_TOKEN_FILE": str(path)}) == "t1"
    assert token_from_env({}) is None
    path.write_text("  \n")
    with pytest.raises(CredentialError, match="is empty"):
        read_token_file(path)
    with pytest.raises(CredentialError, match=f"cannot read token file {tmp_path / 'nope'}"):
        read_token_file(tmp_path / "nope")


def test_schedctl_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("secret-token\n")
    path.chmod(0o644)
    flag = schedctl("--token-file", str(path), "whoami")
    assert flag.returncode == 2
    assert f"token file {path} has permissions 0644" in flag.stderr
    env = schedctl("whoami", env={"SCHEDULERD_TOKEN_FILE": str(path)})
    assert env.returncode == 2 and "permissions 0644" in env.stderr


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("dns:///localhost:50051", True),
        ("ipv4:127.0.0.1:50051", True),
        ("unix:/run/schedulerd.sock", True),
        ("sched.lab:50051", False),
        ("10.0.0.5:50051", False),
        ("[2001:db8::1]:50051", False),
        ("localhost.evil.example:50051", False),
    ],
)
def test_local_addresses_are_told_apart(address: str, local: bool) -> None:
    assert is_local_address(address) is local


def test_a_token_never_goes_in_the_clear_to_another_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SCHEDULERD_CA", raising=False)
    with pytest.raises(CredentialError, match="only over TLS"):
        Client("sched.lab:50051", token="t")
    monkeypatch.setenv("SCHEDULERD_TOKEN", "t")
    with pytest.raises(CredentialError, match="only over TLS"):
        Client("sched.lab:50051")
    Client("sched.lab:50051", token="").close()  # "": no token, whatever the environment


# -- what a Client sends -------------------------------------------------------------


@dataclass
class Seen:
    """What a stand-in daemon received."""

    authorization: list[str] = field(default_factory=list)
    page_tokens: list[str] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)


def _auth(context: grpc.ServicerContext) -> str:
    return str(dict(context.invocation_metadata()).get("authorization", ""))


class _Admin(admin_pb2_grpc.AdminServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def WhoAmI(
        self, request: admin_pb2.WhoAmIRequest, context: grpc.ServicerContext
    ) -> admin_pb2.WhoAmIResponse:
        self.seen.authorization.append(_auth(context))
        return admin_pb2.WhoAmIResponse(identity="alice", kind="user", credential="token")


class _Jobs(jobs_pb2_grpc.SchedulerServicer):
    """Jobs 1..25, newest first, in pages of at most 10."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        self.seen.authorization.append(_auth(context))
        self.seen.page_tokens.append(request.page_token)
        self.seen.limits.append(request.limit)
        top = int(request.page_token or 25)
        size = min(request.limit or 10, 10)
        ids = list(range(top, max(top - size, 0), -1))
        rest = str(ids[-1] - 1) if ids and ids[-1] > 1 else ""
        return jobs_pb2.ListJobsResponse(
            jobs=[jobs_pb2.Job(id=i) for i in ids], next_page_token=rest
        )

    def WatchJobs(
        self, request: jobs_pb2.WatchJobsRequest, context: grpc.ServicerContext
    ) -> Iterator[jobs_pb2.JobUpdate]:
        self.seen.authorization.append(_auth(context))
        yield jobs_pb2.JobUpdate(job=jobs_pb2.Job(id=7))


@dataclass
class StandIn:
    plain: str  # loopback, no TLS
    tls: str  # TLS, by the name in its certificate
    ca_crt: Path
    seen: Seen


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandIn]:
    init_ca(tmp_path)
    issue_server(load_ca(tmp_path), ["localhost"], tmp_path)
    seen = Seen()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    admin_pb2_grpc.add_AdminServicer_to_server(_Admin(seen), server)
    jobs_pb2_grpc.add_SchedulerServicer_to_server(_Jobs(seen), server)
    plain = server.add_insecure_port("127.0.0.1:0")
    tls = server.add_secure_port(
        "127.0.0.1:0", server_credentials(tmp_path / "server.crt", tmp_path / "server.key")
    )
    server.start()
    yield StandIn(f"127.0.0.1:{plain}", f"localhost:{tls}", tmp_path / "ca.crt", seen)
    server.stop(grace=None)


def test_a_token_goes_with_every_call(standin: StandIn) -> None:
    with Client(standin.plain, token="t0k3n") as c:
        assert c.whoami().identity == "alice"
        assert [j.id for j in c.watch()] == [7]
    assert standin.seen.authorization == ["Bearer t0k3n", "Bearer t0k3n"]


def test_no_token_sends_no_authorization(standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEDULERD_TOKEN", raising=False)
    monkeypatch.delenv("SCHEDULERD_TOKEN_FILE", raising=False)
    with Client(standin.plain) as c:
        c.whoami()
    assert standin.seen.authorization == [""]


def test_tls_with_the_cluster_ca_from_the_environment(
    standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDULERD_CA", str(standin.ca_crt))
    monkeypatch.setenv("SCHEDULERD_TOKEN", "from-env")
    with Client(standin.tls) as c:
        assert c.whoami().identity == "alice"
    assert standin.seen.authorization == ["Bearer from-env"]


def test_schedctl_sends_the_token_of_its_token_file(standin: StandIn, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("file-token\n")
    path.chmod(0o600)
    out = schedctl(
        "--daemon", standin.tls, "--ca", str(standin.ca_crt), "--token-file", str(path), "whoami",
        env={"SCHEDULERD_TOKEN": "not-this-one"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "alice (user)" in out.stdout and "proven by:  token" in out.stdout
    assert standin.seen.authorization == ["Bearer file-token"]


def test_list_jobs_follows_every_page(standin: StandIn) -> None:
    with Client(standin.plain, token="") as c:
        assert [j.id for j in c.list_jobs()] == list(range(25, 0, -1))
        assert standin.seen.page_tokens == ["", "15", "5"]
        standin.seen.page_tokens.clear()
        assert [j.id for j in c.list_jobs(limit=12)] == list(range(25, 13, -1))
    assert standin.seen.page_tokens == ["", "15"]
    assert standin.seen.limits[-2:] == [12, 2]  # asks for no more than it still wants


def test_schedctl_without_the_ca_at_a_tls_daemon_says_what_is_likely_missing(
    standin: StandIn,
) -> None:
    out = schedctl("--daemon", standin.tls, "whoami", env={"SCHEDULERD_CA": ""})
    assert out.returncode == 1
    # The daemon closes a plaintext connection to its TLS port without a word.
    assert "If it serves TLS, give its CA: --ca FILE or SCHEDULERD_CA" in out.stderr, out.stderr
    with_ca = schedctl("--daemon", standin.tls, "--ca", str(standin.ca_crt), "whoami")
    assert with_ca.returncode == 0, with_ca.stderr
