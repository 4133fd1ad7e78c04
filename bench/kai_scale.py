"""KAI-Scheduler's scale test on the live daemon, with bench/nodesim.py as the nodes.

KAI's test (test/e2e/scale in NVIDIA/KAI-Scheduler, 500 KWOK nodes of 8 GPUs) and the
mirror here, one real daemon (TLS, mTLS agents) and one nodesim process of 500 nodes:

- fill: KAI creates 4,000 one-GPU jobs in a queue and times until all are scheduled
  (6 min 38 s). Here /filler (owns nothing, share 0: it only borrows) submits 4,000
  one-GPU jobs that run for ever (4 SubmitJobs calls of 1,000), timed from the first call
  until the daemon has placed all 4,000 (each job RUNNING, as KAI's "scheduled") and until
  the nodes report all 4,000 running.
- room for a 2,000-GPU job: KAI submits one distributed job of 250 pods x 8 GPUs to a
  queue with quota while the cluster is full of one-GPU jobs of a queue without quota, and
  times until every pod is scheduled (102 s). Here /owner (owns 2,000) submits one job
  of 2,000 GPUs into the full cluster: timed until it is placed and until its 250 parts run.
- reclaim one GPU: KAI submits ten one-GPU jobs one after another to the queue with quota,
  each waited for, and averages the time to schedule (13.9 s). Here /owner submits ten
  one-GPU jobs the same way (after its big job is cancelled and /filler has refilled the
  cluster); grace is 0 s, so it is excluded, as KWOK pods leave at once.

The daemon's RSS and CPU are read from /proc: with no node, with 500 nodes idle, and with
4,000 jobs running; per 100 nodes and per 1,000 running jobs.

    .venv/bin/python bench/kai_scale.py                 # 500 x 8, prints a Markdown table
    .venv/bin/python bench/kai_scale.py --nodes 64      # a quick look
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _cluster import wait_for
from _nodesim_world import ProcStat, World

from schedulerd.client import JobState, job_spec

FOREVER = {"NODESIM_RUN_S": "inf"}
SETTLE_S = 20.0  # after the fill runs, before the idle cost of running jobs is read


def policy(owner_gpus: int) -> str:
    return f"""\
version: 1
defaults: {{grace: 0s, min_runtime: 0s, max_preemptions: null}}
consumers:
  filler: {{owned: 0, share: 0}}
  owner: {{owned: {owner_gpus}}}
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--samples", type=int, default=10, help="one-GPU reclaims to average")
    p.add_argument("--cpu-window", type=float, default=20.0, help="s per CPU reading")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args()
    total = args.nodes * args.gpus
    big = total // 2
    root = Path(tempfile.mkdtemp(prefix="kai-scale-"))
    world = World(root, policy(big))
    rows: list[tuple[str, str]] = []
    try:
        world.start_daemon()
        assert world.daemon is not None
        daemon = ProcStat(world.daemon.pid)
        time.sleep(2)
        rss0 = daemon.rss_mib()
        cpu0 = daemon.cpu_share(args.cpu_window / 2)

        t0 = time.monotonic()
        world.start_sim(args.nodes, args.gpus)
        assert world.sim is not None
        sim = ProcStat(world.sim.pid)
        reg_s = world.wait_registered(args.nodes)
        rows.append((f"{args.nodes} nodes registered (sim start to all UP)", f"{reg_s:.1f} s"))
        time.sleep(2 * 2.0)  # let the registrations' work settle
        rss1 = daemon.rss_mib()
        cpu1 = daemon.cpu_share(args.cpu_window)
        per100 = 100 / args.nodes
        rows.append(("daemon RSS: no node", f"{rss0:.0f} MiB"))
        rows.append(("daemon CPU: no node", f"{cpu0 * 100:.1f} % of a core"))
        rows.append(
            ("daemon RSS per 100 connected nodes (idle)", f"{(rss1 - rss0) * per100:.1f} MiB")
        )
        rows.append(
            ("daemon CPU per 100 connected nodes (idle)", f"{(cpu1 - cpu0) * per100 * 100:.1f} %")
        )

        # --- fill -----------------------------------------------------------------------
        reports0 = world.metric("schedulerd_agent_reports_total")
        changes0 = world.metric("schedulerd_agent_report_changes_total")
        t0 = time.monotonic()
        for _ in range(total // 1000):
            world.client.submit_many([job_spec("/filler", ["x"], 1, env=FOREVER)] * 1000)
        rest = total % 1000
        if rest:
            world.client.submit_many([job_spec("/filler", ["x"], 1, env=FOREVER)] * rest)
        submitted = time.monotonic() - t0
        wait_for("fill placed", lambda: world.allocation().get("/filler") == total, 900)
        placed = time.monotonic() - t0
        wait_for("fill running", lambda: world.busy("/filler") == total, 900)
        running = time.monotonic() - t0
        rows.append((f"fill: {total} one-GPU jobs submitted", f"{submitted:.1f} s"))
        rows.append((f"fill: all {total} placed (KAI: 398 s)", f"{placed:.1f} s"))
        rows.append((f"fill: all {total} running on the nodes", f"{running:.1f} s"))
        # Their "running" reports, recorded by the daemon (reports from many nodes share a
        # transaction: docs/group-commit.md).
        wait_for(
            "the running reports recorded",
            lambda: world.metric("schedulerd_agent_reports_total") - reports0 >= total,
            900,
        )
        recorded = time.monotonic() - t0
        reports = world.metric("schedulerd_agent_reports_total") - reports0
        changes = world.metric("schedulerd_agent_report_changes_total") - changes0
        rows.append(
            (f"fill: all {total} running reports recorded by the daemon", f"{recorded:.1f} s")
        )
        rows.append(
            (
                "  in transactions (reports per transaction)",
                f"{changes:.0f} ({reports / max(1, changes):.1f})",
            )
        )

        # The cost of holding running jobs is read once the fill's work has settled.
        time.sleep(SETTLE_S)
        rss2 = daemon.rss_mib()
        cpu2 = daemon.cpu_share(args.cpu_window)
        per1000 = 1000 / total
        rows.append(("daemon RSS per 1,000 running jobs", f"{(rss2 - rss1) * per1000:.1f} MiB"))
        rows.append(
            (
                "daemon CPU per 1,000 running jobs (idle otherwise)",
                f"{(cpu2 - cpu1) * per1000 * 100:.1f} %",
            )
        )
        rows.append((f"daemon RSS at {args.nodes} nodes, {total} running", f"{rss2:.0f} MiB"))
        rows.append((f"daemon CPU at {args.nodes} nodes, {total} running", f"{cpu2 * 100:.1f} %"))

        # --- room for a job of half the cluster -----------------------------------------
        t0 = time.monotonic()
        job = world.client.submit("/owner", ["x"], big, env=FOREVER).id
        wait_for(
            "big job placed",
            lambda: JobState.of(world.client.get_job(job).state) is JobState.RUNNING,
            900,
        )
        placed = time.monotonic() - t0
        wait_for("big job running", lambda: world.busy("/owner") == big, 900)
        running = time.monotonic() - t0
        rows.append((f"room for a {big}-GPU job: placed (KAI: 102 s)", f"{placed:.1f} s"))
        rows.append((f"room for a {big}-GPU job: all its parts running", f"{running:.1f} s"))
        # Its cancel: every part gone from the nodes (each part's exit makes the daemon
        # resend a stop to the parts still listed alive, see docs/nodesim.md).
        before = world.status()
        t0 = time.monotonic()
        world.client.cancel(job)
        wait_for("big job gone", lambda: world.busy("/owner") == 0, 900)
        gone = time.monotonic() - t0
        wait_for("the cluster refilled", lambda: world.busy("/filler") == total, 900)
        refilled = time.monotonic() - t0
        after = world.status()
        rows.append((f"cancel of the {big}-GPU job: all its parts gone", f"{gone:.1f} s"))
        rows.append(
            (
                "  reports repeated by the nodes meanwhile (a stop for a part already ended)",
                str(after.get("repeats", 0) - before.get("repeats", 0)),
            )
        )
        rows.append((f"  and the cluster refilled with {big} one-GPU jobs", f"{refilled:.1f} s"))

        # --- reclaim one GPU, ten times -------------------------------------------------
        placed_s: list[float] = []
        running_s: list[float] = []
        for i in range(args.samples):
            t0 = time.monotonic()
            one = world.client.submit("/owner", ["x"], 1, env=FOREVER).id
            wait_for(
                "one placed",
                lambda one=one: JobState.of(world.client.get_job(one).state) is JobState.RUNNING,
                300,
            )
            placed_s.append(time.monotonic() - t0)
            wait_for("one running", lambda i=i: world.busy("/owner") == i + 1, 300)
            running_s.append(time.monotonic() - t0)
        n = len(placed_s)
        rows.append(
            (f"reclaim one GPU, mean of {n}: placed (KAI: 13.9 s)", f"{sum(placed_s) / n:.3f} s")
        )
        rows.append((f"reclaim one GPU, mean of {n}: running", f"{sum(running_s) / n:.3f} s"))
        # --- the daemon SIGKILLed and restarted on its store: every node registers again
        # with its running parts (each registration walks every job).
        before = world.status()
        world.daemon.kill()
        world.daemon.wait(30)
        t0 = time.monotonic()
        world.start_daemon()
        daemon = ProcStat(world.daemon.pid)
        world.wait_registered(args.nodes, 900)
        back = time.monotonic() - t0
        wait_for("all held again", lambda: sum(world.allocation().values()) >= total, 900)
        held = time.monotonic() - t0
        after = world.status()
        rows.append(
            (f"daemon SIGKILLed and restarted: {args.nodes} nodes UP again", f"{back:.1f} s")
        )
        rows.append((f"  and all {total} running jobs held again", f"{held:.1f} s"))
        rows.append(
            (
                "  parts started again meanwhile",
                str(after.get("starts", 0) - before.get("starts", 0)),
            )
        )

        status = world.status()
        rows.append(("nodesim: starts refused (GPU still held)", str(status.get("refused"))))
        rows.append(("nodesim: its RSS at the end", f"{sim.rss_mib():.0f} MiB"))
        rows.append(
            (
                "nodesim: its CPU over the run",
                f"{100 * sim.cpu_s() / status.get('uptime_s', 1):.0f} % of a core",
            )
        )
        rows.append(
            (
                f"nodesim: CPU now ({total} parts running, heartbeats)",
                f"{100 * sim.cpu_share(5):.0f} %",
            )
        )
    finally:
        world.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nKAI's scale scenario, {args.nodes} nodes x {args.gpus} GPUs (bench/kai_scale.py)\n")
    print("| measure | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
