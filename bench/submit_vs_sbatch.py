"""Submissions side by side with Slurm's sbatch, in one run (issue 15's measures).

    flock /tmp/bench.lock .venv/bin/python bench/submit_vs_sbatch.py     # ~5 min

Slurm comes from ../shared/peers/slurm/setup_and_bench.sh (its `install` step once, as
root): this script calls `configure start accounts`, puts the partition DOWN so nothing
starts, and times, as bench/vs_slurm.py does,
- a shell loop of 100 `sbatch` (one submitter: the user alice),
- one submitter of N jobs, and 4 submitters (alice, bob, carol, dave) of N/4 each,
each `sbatch -Q -A ACCT --gres=gpu:1 -o /dev/null --wrap true`; then stops Slurm. Then,
on the same machine and in the same run, schedulerd:
- bench/submit_bench.py: unary SubmitJob from 1, 4 and 8 client processes, TLS and
  bearer tokens on, and SubmitJobs batches of 100;
- bench/cli_loop_bench.py: a shell loop of 100 `schedctl submit` (before and after) and
  a 10,000-job array.
Their tables are printed as they come. A benchmark, not a test: nothing asserts timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_slurm import SLURM_SCRIPT, Slurm

BENCH = Path(__file__).resolve().parent
SUBMITTERS = {"alice": "acct_a", "bob": "acct_a", "carol": "acct_b", "dave": "acct_b"}


def sbatch_loop(acct: str, n: int) -> str:
    return (
        f"cd /tmp; for i in $(seq {n}); do sbatch -Q -A {acct} --gres=gpu:1 "
        "-o /dev/null --wrap true >/dev/null || echo FAIL; done"
    )


def time_sbatch(slurm: Slurm, users: list[str], n_each: int) -> tuple[float, int]:
    """Seconds for every user's loop of n_each sbatch, run at once; failures."""
    began = time.perf_counter()
    loops = {u: sbatch_loop(SUBMITTERS[u], n_each) for u in users}
    procs = [
        subprocess.Popen(
            ["runuser", "-u", u, "--", "env", f"SLURM_CONF={slurm.conf}", "bash", "-c", loop],
            env=slurm.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for u, loop in loops.items()
    ]
    failures = sum(p.communicate()[0].count("FAIL") for p in procs)
    return time.perf_counter() - began, failures


def run_slurm(args: argparse.Namespace) -> list[str]:
    slurm = Slurm(args.slurm_script, args.slurm_run, 4, 8)
    slurm.steps("configure", "start", "accounts")
    rows = []
    try:
        version = slurm.cmd("sinfo", "-V").strip()
        slurm.cmd("scontrol", "update", "PartitionName=gpu", "State=DOWN")
        time_sbatch(slurm, ["alice"], 10)  # warm: munge, the first connections
        for label, users, n_each in (
            ("a shell loop of 100 sbatch", ["alice"], 100),
            (f"1 submitter, {args.jobs} sbatch", ["alice"], args.jobs),
            (f"4 submitters, {args.jobs} sbatch", list(SUBMITTERS), args.jobs // 4),
        ):
            seconds, failures = time_sbatch(slurm, users, n_each)
            n = n_each * len(users)
            rows.append(
                f"| {label} | {seconds:.2f} s | {seconds / n * 1000:.1f} ms | "
                f"{n / seconds:.0f}/s | {failures} |"
            )
        rows.append(f"| ({version}, partition DOWN: nothing starts) | | | | |")
    finally:
        for user in SUBMITTERS:
            subprocess.run(["scancel", "-u", user], env=slurm.env, check=False)
        slurm.steps("stop")
    return rows


def run(label: str, argv: list[str]) -> None:
    print(f"\n== {label}: {' '.join(argv)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    subprocess.run([sys.executable, *argv], cwd=BENCH.parent, env=env, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000, help="sbatch per rate case (default 1000)")
    p.add_argument("--unary-jobs", type=int, default=4000, help="SubmitJob calls per case")
    p.add_argument("--skip-slurm", action="store_true")
    p.add_argument("--slurm-script", type=Path, default=SLURM_SCRIPT)
    p.add_argument("--slurm-run", type=Path, default=Path("/tmp/slurm_peer_run"))
    args = p.parse_args()
    if not args.skip_slurm:
        print("== Slurm: sbatch (one process per job)", flush=True)
        rows = run_slurm(args)
        print("| sbatch | wall | per job | jobs/s | failed |")
        print("| --- | ---: | ---: | ---: | ---: |")
        print("\n".join(rows), flush=True)
    run(
        "schedulerd: unary and batch submissions",
        [
            "bench/submit_bench.py",
            "--jobs",
            str(args.unary_jobs),
            "--clients",
            "1,4,8",
            "--batches",
            "100",
            "--auth",
            "tls-token",
        ],
    )
    run("schedulerd: a shell loop of schedctl submit, an array", ["bench/cli_loop_bench.py"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
