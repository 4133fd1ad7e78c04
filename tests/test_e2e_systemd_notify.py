"""What systemd sees of the daemon and the agent (deploy/systemd, docs/deploy.md): the
processes started with NOTIFY_SOCKET pointing at a datagram socket this test owns, as
systemd starts a Type=notify unit, and SIGHUP as `systemctl reload` sends it."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import Cluster, free_port, remove_agent_cgroups, wait_for

from schedulerd.client import Client
from schedulerd.sdnotify import Notifier

POLICY_A = "version: 1\nconsumers:\n  a: {owned: 2}\n"
POLICY_AB = "version: 1\nconsumers:\n  a: {owned: 2}\n  b: {owned: 2}\n"
# Line 4 has a key the policy schema does not know.
POLICY_BROKEN = "version: 1\nconsumers:\n  a: {owned: 2}\n  b: {owned: 2, colour: red}\n"


@dataclass
class Message:
    at: float
    fields: dict[str, str]


@dataclass
class NotifySocket:
    """The socket systemd would listen on, and every datagram sent to it."""

    path: Path
    sock: socket.socket
    got: list[Message] = field(default_factory=list)

    def drain(self, for_s: float = 0.0) -> list[Message]:
        deadline = time.monotonic() + for_s
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return self.got
                continue
            lines = data.decode().split("\n")
            self.got.append(Message(time.monotonic(), dict(x.split("=", 1) for x in lines)))

    def wait(self, key: str, value: str | None = None, timeout_s: float = 30.0) -> Message:
        def seen() -> Message | None:
            self.drain(0.05)
            for m in self.got:
                if key in m.fields and (value is None or m.fields[key] == value):
                    return m
            return None

        return wait_for(f"{key}={value or '*'} on the notify socket", seen, timeout_s, 0.0)

    def pings(self, since: float = 0.0) -> list[float]:
        return [m.at for m in self.got if m.fields.get("WATCHDOG") == "1" and m.at >= since]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield NotifySocket(path, sock)
    finally:
        sock.close()


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_the_daemon_is_ready_once_serving_and_its_loop_feeds_the_watchdog(
    tmp_path: Path, notify: NotifySocket
) -> None:
    hang = tmp_path / "hang-the-loop"
    env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "2000000",  # 2 s, as WatchdogSec=2 would ask
        "SCHEDULERD_FAILPOINTS": f"loop-hang={hang}",
    }
    cluster = Cluster(tmp_path, POLICY_A, tick_s=5.0, daemon_env=env)
    try:
        cluster.start_daemon()
        ready = notify.wait("READY", "1")
        assert _serving(cluster.address)
        # READY carries the first summary; nothing is up yet.
        assert ready.fields["STATUS"].startswith("0 of 0 nodes schedulable"), ready.fields
        # The idle loop (tick 5 s) turns at least every half interval to feed the watchdog.
        began = time.monotonic()
        notify.drain(5.0)
        pings = [began, *notify.pings(since=began)]
        assert len(pings) >= 4, notify.got
        assert max(b - a for a, b in itertools.pairwise(pings)) < 2.0, pings

        # The loop wedges (as a deadlock would): the pings stop, though gRPC still serves,
        # so systemd would restart the daemon at WatchdogSec.
        hang.touch()
        wait_for("the loop to hang", lambda: "failpoint loop-hang" in cluster.log_tail(200))
        notify.drain(0.5)
        wedged = time.monotonic()
        notify.drain(4.0)
        assert notify.pings(since=wedged) == [], notify.got[-5:]
        assert _serving(cluster.address)
    finally:
        if cluster.daemon is not None and cluster.daemon.poll() is None:
            cluster.kill_daemon()  # a wedged daemon does not stop on SIGTERM; systemd kills it
        cluster.stop()


def test_sighup_puts_an_edited_policy_in_force_and_keeps_the_old_one_if_broken(
    tmp_path: Path, notify: NotifySocket
) -> None:
    cluster = Cluster(tmp_path, POLICY_A, daemon_env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        cluster.start_daemon()
        notify.wait("READY", "1")
        c = cluster.client
        assert [x.path for x in c.consumers().consumers] == ["/", "/a"]
        first = c.get_policy().version

        cluster.policy.write_text("run_as_root: true\n" + POLICY_AB)
        notify.got.clear()
        assert cluster.daemon is not None
        cluster.daemon.send_signal(signal.SIGHUP)
        # As Type=notify-reload expects: RELOADING=1 (with the time), then READY=1 again.
        reloading = notify.wait("RELOADING", "1")
        assert int(reloading.fields["MONOTONIC_USEC"]) > 0
        notify.wait("READY", "1")
        assert [x.path for x in c.consumers().consumers] == ["/", "/a", "/b"]
        second = c.get_policy()
        assert second.version == first + 1
        assert second.source_name == str(cluster.policy)

        cluster.policy.write_text("run_as_root: true\n" + POLICY_BROKEN)
        notify.got.clear()
        cluster.daemon.send_signal(signal.SIGHUP)
        notify.wait("READY", "1")
        # The old policy stays, and the log names the file, line and key.
        assert c.get_policy().version == second.version
        assert [x.path for x in c.consumers().consumers] == ["/", "/a", "/b"]
        log = cluster.log_tail(50)
        assert f"{cluster.policy}:5: consumers.b.colour:" in log, log
        assert "the policy in force stays" in log
        assert cluster.daemon.poll() is None
    finally:
        cluster.stop()


def test_the_agent_is_ready_says_how_it_is_and_feeds_the_watchdog(
    tmp_path: Path, notify: NotifySocket
) -> None:
    node = f"notify-{os.getpid()}"
    cluster = Cluster(tmp_path, POLICY_A)
    try:
        cluster.start_daemon()
        agent_env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
        saved = dict(os.environ)
        os.environ.update(agent_env)  # Cluster.start_agent passes this process's environment
        try:
            cluster.start_agent(node, gpus=2)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        notify.wait("READY", "1")
        status = notify.wait("STATUS", None)
        assert "the daemon at" in status.fields["STATUS"]
        cluster.wait_nodes_up(1)

        def connected() -> bool:
            notify.drain(0.1)
            last = [m.fields["STATUS"] for m in notify.got if "STATUS" in m.fields][-1]
            return last.startswith("connected to the daemon") and "0 of 2 GPUs" in last

        wait_for("a STATUS that says connected", connected)
        began = time.monotonic()
        notify.drain(3.0)
        assert len(notify.pings(since=began)) >= 2, notify.got
        # SIGHUP (ExecReload) re-reads its config; it must not end the agent.
        cluster.agents[node].send_signal(signal.SIGHUP)
        notify.wait("RELOADING", "1")
        assert cluster.agents[node].poll() is None
        cluster.agents[node].terminate()
        notify.wait("STOPPING", "1")
    finally:
        cluster.stop()
        remove_agent_cgroups(node)


def test_a_notifier_outside_systemd_or_for_another_process_stays_quiet() -> None:
    assert not Notifier({}).enabled
    # WATCHDOG_PID names the process systemd watches: a child that inherited it is not.
    inherited = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    other = Notifier(inherited)
    assert other.watchdog_s is None
    mine = Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_s == 3.0


def test_an_abstract_notify_socket_is_reached() -> None:
    name = f"schedulerd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready("a status\nthat spans lines")
        assert sock.recv(4096) == b"READY=1\nSTATUS=a status that spans lines"
        n.close()


def test_sighup_rereads_the_config_file_live_keys_and_says_what_waits_for_a_restart(
    tmp_path: Path, notify: NotifySocket
) -> None:
    port = free_port()
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("run_as_root: true\n" + POLICY_A)
    second.write_text("run_as_root: true\n" + POLICY_AB)
    config = tmp_path / "schedulerd.toml"

    def write_config(policy: Path, level: str, tick: float) -> None:
        config.write_text(
            f'listen = "127.0.0.1:{port}"\ndb = "{tmp_path / "s.db"}"\n'
            f'policy = "{policy}"\nlog-level = "{level}"\ntick = {tick}\n'
        )

    write_config(first, "INFO", 0.5)
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "schedulerd.daemon", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
        )
    client = Client(f"127.0.0.1:{port}", timeout_s=10)
    try:
        notify.wait("READY", "1")
        assert client.get_policy().source_name == str(first)

        # Another policy file, DEBUG, and a tick that only a restart can change.
        write_config(second, "DEBUG", 0.7)
        notify.got.clear()
        daemon.send_signal(signal.SIGHUP)
        notify.wait("RELOADING", "1")
        notify.wait("READY", "1")
        assert client.get_policy().source_name == str(second)
        assert [x.path for x in client.consumers().consumers] == ["/", "/a", "/b"]
        text = log.read_text()
        assert f"tick changed in {config}:5; it takes effect at the next start" in text, text
        wait_for("a DEBUG line", lambda: " DEBUG schedulerd" in log.read_text())

        # A config file with an error changes nothing, and says where.
        config.write_text(config.read_text() + "colour = 'red'\n")
        notify.got.clear()
        daemon.send_signal(signal.SIGHUP)
        notify.wait("READY", "1")
        assert client.get_policy().source_name == str(second)
        assert f"{config}:6: colour: unknown key" in log.read_text()
        assert daemon.poll() is None
    finally:
        client.close()
        daemon.terminate()
        daemon.wait(15)


def _catches_sighup(pid: int) -> bool:
    """Whether the process has a handler for SIGHUP (bit 1 of SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def test_a_sighup_during_the_start_is_one_reload_once_started_not_a_death(
    tmp_path: Path, notify: NotifySocket
) -> None:
    port = free_port()
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "schedulerd.daemon", "--no-config",
             "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "s.db")],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
        )  # fmt: skip
    try:
        # As soon as main() holds SIGHUP, long before it serves (a `systemctl reload`
        # queued behind the start would come at READY, the earliest).
        wait_for(
            "SIGHUP held",
            lambda: daemon.poll() is None and _catches_sighup(daemon.pid),
            every_s=0.001,
        )
        assert not any("READY" in m.fields for m in notify.drain(0.0))
        daemon.send_signal(signal.SIGHUP)
        notify.wait("READY", "1")
        notify.wait("RELOADING", "1")  # the held one, once the daemon could
        wait_for("the reload", lambda: "reload: no policy file configured" in log.read_text())
        assert daemon.poll() is None
    finally:
        daemon.terminate()
        daemon.wait(15)


def test_a_manager_that_does_not_read_never_blocks_the_sender(tmp_path: Path) -> None:
    # Its queue fills after a few datagrams (net.unix.max_dgram_qlen); a blocking send
    # would then stall the daemon's event loop for good.
    path = tmp_path / "deaf.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as deaf:
        deaf.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        sent = threading.Thread(target=lambda: [n.status(f"s{i}") for i in range(1000)])
        sent.start()
        sent.join(30)
        assert not sent.is_alive()
        n.close()


def test_a_policy_applied_through_the_api_stays_until_the_file_changes(
    tmp_path: Path, notify: NotifySocket
) -> None:
    cluster = Cluster(tmp_path, POLICY_A, daemon_env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        cluster.start_daemon()
        notify.wait("READY", "1")
        c = cluster.client
        applied = c.apply_policy("run_as_root: true\n" + POLICY_AB, source_name="ops")
        assert applied.applied
        assert cluster.daemon is not None

        # A reload for another reason (the file is as it was): the applied policy stays.
        notify.got.clear()
        cluster.daemon.send_signal(signal.SIGHUP)
        notify.wait("READY", "1")
        assert [x.path for x in c.consumers().consumers] == ["/", "/a", "/b"]
        assert "unchanged since it was applied" in cluster.log_tail(20)

        # ...and a restart too.
        cluster.stop()
        cluster.client = Client(cluster.address, timeout_s=10)
        cluster.start_daemon()
        assert [x.path for x in cluster.client.consumers().consumers] == ["/", "/a", "/b"]

        # An edit of the file wins at the next reload.
        cluster.policy.write_text("run_as_root: true\n" + POLICY_A.replace("2}", "3}"))
        notify.got.clear()
        cluster.daemon.send_signal(signal.SIGHUP)
        notify.wait("RELOADING", "1")
        notify.wait("READY", "1")
        policy = cluster.client.get_policy()
        assert policy.source_name == str(cluster.policy) and "owned: 3" in policy.text
    finally:
        cluster.stop()


def test_a_start_with_another_policy_file_puts_that_file_in_force(tmp_path: Path) -> None:
    # Files p2, then p1, then p2 again, each at a start: the file given wins every time.
    p1, p2 = tmp_path / "p1.yaml", tmp_path / "p2.yaml"
    p1.write_text("run_as_root: true\n" + POLICY_A)
    p2.write_text("run_as_root: true\n" + POLICY_AB)
    cluster = Cluster(tmp_path, POLICY_A)
    try:
        for path in (p2, p1, p2):
            cluster.policy = path
            cluster.client = Client(cluster.address, timeout_s=10)
            cluster.start_daemon()
            assert cluster.client.get_policy().source_name == str(path)
            cluster.stop()
    finally:
        cluster.stop()
