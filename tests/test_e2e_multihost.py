"""A real cluster deployment, on one machine: hosts are network namespaces made by the
test (tests/netns.py), services run from our unit files the way systemd runs them
(tests/unit_runner.py), with the sample config files of deploy/config.

The first test deploys by hand (as an admin would, in Python and shell steps):
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
MASTER_ADDR:MASTER_PORT; the policy is reloaded (ExecReload); a long job then survives
its agent's restart (KillMode=process, keep-jobs-on-exit = true): same attempt, same
processes, adopted by the new agent.

The second test runs docs/deploy.md: every ```sh block, in order, on the machine its
`<!-- on: HOST -->` line names, and every `<!-- copy: -->` line; then checks what the
guide says happens. What differs from a real cluster, and why:
- the hosts share one file system: a host's /etc, /var, /run and /root are folders of
  the test (unit_runner.PathMap rewrites the guide's paths; a path it would leave
  pointing at this machine's own files fails the test), /opt/schedulerd is one folder
  for all, so the guide's "on every machine" install runs once, and /home is this
  machine's (the users are);
- no package registry is reachable from the hosts: pip runs with no index, the wheel is
  built with this checkout's setuptools, and the wheel's dependencies are already in
  /opt/schedulerd (a .pth to links into this checkout's venv): the guide's `pip
  install` installs the wheel it built, for real, and finds the rest installed;
- the guide's names are this run's: alice is a throwaway user, the `schedulerd` user
  the guide makes gets a fresh name (and is removed), the nodes get unique names (an
  agent's cgroups and lock are named after its node);
- `systemctl` is unit_runner's (see its docstring for what it does not emulate).

Traffic stays inside the test's namespaces (and their loopbacks); every namespace, user,
cgroup and process made here is removed at the end, also when a test fails.

What this cannot show: a real systemd (Restart=, the watchdog's kill, the sandboxing
directives); separate file systems (a copy between hosts is a copy between folders, the
job's working folder is shared as over NFS); real GPUs.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
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
            # No broker (docs/cli-broker.md) left behind in the user host's namespace.
            "SCHEDULERD_BROKER": "off",
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


# ---------------------------------------------------------------------------- the guide

GUIDE = REPO / "docs/deploy.md"
GUIDE_NODES = ["gpu-01", "gpu-02"]  # the nodes docs/deploy.md names
GUIDE_USER = "alice"  # its user (bob is only named in its policy)
GUIDE_HOSTS = ("ca", "head", "node", "user", "all")
ON = re.compile(r"<!-- on: (\w+)(?: ([\w.-]+))?(?: as ([\w.-]+))? -->")
COPY = re.compile(r"<!-- copy: (\S+) -> (\S+)(?: ([\w.-]+):([0-7]{3,4}))? -->")
FENCE = re.compile(r"```(\S*)\s*$")
SHELLS = ("sh", "bash", "shell")
# Top-level folders a guide's command must not reach unmapped: this machine's own files.
PRIVATE = ("/etc", "/var", "/run", "/root", "/opt", "/srv", "/home", "/boot", "/mnt")


# Bugs of the guide this test found, not fixed yet: (line, what its failure says, why).
# The test is an expected failure while one of them is what stops it, and passes once
# the guide is fixed.
@dataclass(frozen=True)
class Step:
    """One thing docs/deploy.md says to do: a shell block to run (`run`) or a file to
    copy (`copy`: `text` is "SRC -> DST", `owner`/`mode` optional)."""

    kind: str
    line: int  # in the guide, for messages
    host: str  # ca, head, node, user, all
    text: str
    only: str = ""  # `on: node gpu-02`: that node alone
    user: str = ""  # `on: user as alice`: as that user
    owner: str = ""
    mode: str = ""


def parse_guide(markdown: str) -> list[Step]:
    """The guide's steps in order. A ```sh block must follow a line `<!-- on: HOST -->`
    at once (HOST: ca, head, node, user or all; `node NAME`, `as USER` narrow it), and a
    marker must be followed by its block: every command of the guide is run, or the
    test fails here. `<!-- copy: HOST:PATH -> HOST:PATH [OWNER:MODE] -->` copies a file."""
    lines = markdown.splitlines()
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        number = i + 1
        fence = FENCE.fullmatch(line)
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"docs/deploy.md:{number}: a code block that never ends"
            if fence.group(1) in SHELLS:
                on = ON.fullmatch(lines[i - 1].strip()) if i else None
                assert on, f"docs/deploy.md:{number}: a shell block without <!-- on: HOST -->"
                host, only, user = on.groups()
                # The marker's line number is i (1-based: the line before the fence).
                assert host in GUIDE_HOSTS, f"docs/deploy.md:{i}: unknown host {host!r}"
                script = "\n".join(lines[i + 1 : end]) + "\n"
                steps.append(Step("run", number, host, script, only or "", user or ""))
            i = end + 1
            continue
        if line.startswith("<!-- on:"):
            assert ON.fullmatch(line), f"docs/deploy.md:{number}: not a marker: {line}"
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            fence = FENCE.fullmatch(following)
            assert fence and fence.group(1) in SHELLS, (
                f"docs/deploy.md:{number}: a marker not followed by a shell block"
            )
        elif line.startswith("<!-- copy:"):
            copy = COPY.fullmatch(line)
            assert copy, f"docs/deploy.md:{number}: not a copy marker: {line}"
            source, dest, owner, mode = copy.groups()
            host = source.split(":", 1)[0]
            steps.append(
                Step("copy", number, host, f"{source} -> {dest}", "", "", owner or "", mode or "")
            )
        i += 1
    return steps


class Walkthrough:
    """docs/deploy.md run on a Site. Names of the guide are this run's: its user (alice)
    a throwaway user, `schedulerd` as a user or group name a fresh name (the guide's
    useradd makes it), its nodes unique names (their cgroups and locks are named after
    them). Root's blocks run in a copy of this checkout (the guide's "clone"), a user's in
    their home. Each output is kept, by the guide's line, for the checks."""

    def __init__(self, site: Site, renames: dict[str, str], clone: Path, env: dict[str, str]):
        self.site = site
        self.renames = renames
        self.clone = clone
        self.env = env  # for every shell, besides PATH, HOME, HEAD and NODE
        self.host_env: dict[str, dict[str, str]] = {}
        self.outputs: list[tuple[Step, str, str]] = []  # (step, host, stdout)

    def rename(self, text: str) -> str:
        out = []
        for line in text.splitlines(keepends=True):
            for word, name in self.renames.items():
                if word == "schedulerd" and re.match(r"\s*systemctl\b", line):
                    continue  # there it is the unit's name
                # `schedulerd` is also a program, a folder, a unit: only a word alone.
                edge = r"[\w.-]" if word != "schedulerd" else r"[\w./-]"
                line = re.sub(rf"(?<!{edge}){re.escape(word)}(?!{edge})", name, line)
            out.append(line)
        return "".join(out)

    def hosts_of(self, step: Step) -> list[tuple[str, str]]:
        """(host, $NODE) pairs a step runs on."""
        if step.host == "node":
            only = self.rename(step.only) if step.only else ""
            assert not only or only in self.site.nodes, f"docs/deploy.md:{step.line}: {only}"
            return [(n, n) for n in self.site.nodes if not only or n == only]
        # The hosts share one file system, so one /opt/schedulerd: installed once.
        return [("head" if step.host == "all" else step.host, "")]

    def run(self, steps: list[Step]) -> None:
        for step in steps:
            if step.kind == "copy":
                self.copy(step)
            else:
                for host, node in self.hosts_of(step):
                    self.shell(step, host, node)

    def shell(self, step: Step, host: str, node: str) -> None:
        script = self.rename(step.text)
        machine = self.site.machines[host]
        self.check_paths(step, machine.paths.map_text(script))
        user = self.rename(step.user) if step.user else ""
        cwd = Path(pwd.getpwnam(user).pw_dir) if user else self.clone
        env = self.env | self.host_env.get(host, {})
        result = self.site.shell(host, script, node, user, env, cwd)
        where = f"docs/deploy.md:{step.line} on {host}" + (f" as {user}" if user else "")
        assert result.returncode == 0, (
            f"{where} exited {result.returncode}:\n{step.text}\n--- stdout\n"
            f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        )
        machine.map_files()  # a config file copied from the clone names the real paths
        self.outputs.append((step, host, result.stdout))

    def copy(self, step: Step) -> None:
        source, dest = (s.strip() for s in self.rename(step.text).split("->"))
        owner = self.rename(step.owner) if step.owner else ""
        mode = int(step.mode, 8) if step.mode else None
        for node in self.site.nodes if "node:" in source + " " + dest else [""]:
            pair = [
                p.replace("$NODE", node).replace("node:", f"{node}:", 1) for p in (source, dest)
            ]
            self.site.copy(pair[0], pair[1], mode, owner)

    def check_paths(self, step: Step, script: str) -> None:
        """Every absolute path left unmapped must be a program or device of this machine,
        or a user's home: never a place where the guide would change this machine."""
        homes = [pwd.getpwnam(n).pw_dir for n in self.renames.values() if _user_exists(n)]
        for m in re.finditer(r"(?<![^\s\"'=:(<>])(/[\w.-][^\s\"';:,)<>]*)", script):
            path = m.group(1)
            if any(path == p or path.startswith(p + "/") for p in PRIVATE) and not any(
                path.startswith(h + "/") or path == h for h in homes
            ):
                raise AssertionError(
                    f"docs/deploy.md:{step.line}: {path} is not mapped to a test folder: "
                    "the command would change this machine's own files (see PathMap)"
                )

    def output(self, needle: str, host: str = "") -> str:
        """The output of the (last) block whose text holds `needle`."""
        found = [o for s, h, o in self.outputs if needle in s.text and (not host or h == host)]
        assert found, f"no block of docs/deploy.md has {needle!r}"
        return found[-1]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _clone(dest: Path) -> Path:
    """This checkout's files as tracked by git, from the working tree: the guide's "clone
    of the repository" (its deploy/ files, and the source its wheel is built from)."""
    files = (
        subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def _dependencies(dest: Path) -> Path:
    """The installed dependencies of this checkout, as a folder of links into its venv:
    what the guide's `pip install` would fetch from a registry, which no test host
    reaches. schedulerd itself (its editable install) and pip are left out: the wheel
    the guide builds is what gets installed, with the pip of its own environment."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site_packages.iterdir():
        name = entry.name
        if (
            name.startswith(("schedulerd-", "__editable__", "_distutils_hack", "pip-"))
            or name.endswith(".pth")
            or name in ("pip", "__pycache__")
        ):
            continue
        (dest / name).symlink_to(entry)
    return dest


@pytest.fixture
def walkthrough() -> Iterator[Walkthrough]:
    with ExitStack() as stack:
        root = make_root(stack, "sd-deploy-")
        tag = os.urandom(2).hex()
        nodes = [f"{n}-{tag}" for n in GUIDE_NODES]
        # The guide makes the daemon's user (useradd): a fresh name, removed at the end.
        daemon_user = f"sdd-{tag}"
        stack.callback(subprocess.run, ["groupdel", daemon_user], check=False, capture_output=True)
        stack.callback(subprocess.run, ["userdel", daemon_user], check=False, capture_output=True)
        user = stack.enter_context(throwaway_user("sdu"))
        # The agents' locks: agent.toml keeps the default lock-dir, /run/schedulerd, which
        # is this machine's own (the runtime directory of a real host).
        lock_dir = Path("/run/schedulerd")
        if not lock_dir.exists():
            stack.callback(_rmdir_if_empty, lock_dir)
        for node in nodes:
            stack.callback(_unlink, lock_dir / f"agent-{node}.lock")
        install = root / "opt-schedulerd"
        deps = _dependencies(root / "deps")
        # What a machine with a registry would have: the dependencies, already there for
        # the venv the guide makes in /opt/schedulerd (it keeps what the folder holds).
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        pth = install / "lib" / version / "site-packages" / "test-dependencies.pth"
        pth.parent.mkdir(parents=True)
        pth.write_text(f"{deps}\n")
        for folder in [install, *install.rglob("*")]:
            folder.chmod(0o755 if folder.is_dir() else 0o644)
        site = build_site(stack, nodes, daemon_user, user, install)
        clone = _clone(root / "src")
        renames = {GUIDE_USER: user.pw_name, "schedulerd": daemon_user}
        renames |= dict(zip(GUIDE_NODES, nodes, strict=True))
        env = {
            "PIP_CONFIG_FILE": "/dev/null",  # this machine's pip settings are not the hosts'
            "PIP_NO_INDEX": "1",  # no registry is reachable from the test's hosts
            "PIP_NO_BUILD_ISOLATION": "0",  # pip's spelling of --no-build-isolation
        }
        w = Walkthrough(site, renames, clone, env)
        # The CA's machine builds the wheel with the setuptools of this checkout's venv.
        w.host_env["ca"] = {"PYTHONPATH": str(deps)}
        yield w


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _guide_cannot_run() -> str:
    """Why this machine cannot play the guide's hosts, or "": the guide's tools, and a
    system Python of this venv's version (the wheel's dependencies come from this venv,
    compiled for it)."""
    missing = [t for t in ("git", "sqlite3", "openssl", "useradd") if not _which(t)]
    if missing:
        return f"the guide needs {', '.join(missing)}"
    system = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys, venv; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    if system.stdout.split() != [str(v) for v in sys.version_info[:2]]:
        return "the guide's python3 (/usr/bin/python3 with venv) must be this venv's version"
    return ""


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:{SERVICE_PATH}")


GUIDE_CANNOT_RUN = _guide_cannot_run()


def test_the_deployment_guide_runs_as_written(walkthrough: Walkthrough) -> None:
    """Every block of docs/deploy.md, in order, on the machine it names; then what the
    guide says should have happened, did."""
    # A failure, not a skip: the guide promises that every command in it is run, and
    # .ci/run installs what it needs (as for systemd-analyze).
    assert not GUIDE_CANNOT_RUN, f"this machine cannot run docs/deploy.md: {GUIDE_CANNOT_RUN}"
    w = walkthrough
    steps = parse_guide(GUIDE.read_text())
    w.run(steps)
    site = w.site
    first, second = site.nodes
    head = site.machines["head"].unit("schedulerd")

    # The daemon runs as its own user (the one the guide made), with its config file.
    uid = pwd.getpwnam(site.daemon_user).pw_uid
    status = Path(f"/proc/{head.main_pid}/status").read_text()
    assert re.search(rf"^Uid:\s+{uid}\s", status, re.M), status
    config = re.escape(str(site.machines["head"].paths.map_path("/etc/schedulerd")))
    assert re.search(
        rf"^listen = .*  # {config}/schedulerd\.toml:\d+$", w.output("--print-config", "head"), re.M
    )
    shown = w.output("systemctl status schedulerd")
    assert "Active: active (running)" in shown and 'Status: "' in shown, shown

    # Her token works from her machine, and on a GPU node the agent vouches for her.
    me = site.user.pw_name
    assert re.search(rf"identity: +{me} \(user\)\nproven by: +token", w.output("whoami", "user"))
    for node in site.nodes:
        vouched = w.output("SCHEDULERD_AUTH_SOCKET", node)
        assert re.search(rf"identity: +{me} \(user\)\nproven by: +node-vouched", vouched)

    # Job 1 spans both nodes; its parts meet at rank 0's node.
    log = w.output("schedctl logs 1")
    meet = re.findall(r"^\[(\S+) r(\d)\] \1 rank \2 meets at (\S+) (\d+)$", log, re.M)
    assert sorted(m[1] for m in meet) == ["0", "1"] and {m[0] for m in meet} == set(site.nodes), log
    rank0 = next(m[0] for m in meet if m[1] == "0")
    assert {(m[2], m[3]) for m in meet} == {(site.net[rank0].address, meet[0][3])}, log

    # Job 2 ran through the upgrade: its agent was restarted and adopted it, the daemon
    # was restarted, and it ended as it would have, as attempt 0.
    shown = w.output("schedctl show 2")
    ran_on = re.search(r"gpus: +2  on (\S+):", shown)
    assert ran_on, shown
    assert "restarts:" not in shown, shown
    agent = site.machines[ran_on.group(1)].unit("schedulerd-agent")
    assert "adopted job 2 attempt 0" in agent.log_text(), agent.log_tail()
    assert head.starts == 2 and head.notifications.ready >= 2
    assert re.search(r"attempt 0 on node .*\ndone\n", w.output("schedctl logs 2")), shown
    admin = f"schedctl --ca /etc/schedulerd/tls/ca.crt --daemon 127.0.0.1:{USER_PORT}"
    job = json.loads(site.sh("head", f"{admin} show --json 2"))
    assert job["state"] == "SUCCEEDED" and "attempt" not in job, job
    assert [e["kind"] for e in job["history"]] == ["submitted", "started", "succeeded"], job

    # Drained, back, then forgotten: the second node is gone, the first is up.
    nodes = w.output("node forget")
    assert (
        re.search(rf"^{first} +UP ", nodes, re.M) and second not in nodes.split("forgotten")[1]
    ), nodes
    # The reloaded policy is in force; the backup is whole.
    assert re.search(r"^interns ", w.output("systemctl reload schedulerd"), re.M)
    assert w.output("integrity_check").strip().endswith("ok")

    # Every unit said it was ready and what it does; only the retired agent is down.
    for host in ("head", *site.nodes):
        for unit in site.machines[host].units.values():
            assert unit.notifications.ready >= 1 and unit.notifications.statuses, unit.name
            assert unit.exited() is None, (host, unit.name, unit.log_tail())
    assert not site.machines[second].unit("schedulerd-agent").active()
