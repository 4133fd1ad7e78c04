"""A real cluster deployment, on one machine: hosts are network namespaces made by the
test (tests/netns.py), services run from our unit files the way systemd runs them
(tests/unit_runner.py), with the sample config files of deploy/config.

- ca: an offline machine (no network at all) holds the cluster CA and issues the
  certificates, which are copied to the machines that need them;
- head: the daemon from deploy/systemd/schedulerd.service as a throwaway non-root user
  standing for `schedulerd`, TLS with a server certificate for the head's address, agents
  on its mTLS port, /etc/schedulerd/schedulerd.toml from deploy/config;
- gpu-1, gpu-2: an agent each from deploy/systemd/schedulerd-agent.service (root, its
  node certificate, /etc/schedulerd/agent.toml from deploy/config, two fake GPUs);
- user: a throwaway Unix user with a token (made by root on the head, over loopback, as
  local root is a cluster admin) who talks TLS to the head with schedctl.

The user's 2-node job runs on both agents and its parts meet across hosts at
MASTER_ADDR:MASTER_PORT; a long job then survives its agent's restart (KillMode=process,
keep-jobs-on-exit = true): same attempt, same processes, adopted by the new agent.

Traffic stays inside the test's namespaces (and their loopbacks); every namespace, user,
cgroup and process made here is removed at the end, also when the test fails.

What this cannot show: a real systemd (the unit runner's docstring says what it does not
emulate: Restart=, the watchdog's kill, the sandboxing directives); separate file systems
(the hosts share this machine's files, users and /proc: a copy between hosts is a copy
between folders, and the job's working folder is shared as over NFS); real GPUs.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import remove_agent_cgroups, wait_for
from netns import Network, hosts
from unit_runner import SERVICE_PATH, Machine, install_schedulerd
from unix_users import throwaway_user

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
GPUS_PER_NODE = 2
NODE_COUNT = 2
USER_PORT = 50051  # the sample config's ports: each host has its own port space
CONSUMER = "/team"
RUNUSER = shutil.which("runuser") or "runuser"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("ip", "nsenter", "setpriv", "runuser", "bash")),
    reason="network namespaces, users and cgroups need root, ip, nsenter, setpriv, runuser",
)

# The 2-node job (run with /usr/bin/python3: the venv's interpreter is root's only). Rank
# 0 listens on MASTER_PORT, rank 1 connects to MASTER_ADDR:MASTER_PORT; each sends its
# node's name and prints what it got.
EXCHANGE = """\
import os, socket, time

rank = int(os.environ["SCHEDULERD_NODE_RANK"])
me = os.environ["SCHEDULERD_NODE"]
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
print(f"rank {rank} of {os.environ['SCHEDULERD_NUM_NODES']} on {me}", flush=True)
if rank == 0:
    with socket.create_server(("", port)) as server:
        server.settimeout(60)
        conn, _ = server.accept()
else:
    deadline = time.monotonic() + 60
    while True:  # rank 0 may not listen yet
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
with conn:
    conn.sendall(me.encode() + b"\\n")
    got = conn.makefile().readline().strip()
print(f"rank {rank} on {me} got {got} from {addr if rank else 'its peer'}", flush=True)
"""

# The long job: says where it runs (a file in its working folder, written whole), then
# waits for the test's word.
HOLD = """\
import os, pathlib, sys, time

work = pathlib.Path(sys.argv[1])
job = os.environ["SCHEDULERD_JOB_ID"]
tmp = work / f".held-{job}"
tmp.write_text(f"{os.getpid()} {os.environ['SCHEDULERD_NODE']}")
tmp.rename(work / f"held-{job}")
print("holding", flush=True)
while not (work / f"release-{job}").exists():
    time.sleep(0.1)
print("released", flush=True)
"""


@dataclass
class Site:
    """The machines of a deployment and the ways a deployment guide acts on them: a shell
    on a host (`sh`, with `systemctl`), a file copied between hosts (`copy`)."""

    root: Path  # the test's folder (0755, under /tmp: other users must reach parts of it)
    net: Network
    install: Path  # every host's /opt/schedulerd (one folder: the hosts share files)
    machines: dict[str, Machine]
    nodes: list[str]
    daemon_user: str  # stands for the units' `schedulerd`
    user: pwd.struct_passwd  # the cluster's user
    work: Path  # the user's working folder, shared by every host (as over NFS)

    @property
    def head(self) -> str:
        return self.net["head"].address

    def shell(
        self,
        host: str,
        script: str,
        node: str = "",
        user: str = "",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`bash -euo pipefail` on `host`, as root (or `user`), the script's paths mapped
        onto the host's folders, `systemctl` the host's unit runner, with $HEAD (the
        head's address) and $NODE."""
        m = self.machines[host]
        home = m.root / "root"
        home.mkdir(mode=0o700, exist_ok=True)
        base = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "HEAD": self.head, "NODE": node}
        if not user:
            base["HOME"] = str(home)  # runuser sets a user's own
        return m.shell(script, env=base | (env or {}), cwd=cwd or home, user=user)

    def sh(self, host: str, script: str, node: str = "") -> str:
        """A root shell with this checkout's programs first on PATH; its stdout."""
        path = f"{self.install}/bin:{SERVICE_PATH}"
        result = self.shell(host, script, node, env={"PATH": path})
        assert result.returncode == 0, (
            f"on {host}: {script!r} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
        return result.stdout

    def copy(self, source: str, dest: str, mode: int | None = None, owner: str = "") -> Path:
        """HOST:PATH to HOST:PATH, as with scp: the source's mode unless `mode`, root's
        file unless `owner`. Missing folders are made (0755; the owner's in its home)."""
        (src_host, src), (dst_host, dst) = (s.split(":", 1) for s in (source, dest))
        src_path = self.machines[src_host].paths.map_path(src)
        dst_path = Path(self.machines[dst_host].paths.map_text(dst))
        # A home is this machine's own (the users are); anything else must be mapped.
        assert dst_path.is_relative_to(self.root) or dst_path.is_relative_to("/home"), dst
        entry = pwd.getpwnam(owner) if owner else None
        missing = [p for p in dst_path.parents if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir(mode=0o755)
            if entry is not None and folder.is_relative_to(entry.pw_dir):
                os.chown(folder, entry.pw_uid, entry.pw_gid)
        shutil.copyfile(src_path, dst_path)
        dst_path.chmod(src_path.stat().st_mode & 0o777 if mode is None else mode)
        if entry is not None:
            os.chown(dst_path, entry.pw_uid, entry.pw_gid)
        return dst_path

    def systemctl(self, host: str, *args: str) -> str:
        return self.machines[host].systemctl(*args)

    def write(self, host: str, path: str, text: str, mode: int = 0o644) -> Path:
        """A file on `host` with `text`, its paths mapped (a config file names paths)."""
        m = self.machines[host]
        dest = m.paths.map_path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(m.paths.map_text(text))
        dest.chmod(mode)
        return dest

    def schedctl(self, *args: str, timeout_s: float = 60) -> str:
        """schedctl as the user on the user host: TLS to the head, her token."""
        m = self.machines["user"]
        env = {
            "PATH": f"{self.install}/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "SCHEDULERD_ADDRESS": f"{self.head}:{USER_PORT}",
            "SCHEDULERD_CA": str(m.paths.map_path("/etc/schedulerd/ca.crt")),
            "SCHEDULERD_TOKEN_FILE": f"{self.user.pw_dir}/.schedulerd-token",
        }
        result = subprocess.run(
            [*m.enter, RUNUSER, "-u", self.user.pw_name, "--", "schedctl", *args],
            env=env,
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        assert result.returncode == 0, (
            f"schedctl {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
        return result.stdout

    def submit(self, consumer: str, gpus: int, script: str, *args: str) -> int:
        """Her job: /usr/bin/python3 running `script` of the working folder; its id."""
        options = ["--consumer", consumer, "--gpus", str(gpus), "--name", script]
        options += ["--workdir", str(self.work), "--json"]
        command = ["/usr/bin/python3", str(self.work / script), *args]
        job = json.loads(self.schedctl("submit", *options, "--", *command))
        return int(job["id"])

    def show(self, job_id: int) -> dict[str, object]:
        job: dict[str, object] = json.loads(self.schedctl("show", "--json", str(job_id)))
        return job


def build_site(
    stack: ExitStack, nodes: list[str], daemon_user: str, user: pwd.struct_passwd, install: Path
) -> Site:
    """Hosts `ca` (offline), `head`, the nodes and `user`, each a Machine whose units run
    as systemd would run them; everything is undone by `stack`."""
    root = install.parent
    net = stack.enter_context(hosts(["head", *nodes, "user"], offline=["ca"]))
    machines: dict[str, Machine] = {}
    for node in nodes:  # should a unit's cgroup removal fail: swept by name, last
        stack.callback(remove_agent_cgroups, node)
    for host in net:
        m = Machine(
            host.name,
            root / host.name,
            install,
            enter=host.enter(),
            names={"schedulerd": daemon_user},
            start_timeout_s=30,
            stop_timeout_s=15,
        )
        machines[host.name] = m
        # Units stop before the namespaces go (ExitStack: last in, first out).
        stack.callback(m.close)
    work = root / "work"
    work.mkdir(mode=0o755)
    os.chown(work, user.pw_uid, user.pw_gid)
    return Site(root, net, install, machines, nodes, daemon_user, user, work)


def make_root(stack: ExitStack, prefix: str) -> Path:
    # Under /tmp itself, 0755: the daemon's user and the job's user reach parts of it
    # (pytest's own folder is private to root).
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    root.chmod(0o755)
    return root


def toml_with(text: str, **values: str | int | bool) -> str:
    """A flat TOML file's text with keys (underscores for dashes) set: a line `key = ...`
    replaced where there is one, else added at the end."""
    for key, value in values.items():
        key = key.replace("_", "-")
        literal = json.dumps(value)  # a TOML string, integer or boolean alike
        line = f"{key} = {literal}"
        text, n = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", line, text)
        if n == 0:
            text = text.rstrip("\n") + f"\n{line}\n"
    return text


def policy(user: str, consumers: list[str]) -> str:
    leaves = "".join(f"  {c}:\n    owned: 0\n" for c in consumers)
    return f"version: 1\nusers: [{user}]\nconsumers:\n{leaves}"


@pytest.fixture
def site() -> Iterator[Site]:
    with ExitStack() as stack:
        root = make_root(stack, "sd-multihost-")
        # Node names unique to this run: an agent's cgroups are named after its node and
        # other tests sweep theirs by name (harness.remove_agent_cgroups).
        tag = os.urandom(2).hex()
        nodes = [f"gpu-{i}-{tag}" for i in range(1, NODE_COUNT + 1)]
        daemon_user = stack.enter_context(throwaway_user("sdd"))
        user = stack.enter_context(throwaway_user("sdu"))
        install = install_schedulerd(root / "opt-schedulerd")
        yield build_site(stack, nodes, daemon_user.pw_name, user, install)


def deploy(site: Site) -> None:
    """The deployment, host by host, as an admin would do it."""
    ca = "/root/schedulerd-ca"
    # The CA's machine: the CA, the daemon's certificate for the head's address (and
    # loopback), one certificate per node.
    site.sh(
        "ca",
        f'schedctl ca init {ca}\nschedctl ca issue-server --ca {ca} --host "$HEAD" '
        "--host 127.0.0.1 --out /root/head",
    )
    for node in site.nodes:
        site.sh("ca", f'schedctl ca issue-node --ca {ca} "$NODE" --out "/root/$NODE"', node)

    # The head: certificates, the policy, the config file, the unit.
    site.copy(f"ca:{ca}/ca.crt", "head:/etc/schedulerd/tls/ca.crt")
    site.copy("ca:/root/head/server.crt", "head:/etc/schedulerd/tls/server.crt")
    site.copy("ca:/root/head/server.key", "head:/etc/schedulerd/tls/server.key")
    site.sh("head", f"chown {site.daemon_user}: /etc/schedulerd/tls/server.key")
    site.write("head", "/etc/schedulerd/policy.yaml", policy(site.user.pw_name, ["team"]))
    site.write(
        "head", "/etc/schedulerd/schedulerd.toml", (DEPLOY / "config/schedulerd.toml").read_text()
    )
    site.machines["head"].install_unit(DEPLOY / "systemd/schedulerd.service")
    site.systemctl("head", "daemon-reload")
    site.systemctl("head", "enable", "--now", "schedulerd")

    # Each GPU node: its certificate, its config file, the agent's unit.
    agent_toml = (DEPLOY / "config/agent.toml").read_text()
    for node in site.nodes:
        site.copy(f"ca:{ca}/ca.crt", f"{node}:/etc/schedulerd/tls/ca.crt")
        site.copy(f"ca:/root/{node}/{node}.crt", f"{node}:/etc/schedulerd/tls/node.crt")
        site.copy(f"ca:/root/{node}/{node}.key", f"{node}:/etc/schedulerd/tls/node.key")
        config = toml_with(
            agent_toml,
            daemon=f"{site.head}:50052",
            node=node,
            fake_gpus=GPUS_PER_NODE,
            # The default, written out: mapped onto this host's /run (one lock per node
            # name and machine; here the hosts share the machine's /run).
            lock_dir="/run/schedulerd",
        )
        site.write(node, "/etc/schedulerd/agent.toml", config)
        site.machines[node].install_unit(DEPLOY / "systemd/schedulerd-agent.service")
        site.systemctl(node, "enable", "--now", "schedulerd-agent")

    # The user's token, made by root on the head over loopback (local root is a cluster
    # admin: the daemon knows the uid of a loopback peer), handed to her in a file only
    # she reads. The listener on 0.0.0.0 speaks TLS on 127.0.0.1 too: hence --ca.
    token = site.sh(
        "head",
        f"schedctl --ca /etc/schedulerd/tls/ca.crt --daemon 127.0.0.1:{USER_PORT} "
        f"token create --user {site.user.pw_name} --ttl 1h",
    ).strip()
    assert token
    token_file = Path(site.user.pw_dir) / ".schedulerd-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    os.chown(token_file, site.user.pw_uid, site.user.pw_gid)
    site.copy(f"ca:{ca}/ca.crt", "user:/etc/schedulerd/ca.crt")


def test_a_deployment_runs_a_two_node_job_and_an_agent_restart_keeps_its_job(
    site: Site,
) -> None:
    deploy(site)
    head = site.machines["head"].unit("schedulerd")
    agents = {node: site.machines[node].unit("schedulerd-agent") for node in site.nodes}
    first, second = site.nodes

    # The config files are what is in force: each program names its file as the source.
    for host, program, config, key in (
        ("head", "schedulerd", "/etc/schedulerd/schedulerd.toml", "listen"),
        (first, "schedulerd-agent", "/etc/schedulerd/agent.toml", "node"),
    ):
        printed = site.sh(host, f"{program} --print-config --config {config}")
        source = re.escape(str(site.machines[host].paths.map_path(config)))
        assert re.search(rf"^{key} = .*  # {source}:\d+$", printed, re.M), printed

    wait_for(
        "both agents connected",
        lambda: all("connected to the daemon" in a.notifications.status for a in agents.values()),
        timeout_s=30,
    )

    # A job bigger than one node: a part on each, meeting across hosts.
    (site.work / "exchange.py").write_text(EXCHANGE)
    (site.work / "hold.py").write_text(HOLD)
    job_id = site.submit("/team", GPUS_PER_NODE * NODE_COUNT, "exchange.py")
    log = site.schedctl("logs", str(job_id))  # follows until the job ends
    job = site.show(job_id)
    assert job["state"] == "SUCCEEDED", (job, log)
    assert {g["node"] for g in job["gpus"]} == set(site.nodes), job  # type: ignore[attr-defined]
    for me, peer in ((first, second), (second, first)):
        assert re.search(rf"rank [01] on {me} got {peer} ", log), log

    # The policy file changed and reloaded (ExecReload: SIGHUP): a new consumer.
    site.write("head", "/etc/schedulerd/policy.yaml", policy(site.user.pw_name, ["team", "long"]))
    site.systemctl("head", "reload", "schedulerd")
    wait_for("the daemon to reload", lambda: head.notifications.ready == 2, timeout_s=30)
    assert head.notifications.reloading == 1

    # A long job in it; its agent restarted as systemd does it (KillMode=process).
    job_id = site.submit("/long", GPUS_PER_NODE, "hold.py", str(site.work))
    held = site.work / f"held-{job_id}"
    wait_for("the long job to run", held.exists, timeout_s=30)
    pid, node = held.read_text().split()
    agent = agents[node]
    before = _job_processes(agent.cgroup, job_id)
    assert int(pid) in before, before

    site.systemctl(node, "restart", "schedulerd-agent")
    assert agent.notifications.ready == 2  # a restart waits for the new READY=1
    wait_for(
        "the new agent to adopt the job",
        lambda: f"adopted job {job_id} attempt 0" in agent.log_text(),
        timeout_s=30,
    )
    assert _job_processes(agent.cgroup, job_id) == before  # the same processes, alive

    (site.work / f"release-{job_id}").touch()
    log = site.schedctl("logs", str(job_id))
    job = site.show(job_id)
    assert job["state"] == "SUCCEEDED", (job, log)
    assert job.get("attempt", 0) == 0, job  # never requeued
    kinds = [e["kind"] for e in job["history"]]  # type: ignore[attr-defined]
    assert kinds == ["submitted", "started", "succeeded"], job
    assert "holding" in log and "released" in log, log

    # Every unit said it was ready and what it does, and none died.
    for unit in (head, *agents.values()):
        assert unit.notifications.ready >= 1, unit.name
        assert unit.notifications.statuses, unit.name
        assert unit.exited() is None, (unit.name, unit.log_tail())


def _job_processes(cgroup: Path | None, job_id: int) -> dict[int, str]:
    """pid -> start time of the processes of `job_id` below an agent unit's cgroup
    (<unit>/schedulerd-<node>/job-<id>.<attempt>/w<n>): a pid reused by another process
    would not have the same start time."""
    assert cgroup is not None, "the agent's unit has no cgroup"
    found: dict[int, str] = {}
    for procs in cgroup.glob(f"schedulerd-*/job-{job_id}.*/**/cgroup.procs"):
        for pid in map(int, procs.read_text().split()):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                continue
            found[pid] = stat.rsplit(")", 1)[1].split()[19]
    return found
