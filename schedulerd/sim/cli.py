"""`python -m schedulerd.sim`: replay a workload through schedulerd's core and the
baselines, and print the measures side by side (docs/simulator.md).

    python -m schedulerd.sim philly --gpus 2000
    python -m schedulerd.sim philly --gpus 512 --start 2017-10-01 --days 14 --plots out/
    python -m schedulerd.sim backlog --gpus 128 --shares 1,3
    python -m schedulerd.sim mixed --gpus 256 --elastic 0.3
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

from schedulerd.core import Order, Policy
from schedulerd.sim.engine import Engine, Result, SimConfig
from schedulerd.sim.pools import (
    PoolRecorder,
    PoolSpec,
    bind_jobs,
    build_nodes,
    parse_pools,
    pool_table,
    with_pool_terms,
)
from schedulerd.sim.report import summarize, table
from schedulerd.sim.schedulers import FairShare, Fifo, Scheduler, StaticPartitions
from schedulerd.sim.setup import (
    ClusterSpec,
    PolicySettings,
    Split,
    build_policy,
    partition,
    split_weights,
)
from schedulerd.sim.workload import (
    TraceError,
    Workload,
    backlog_scenario,
    load_philly,
    mixed_scenario,
)

# ../shared/traces/philly/philly.csv next to the checkout.
DEFAULT_TRACE = Path(__file__).resolve().parents[3] / "shared/traces/philly/philly.csv"
SCHEDULERS = ("schedulerd", "static", "fifo")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m schedulerd.sim", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="workload", required=True)
    philly = sub.add_parser("philly", help="replay the Philly trace (each VC a consumer)")
    philly.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    philly.add_argument("--start", type=_date, help="first submit day, YYYY-MM-DD (UTC)")
    philly.add_argument("--days", type=float, help="length of the window of submits")
    backlog = sub.add_parser("backlog", help="every consumer submits a backlog of 1-GPU jobs")
    backlog.add_argument("--shares", type=_shares, default=(1.0, 3.0), help="e.g. 1,3")
    backlog.add_argument("--jobs-per-consumer", type=int, default=2000)
    backlog.add_argument("--duration", type=float, default=30.0, help="seconds per job")
    mixed = sub.add_parser("mixed", help="seeded Poisson arrivals, Philly-like sizes")
    mixed.add_argument("--consumers", type=int, default=6)
    mixed.add_argument("--load", type=float, default=1.2, help="offered load / cluster")
    mixed.add_argument("--hours", type=float, default=48.0)
    mixed.add_argument("--elastic", type=float, default=0.0, help="fraction of elastic jobs")
    mixed.add_argument("--seed", type=int, default=1)
    for s in (philly, backlog, mixed):
        _common(s)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster and policy")
    g.add_argument("--gpus", type=int, default=2000, help="cluster size (rounded up to nodes)")
    g.add_argument("--gpus-per-node", type=int, default=8)
    g.add_argument(
        "--split",
        choices=[s.value for s in Split],
        default=Split.GPU_TIME.value,
        help="how shares, owned GPUs and static partitions are divided (philly, mixed)",
    )
    g.add_argument(
        "--owned-fraction",
        type=float,
        help="fraction of the cluster owned by the consumers, by the split "
        "(default 1 for philly and mixed, 0 for backlog)",
    )
    g.add_argument(
        "--pools",
        type=_pools,
        help="pools instead of --gpus: NAME:NODESxGPUS,... (a100:16x8,h100:8x8); owned GPUs "
        "are split per pool by the same split (docs/pools.md); schedulerd only",
    )
    g.add_argument(
        "--pool-bound",
        type=float,
        default=0.5,
        help="with --pools: the fraction of jobs that ask for one pool, drawn in proportion "
        "to the pools' GPUs (default 0.5; the rest may run in any)",
    )
    g.add_argument("--min-runtime", type=float, default=600.0, help="seconds (policy)")
    g.add_argument("--grace", type=float, default=30.0, help="seconds (policy)")
    g.add_argument(
        "--reclaim-patience",
        type=float,
        default=0.0,
        help="seconds a job waits before reclaim acts for it (policy reclaim_patience; "
        "default 0: at once)",
    )
    r = p.add_argument_group("simulation")
    r.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds; a cycle runs at the first tick after a change (default 1, as the daemon)",
    )
    r.add_argument("--stop", type=float, default=30.0, help="seconds a preempted job takes")
    r.add_argument("--restart-lost", action="store_true", help="preempted jobs start over")
    r.add_argument("--until-days", type=float, help="stop the run after this many days")
    r.add_argument(
        "--schedulers",
        default=",".join(SCHEDULERS),
        help=f"comma-separated, from {', '.join(SCHEDULERS)}",
    )
    r.add_argument("--plots", type=Path, help="write PNG plots into this folder")


def _date(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _pools(text: str) -> tuple[PoolSpec, ...]:
    try:
        return parse_pools(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _shares(text: str) -> tuple[float, ...]:
    try:
        shares = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if len(shares) < 1 or any(not math.isfinite(s) or s <= 0 for s in shares):
        raise argparse.ArgumentTypeError(f"shares must be numbers > 0: {text!r}")
    return shares


def workload_of(args: argparse.Namespace) -> tuple[Workload, dict[str, float]]:
    """The jobs, and each consumer's weight for shares, owned GPUs and partitions."""
    if args.workload == "philly":
        wl = load_philly(args.trace, args.start, args.days)
    elif args.workload == "backlog":
        wl = backlog_scenario(args.shares, args.jobs_per_consumer, args.duration)
        total = sum(args.shares)
        return wl, {f"/team{i}": s / total for i, s in enumerate(args.shares)}
    else:
        wl = mixed_scenario(
            consumers=args.consumers,
            gpus=args.gpus,
            load=args.load,
            hours=args.hours,
            elastic_fraction=args.elastic,
            seed=args.seed,
        )
    return wl, split_weights(wl.consumers, Split(args.split), wl.gpu_time_by_consumer())


def make_scheduler(
    name: str, policy: Policy, cluster_gpus: int, weights: dict[str, float]
) -> Scheduler:
    if name == "schedulerd":
        return FairShare(policy, cluster_gpus)
    if name == "fifo":
        return Fifo(cluster_gpus)
    if name == "static":
        # The partitions follow the same split as the shares and owned GPUs.
        return StaticPartitions(partition(cluster_gpus, weights))
    raise ValueError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = [n.strip() for n in args.schedulers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCHEDULERS]
    if unknown or not names:
        print(f"--schedulers: unknown {unknown}; choose from {SCHEDULERS}", file=sys.stderr)
        return 2
    if args.pools:  # the cluster's size is the pools' (the mixed workload is sized by it)
        args.gpus = sum(p.gpus for p in args.pools)
    try:
        wl, weights = workload_of(args)
    except (TraceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not wl.jobs:
        print("error: the workload has no jobs", file=sys.stderr)
        return 2
    if args.pools:
        # Baselines know no pools: they would put a job for h100 on an a100.
        names = ["schedulerd"]
        wl = bind_jobs(wl, args.pools, args.pool_bound, getattr(args, "seed", 1))
    nodes_needed = -(-args.gpus // args.gpus_per_node)
    cluster = ClusterSpec(nodes=nodes_needed, gpus_per_node=args.gpus_per_node)
    owned_fraction = args.owned_fraction
    if owned_fraction is None:
        owned_fraction = 0.0 if args.workload == "backlog" else 1.0
    settings = PolicySettings(
        owned_fraction=owned_fraction,
        min_runtime_s=args.min_runtime,
        grace_s=args.grace,
        reclaim_patience_s=args.reclaim_patience,
        order=Order.FIFO,
    )
    policy = build_policy(weights, args.gpus, settings)
    if args.pools:
        policy = with_pool_terms(policy, weights, args.pools, settings)
    config = SimConfig(
        interval_s=args.interval,
        stop_s=args.stop,
        restart_lost=args.restart_lost,
        until_s=args.until_days * 86400 if args.until_days is not None else None,
    )
    where = (
        f"pools {', '.join(f'{p.name} {p.nodes}×{p.gpus_per_node}' for p in args.pools)},"
        f" {args.pool_bound:.0%} of jobs bound to one;"
        if args.pools
        else f"cluster {cluster.nodes} nodes × {cluster.gpus_per_node} = {cluster.gpus:,} GPUs;"
    )
    print(
        f"workload {wl.name}: {len(wl.jobs):,} jobs, {len(wl.consumers)} consumers"
        + (f", from {wl.origin:%Y-%m-%d %H:%M}" if wl.origin else "")
        + f"; {where}"
        f" split {args.split if args.workload != 'backlog' else 'by --shares'},"
        f" owned {owned_fraction:.0%}; interval {args.interval:g} s,"
        f" min_runtime {args.min_runtime:g} s, grace {args.grace:g} s",
        flush=True,
    )
    results: list[Result] = []
    nodes = build_nodes(args.pools) if args.pools else cluster.build()
    pool_recorder = PoolRecorder(nodes, policy, wl) if args.pools else None
    for name in names:
        scheduler = make_scheduler(name, policy, args.gpus, weights)
        engine = Engine(wl, nodes, policy, scheduler, config, on_cycle=pool_recorder)
        result = engine.run()
        if pool_recorder is not None:
            pool_recorder.finish(engine.now)
        print(f"  {scheduler.name}: {result.wall_s:.1f} s wall", file=sys.stderr, flush=True)
        results.append(result)
    print()
    print(table([summarize(r) for r in results]))
    if pool_recorder is not None:
        print()
        print(pool_table(pool_recorder))
    if args.plots is not None:
        from schedulerd.sim.plots import allocation_plot, wait_cdf_plot

        args.plots.mkdir(parents=True, exist_ok=True)
        hours = results[0].recorder.span_s < 4 * 86400
        for path in (
            allocation_plot(results, args.plots / "allocation.png", hours=hours),
            wait_cdf_plot(results, args.plots / "wait_cdf.png"),
        ):
            print(f"wrote {path}")
    return 0
