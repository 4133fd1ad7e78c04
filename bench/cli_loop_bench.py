"""A shell loop of `schedctl submit`, as people write them (issue 15 item 5), and a
10,000-job array: against a real daemon (`python -m schedulerd.daemon`, WAL +
synchronous=FULL) on 127.0.0.1, no agent (the jobs wait).

    PYTHONPATH=. python bench/cli_loop_bench.py [--jobs 100] [--sbatch]

Each variant is a `schedctl` script as pip writes one (#!python, then the entry point),
run by bash in `for i in $(seq N); do schedctl submit ... >/dev/null; done`:

  before           schedulerd.cli.main:main (every call imports the whole CLI and grpc)
  no broker        schedulerd.cli.fast:main with SCHEDULERD_BROKER=off (the same, plus
                   the thin entry's look for a broker)
  broker           schedulerd.cli.fast:main, its broker started by a first call
  broker, -S       the same with `#!python -S`: what a start without site costs (this
                   venv's site imports the editable install's finder, ~10 ms)
  bash schedctl    scripts/schedctl, as pip installs it (with schedctl-py beside it):
                   no Python started per submission

--sbatch adds the same loop of `sbatch --wrap true` (Slurm must be running).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import REPO, BenchCluster, wait_for

ME = pwd.getpwuid(os.getuid()).pw_name
POLICY = f"""
version: 1
consumers:
  lab:
    consumers:
      mine: {{users: [{ME}]}}
"""


def script(bin_dir: Path, name: str, entry: str, flags: str = "") -> Path:
    path = bin_dir / name / "schedctl"
    path.parent.mkdir(parents=True)
    module, func = entry.split(":")
    path.write_text(
        f"#!{sys.executable}{' ' + flags if flags else ''}\n"
        f"import sys\nfrom {module} import {func}\nif __name__ == '__main__':\n"
        f"    sys.exit({func}())\n"
    )
    path.chmod(0o755)
    return path.parent


def loop(path_dir: Path | None, env: dict[str, str], n: int, command: str) -> float:
    full = dict(env)
    if path_dir is not None:
        full["PATH"] = f"{path_dir}:{env['PATH']}"
    started = time.perf_counter()
    subprocess.run(
        ["bash", "-c", f"for i in $(seq {n}); do {command} >/dev/null; done"],
        env=full,
        check=True,
    )
    return time.perf_counter() - started


def broker_pid(directory: Path) -> int | None:
    for sock_path in directory.glob("*.sock"):
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(sock_path))
            except OSError:
                continue
            cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            return int.from_bytes(cred[:4], sys.byteorder)
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=100, help="submissions per loop (default 100)")
    p.add_argument("--array", type=int, default=10_000, help="elements of the array (0: none)")
    p.add_argument("--sbatch", action="store_true", help="also a loop of sbatch --wrap true")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cli-loop-"))
    cluster = BenchCluster(root, POLICY)
    broker_dir = root / "broker"
    broker_dir.mkdir(mode=0o700)
    site = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    # As installed: pip compiles every module; a PYTHONDONTWRITEBYTECODE left in this
    # environment would have each call compile the CLI from source.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        PYTHONPATH=str(REPO),
        SCHEDULERD_ADDRESS=cluster.address,
        SCHEDULERD_CONSUMER="/lab/mine",
        SCHEDULERD_BROKER_DIR=str(broker_dir),
        SCHEDULERD_BROKER_IDLE_S="60",
    )
    submit = "schedctl submit -- sleep 3600"
    rows: list[tuple[str, float]] = []
    try:
        cluster.start_daemon(log_level="WARNING")
        bins = root / "bin"
        before = script(bins, "before", "schedulerd.cli.main:main")
        fast = script(bins, "fast", "schedulerd.cli.fast:main")
        fast_s = script(bins, "fast-S", "schedulerd.cli.fast:main", "-S")
        sh = script(bins, "sh", "schedulerd.cli.fast:main")  # schedctl-py, then schedctl
        (sh / "schedctl").rename(sh / "schedctl-py")
        shutil.copy(REPO / "scripts" / "schedctl", sh / "schedctl")
        off = {**env, "SCHEDULERD_BROKER": "off"}
        loop(sh, env, 1, submit)  # starts the broker (and names scripts/schedctl's door)
        wait_for("the broker", lambda: broker_pid(broker_dir))
        for name, path_dir, e in (
            ("before (schedulerd.cli.main)", before, off),
            ("no broker (SCHEDULERD_BROKER=off)", fast, off),
            ("broker", fast, env),
            ("broker, #!python -S", fast_s, {**env, "PYTHONPATH": f"{REPO}:{site}"}),
            ("bash schedctl (scripts/schedctl)", sh, env),
        ):
            rows.append((name, loop(path_dir, e, args.jobs, submit)))
        # The floor under any Python client: the interpreter's own start, with and
        # without site (in this venv site imports setuptools' editable finder).
        for name, flags in (("python -c pass", ""), ("python -S -c pass", "-S")):
            rows.append(
                (f"({name})", loop(None, env, args.jobs, f"{sys.executable} {flags} -c pass"))
            )
        if args.sbatch and shutil.which("sbatch"):
            rows.append(("sbatch --wrap true", loop(None, env, args.jobs, "sbatch --wrap true")))
        print(f"a shell loop of {args.jobs} submissions (each durable before it returns):")
        for name, seconds in rows:
            print(
                f"  {name:<36} {seconds:6.2f} s  {seconds / args.jobs * 1000:6.1f} ms/call"
                f"  {args.jobs / seconds:6.1f}/s"
            )
        if args.array:
            cmd = f"schedctl submit --array 0-{args.array - 1} -- sleep 3600"
            for name, path_dir, e in (("broker", fast, env), ("no broker", fast, off)):
                seconds = loop(path_dir, e, 1, cmd)
                print(
                    f"a {args.array:,}-job array, one `schedctl submit --array` ({name}): "
                    f"{seconds:.2f} s ({args.array / seconds:,.0f} jobs/s)"
                )
    finally:
        pid = broker_pid(broker_dir)
        if pid:
            os.kill(pid, signal.SIGTERM)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
