"""Pools in the simulator (docs/pools.md, docs/simulator.md): a node group per pool, the
policy's owned GPUs split per pool, a fraction of the jobs bound to one pool, and the
measures per pool.

    python -m schedulerd.sim mixed --pools a100:16x8,h100:8x8 --pool-bound 0.5
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from schedulerd.core import ConsumerPath, Node, NodeName, Plan, Policy
from schedulerd.core.model import PoolTerms
from schedulerd.sim.setup import PolicySettings, partition
from schedulerd.sim.workload import Workload


@dataclass(frozen=True)
class PoolSpec:
    name: str
    nodes: int
    gpus_per_node: int

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def parse_pools(text: str) -> tuple[PoolSpec, ...]:
    """ "a100:16x8,h100:8x8": a pool per item, NAME:NODESxGPUS; ValueError if not."""
    pools = []
    for item in text.split(","):
        name, _, shape = item.strip().partition(":")
        nodes, _, per_node = shape.partition("x")
        if not name or not nodes.isdigit() or not per_node.isdigit():
            raise ValueError(f"{item!r}: want NAME:NODESxGPUS, like a100:16x8")
        if int(nodes) < 1 or int(per_node) < 1:
            raise ValueError(f"{item!r}: at least 1 node of 1 GPU")
        pools.append(PoolSpec(name, int(nodes), int(per_node)))
    if len({p.name for p in pools}) != len(pools):
        raise ValueError(f"{text!r}: a pool is named twice")
    return tuple(pools)


def build_nodes(pools: Sequence[PoolSpec]) -> tuple[Node, ...]:
    """Nodes named POOL-nNN, in their pool, whose GPU type is the pool's name."""
    nodes = []
    for p in pools:
        width = len(str(p.nodes))
        gpus = tuple(range(p.gpus_per_node))
        for i in range(p.nodes):
            name = NodeName(f"{p.name}-n{i:0{width}d}")
            nodes.append(Node(name=name, gpus=gpus, pool=p.name, gpu_type=p.name))
    return tuple(nodes)


def bind_jobs(
    workload: Workload, pools: Sequence[PoolSpec], fraction: float, seed: int
) -> Workload:
    """A `fraction` of the jobs (drawn with `seed`) ask for one pool, drawn in proportion
    to the pools' GPUs among those the job fits in; the rest may run in any pool."""
    rng = random.Random(seed)
    jobs = []
    for job in workload.jobs:
        fits = [p for p in pools if job.gpus_max <= p.gpus]
        if fits and rng.random() < fraction:
            pool = rng.choices(fits, weights=[p.gpus for p in fits])[0]
            job = dataclasses.replace(job, pool=pool.name)
        jobs.append(job)
    return dataclasses.replace(workload, jobs=tuple(jobs))


def with_pool_terms(
    policy: Policy,
    weights: Mapping[str, float],
    pools: Sequence[PoolSpec],
    settings: PolicySettings,
) -> Policy:
    """The policy with each consumer's owned GPUs split per pool by the same weights as
    the whole cluster's (shares and limits as they are)."""
    owned = {p.name: partition(round(p.gpus * settings.owned_fraction), weights) for p in pools}
    consumers = {}
    for path, spec in policy.consumers.items():
        terms = tuple(
            (
                p.name,
                PoolTerms(owned=owned[p.name].get(path, 0), share=spec.share, limit=spec.limit),
            )
            for p in sorted(pools, key=lambda p: p.name)
        )
        consumers[path] = dataclasses.replace(spec, pools=terms)
    return dataclasses.replace(policy, consumers=consumers)


@dataclass
class PoolMeasures:
    gpus: int
    allocated_gpu_s: float = 0.0
    wanted_gpu_s: float = 0.0  # ∫ min(the pool's GPUs, its demand) dt
    demand_s: float = 0.0  # time some consumer had demand in the pool
    error_gpu_s: float = 0.0  # ∫ Σ |allocation - entitlement| dt over that time
    waits: list[float] = field(default_factory=list)

    @property
    def allocation_while_demand(self) -> float:
        """Allocated GPU-time over what demand could have used: the main table's
        "GPU allocation while demand exists", for this pool."""
        return self.allocated_gpu_s / self.wanted_gpu_s if self.wanted_gpu_s else 0.0

    @property
    def fairness_error(self) -> float:
        return self.error_gpu_s / (self.gpus * self.demand_s) if self.demand_s else 0.0


class PoolRecorder:
    """Per pool, from each cycle's plan (the engine's `on_cycle`): allocation while the
    pool has demand, fairness
    error (Σ over leaves |allocation − entitlement| / the pool's GPUs, over the time the
    pool has demand) and the wait of the jobs that started there. Each plan's numbers
    hold until the next cycle, which runs at the first tick after any change."""

    def __init__(self, nodes: Sequence[Node], policy: Policy, workload: Workload) -> None:
        self.node_pool = {n.name: n.pool for n in nodes}
        self.measures: dict[str, PoolMeasures] = {}
        sizes: dict[str, int] = defaultdict(int)
        for n in nodes:
            sizes[n.pool] += len(n.gpus)
        self.measures = {p: PoolMeasures(g) for p, g in sizes.items()}
        self.leaves = [ConsumerPath(p) for p in policy.leaves()]
        self.submit_s = {j.id: j.submit_s for j in workload.jobs}
        self.started: set[int] = set()
        self._last: tuple[float, Plan] | None = None

    def __call__(self, now: float, plan: Plan) -> None:
        self._integrate(now)
        self._last = (now, plan)
        for start in plan.starts:
            if start.job_id in self.started:
                continue  # a restart after preemption: the wait is the first one's
            self.started.add(start.job_id)
            pool = self.node_pool[start.slots[0].node]
            self.measures[pool].waits.append(now - self.submit_s[start.job_id])

    def finish(self, end: float) -> None:
        self._integrate(end)
        self._last = None

    def _integrate(self, now: float) -> None:
        if self._last is None:
            return
        then, plan = self._last
        dt = now - then
        by_pool = plan.pools or {p: plan.consumers for p in self.measures}
        for pool, states in by_pool.items():
            m = self.measures[pool]
            root = states.get(ConsumerPath("/"))
            if root is not None:
                m.allocated_gpu_s += root.allocation * dt
            if root is None or root.demand == 0:
                continue
            # A job that starts as a guest (core/pools.py) holds GPUs in a pool whose
            # demand does not count it: what is held was wanted too.
            m.wanted_gpu_s += min(m.gpus, max(root.demand, root.allocation)) * dt
            m.demand_s += dt
            m.error_gpu_s += dt * sum(
                abs(s.allocation - s.entitlement) for c in self.leaves if (s := states.get(c))
            )


def pool_table(recorder: PoolRecorder) -> str:
    rows = [
        ("pool", "GPUs", "allocation while demand", "fairness error", "jobs started", "mean wait")
    ]
    for pool, m in sorted(recorder.measures.items()):
        wait = sum(m.waits) / len(m.waits) if m.waits else 0.0
        rows.append(
            (
                pool,
                f"{m.gpus:,}",
                f"{m.allocation_while_demand:.1%}",
                f"{m.fairness_error:.3f}",
                f"{len(m.waits):,}",
                _duration(wait),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"
