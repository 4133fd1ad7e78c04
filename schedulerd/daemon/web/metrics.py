"""GET /metrics: the daemon's registry (schedulerd/daemon/metrics.py) in Prometheus'
text format, with the cluster's state read at scrape time by `ClusterCollector`:
consumers, pools, nodes, experiments and services as the daemon holds them now
(docs/metrics.md). Nothing here is updated on every change: a scrape reads the
ClusterState on the event loop, where it is consistent. What would cost a pass over
every waiting job (the waiting jobs by kind of reason) is counted once per scheduling
cycle instead (DaemonMetrics.count_waiting).

Labels are names the policy and the cluster bound: consumers, pools, nodes, services;
never a job id, a user, a command or an environment."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schedulerd.core.windows import policy_at
from schedulerd.daemon.metrics import WAIT_KIND_NAMES
from schedulerd.daemon.state import Liveness
from schedulerd.store import JobState
from schedulerd.store.experiments import TrialState
from schedulerd.store.serving import ReplicaPhase

if TYPE_CHECKING:
    from schedulerd.daemon.server import Daemon


# Services with series of their own; the others are summed under OTHER_SERVICE (no
# service name can be it: names are DNS-like labels, schedulerd/serve/spec.py).
MAX_SERVICE_SERIES = 200
OTHER_SERVICE = "(other)"


def add_metrics_routes(app: web.Application, daemon: Daemon) -> None:
    registry = daemon.state.metrics.registry
    registry.register(ClusterCollector(daemon))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class ClusterCollector(Collector):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        yield from self._consumers()
        yield from self._pools()
        yield from self._nodes()
        yield from self._experiments()
        yield from self._services()

    # -- consumers ------------------------------------------------------------

    def _consumers(self) -> Iterator[Metric]:
        state = self.daemon.state
        policy = state.policy
        c = ["consumer"]
        entitlement = _gauge(
            "schedulerd_consumer_entitlement_gpus",
            "GPUs the consumer is entitled to now (owned, then shares of the rest, "
            "capped by demand and limit), as of the last scheduling cycle",
            c,
        )
        allocation = _gauge(
            "schedulerd_consumer_allocation_gpus", "GPUs the consumer's jobs hold", c
        )
        owned = _gauge("schedulerd_consumer_owned_gpus", "GPUs the policy guarantees", c)
        share = _gauge("schedulerd_consumer_share", "Weight for GPUs beyond owned ones", c)
        limit = _gauge("schedulerd_consumer_limit_gpus", "At most this many GPUs (if set)", c)
        reserved = _gauge(
            "schedulerd_consumer_reserved_gpus", "Owned GPUs held back idle (lend: false)", c
        )
        demand = _gauge(
            "schedulerd_consumer_demand_gpus", "GPUs the consumer's waiting and running jobs ask", c
        )
        running = _gauge("schedulerd_consumer_jobs_running", "Running jobs", c)
        waiting = _gauge(
            "schedulerd_consumer_jobs_waiting",
            "Waiting jobs of a leaf consumer, by the kind of their reason "
            f"({', '.join(WAIT_KIND_NAMES)})",
            ["consumer", "reason"],
        )
        usage = _gauge(
            "schedulerd_consumer_usage_gpu_seconds",
            "Decayed GPU-seconds used (the policy's half-life), summed over its users",
            c,
        )
        below = _gauge(
            "schedulerd_consumer_below_entitlement_seconds",
            "Seconds the consumer has held fewer than floor(entitlement) GPUs while jobs of "
            "its wait (0 when not): reclaim should end it within its grace",
            c,
        )
        grace = _gauge(
            "schedulerd_consumer_grace_seconds",
            "Seconds a job of the consumer gets between SIGTERM and SIGKILL",
            c,
        )
        family = (entitlement, allocation, owned, share, limit, reserved, demand, running)
        if policy is not None:
            now = state.clock()
            now_policy = policy_at(policy, now)
            states = state.consumer_states
            for path, spec in now_policy.consumers.items():
                label = [str(path)]
                got = states.get(path)
                entitlement.add_metric(label, got.entitlement if got else 0.0)
                allocation.add_metric(label, got.allocation if got else 0)
                demand.add_metric(label, got.demand if got else 0)
                reserved.add_metric(label, got.reserved if got else 0.0)
                running.add_metric(label, got.running_jobs if got else 0)
                owned.add_metric(label, spec.owned)
                share.add_metric(label, spec.share)
                if spec.limit is not None:
                    limit.add_metric(label, spec.limit)
                grace.add_metric(label, spec.grace_s)
                since = state.metrics.below_since.get(str(path))
                below.add_metric(label, 0.0 if since is None else max(0.0, now - since))
            counts: dict[tuple[str, str], int] = defaultdict(int)
            for leaf in now_policy.consumers:
                if now_policy.is_leaf(leaf):
                    for kind in WAIT_KIND_NAMES:
                        counts[(str(leaf), kind)] = 0
            # Counted once per scheduling cycle, where the reasons are set (apply_plan),
            # not here: a scrape must not cost the event loop O(waiting jobs). Before
            # the first cycle, counted now, once.
            cached = state.metrics.waiting_counts
            if cached is None:
                cached = state.metrics.count_waiting(list(state.jobs.values()))
            for key, n in cached.items():
                counts[key] += n
            for (consumer, kind), n in sorted(counts.items()):
                waiting.add_metric([consumer, kind], n)
            used: dict[str, float] = defaultdict(float)
            for (consumer, _user), value in state.usage.items():
                used[str(consumer)] += value
            for consumer, value in sorted(used.items()):
                usage.add_metric([consumer], value)
        yield from family
        yield from (waiting, usage, below, grace)

    def _pools(self) -> Iterator[Metric]:
        state = self.daemon.state
        gpus = _gauge("schedulerd_pool_gpus", "GPUs of schedulable nodes in the pool", ["pool"])
        for pool, n in sorted(state.pool_gpus().items()):
            gpus.add_metric([pool], n)
        yield gpus
        labels = ["pool", "consumer"]
        entitlement = _gauge(
            "schedulerd_pool_consumer_entitlement_gpus",
            "A consumer's entitlement in one pool (clusters of several pools only)",
            labels,
        )
        allocation = _gauge(
            "schedulerd_pool_consumer_allocation_gpus",
            "GPUs a consumer holds in one pool (clusters of several pools only)",
            labels,
        )
        demand = _gauge(
            "schedulerd_pool_consumer_demand_gpus",
            "GPUs a consumer's jobs ask in one pool (clusters of several pools only)",
            labels,
        )
        for pool, by_path in sorted(state.pool_states.items()):
            for path, got in by_path.items():
                entitlement.add_metric([pool, str(path)], got.entitlement)
                allocation.add_metric([pool, str(path)], got.allocation)
                demand.add_metric([pool, str(path)], got.demand)
        yield from (entitlement, allocation, demand)

    # -- nodes ----------------------------------------------------------------

    def _nodes(self) -> Iterator[Metric]:
        state = self.daemon.state
        n = ["node"]
        info = _gauge(
            "schedulerd_node_info",
            '1 per node known to the daemon; fake="true": its agent runs fake GPUs',
            ["node", "pool", "gpu_type", "fake"],
        )
        gpus = _gauge("schedulerd_node_gpus", "GPUs of the node", n)
        busy = _gauge("schedulerd_node_gpus_busy", "GPUs of the node held by a job", n)
        fenced = _gauge(
            "schedulerd_node_gpus_fenced",
            "GPUs held back until the node reports their last holder gone (docs/fencing.md)",
            n,
        )
        drained = _gauge("schedulerd_node_drained", "1 when the node is drained", n)
        up = _gauge("schedulerd_node_up", "1 when the node is UP (heartbeats arriving)", n)
        liveness = _gauge(
            "schedulerd_node_state",
            "1 for the node's state: up, unreachable, down",
            ["node", "state"],
        )
        held: dict[str, int] = defaultdict(int)
        for job in list(state.jobs.values()):
            if job.state is JobState.RUNNING:
                for part in job.parts:
                    held[part.node] += len(part.gpu_indices)
        for node in list(state.nodes.values()):
            name = [node.name]
            info.add_metric(
                [node.name, node.pool, node.gpu_type, "true" if node.fake_gpus else "false"], 1
            )
            gpus.add_metric(name, len(node.gpus))
            busy.add_metric(name, held.get(node.name, 0))
            fenced.add_metric(name, len(node.fenced()))
            drained.add_metric(name, 1 if node.drained else 0)
            now = state.liveness(node)
            up.add_metric(name, 1 if now is Liveness.UP else 0)
            for each in Liveness:
                liveness.add_metric([node.name, each.value], 1 if each is now else 0)
        yield from (info, gpus, busy, fenced, drained, up, liveness)
        version = _gauge("schedulerd_policy_version", "Version of the policy in force", [])
        if state.policy_record is not None:
            version.add_metric([], state.policy_record.version)
        yield version
        # A cycle that raised does not count (a loop whose every cycle fails schedules
        # nothing); before the first good one, the seconds since the loop was made.
        loop = self.daemon.loop
        since = getattr(loop, "last_good_turn", None) or getattr(loop, "created", None)
        yield GaugeMetricFamily(
            "schedulerd_scheduler_seconds_since_last_cycle",
            "Seconds since the scheduling loop last completed a cycle without error "
            "(since the daemon started, before the first)",
            value=math.nan if since is None else max(0.0, time.monotonic() - since),
        )

    # -- experiments and services -----------------------------------------------

    def _experiments(self) -> Iterator[Metric]:
        running = _gauge(
            "schedulerd_experiments_running", "Hyperparameter searches running", ["consumer"]
        )
        trials = _gauge(
            "schedulerd_experiment_trials",
            "Trials of the running experiments, by state",
            ["consumer", "state"],
        )
        controller = self.daemon.experiments
        if controller is not None:
            exps: dict[str, int] = defaultdict(int)
            counts: dict[tuple[str, str], int] = defaultdict(int)
            for exp_id, exp in list(controller.running.items()):
                consumer = exp.spec.consumer
                exps[consumer] += 1
                for each in TrialState:
                    counts[(consumer, each.value)] += 0
                for trial in list(controller.trials.get(exp_id, {}).values()):
                    counts[(consumer, trial.state.value)] += 1
            for consumer, n in sorted(exps.items()):
                running.add_metric([consumer], n)
            for (consumer, value), n in sorted(counts.items()):
                trials.add_metric([consumer, value], n)
        yield from (running, trials)

    def _services(self) -> Iterator[Metric]:
        s = ["service"]
        replicas = _gauge(
            "schedulerd_service_replicas",
            "Replicas of an inference service, by phase (ACTIVE, DRAINING, STOPPING)",
            ["service", "phase"],
        )
        ready = _gauge("schedulerd_service_replicas_ready", "Replicas the router sends to", s)
        desired = _gauge("schedulerd_service_desired_replicas", "Replicas the autoscaler wants", s)
        in_flight = _gauge(
            "schedulerd_service_requests_in_flight",
            "Requests in flight at the router, averaged over the service's window",
            s,
        )
        rate = _gauge(
            "schedulerd_service_requests_per_second",
            "Requests per second at the router, over the service's window",
            s,
        )
        latency = _gauge(
            "schedulerd_service_latency_seconds",
            "The router's latency quantiles for the service, as last reported",
            ["service", "quantile"],
        )
        folded_gauge = _gauge(
            "schedulerd_service_series_folded",
            f"Services past the first {MAX_SERVICE_SERIES} (those with replicas first, "
            f'then the oldest) whose numbers are summed under service="{OTHER_SERVICE}"',
            [],
        )
        controller = self.daemon.services
        folded = 0
        if controller is not None:
            now = self.daemon.state.clock()
            phases = [p for p in ReplicaPhase if p is not ReplicaPhase.ENDED]
            # Users name services and may create many (scale_to_zero ones hold no GPU):
            # at most MAX_SERVICE_SERIES get their own series, the rest are summed.
            listed = []
            for svc_id, svc in list(controller.services.items()):
                live = list(controller.replicas.get(svc_id, {}).values())
                listed.append((not (live or svc.desired), svc_id, svc, live))
            listed.sort(key=lambda t: (t[0], t[1]))
            other: dict[str, float] = defaultdict(float)
            for _idle, svc_id, svc, live in listed[MAX_SERVICE_SERIES:]:
                folded += 1
                other["desired"] += svc.desired
                for phase in phases:
                    other[phase.value] += sum(1 for r in live if r.phase is phase)
                other["ready"] += sum(1 for r in live if controller.is_ready(svc, r))
                book = controller.loads.get(svc_id)
                if book is not None:
                    flying, _held, per_s = book.summary(now, svc.spec.window_s)
                    other["in_flight"] += flying
                    other["rate"] += per_s
            for _idle, svc_id, svc, live in listed[:MAX_SERVICE_SERIES]:
                name = svc.spec.name
                desired.add_metric([name], svc.desired)
                for phase in phases:
                    n = sum(1 for r in live if r.phase is phase)
                    replicas.add_metric([name, phase.value], n)
                ready.add_metric([name], sum(1 for r in live if controller.is_ready(svc, r)))
                book = controller.loads.get(svc_id)
                if book is not None:
                    flying, _held, per_s = book.summary(now, svc.spec.window_s)
                    in_flight.add_metric([name], flying)
                    rate.add_metric([name], per_s)
                    latency.add_metric([name, "0.5"], book.p50_ms / 1000)
                    latency.add_metric([name, "0.99"], book.p99_ms / 1000)
            if folded:
                # Latency quantiles do not sum: none for the folded services.
                desired.add_metric([OTHER_SERVICE], other["desired"])
                for phase in phases:
                    replicas.add_metric([OTHER_SERVICE, phase.value], other[phase.value])
                ready.add_metric([OTHER_SERVICE], other["ready"])
                in_flight.add_metric([OTHER_SERVICE], other["in_flight"])
                rate.add_metric([OTHER_SERVICE], other["rate"])
        folded_gauge.add_metric([], folded)
        yield from (replicas, ready, desired, in_flight, rate, latency, folded_gauge)
