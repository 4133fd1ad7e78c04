"""What the dashboard shows to whom: the JSON of each page, built with the gRPC API's
own conversions (job_to_pb, consumer_to_pb, experiment_to_pb, service_to_pb) and
redacted by the same rule (schedulerd/auth/authorize.py), so that the dashboard never
shows more than the API would.

Who sees what:
- a cluster admin: everything;
- anyone else: their consumers (those the policy lets them submit to, and those they
  administer) with their ancestors for context, and the jobs, experiments and services
  in their consumers and their own. Others' jobs in their consumers are shown as the API
  lists them (no command, env, working dir, history or logs). A GPU held by a job they
  may not see is shown busy, without its job. This is narrower than the API's lists
  (which name every consumer's jobs): "a user sees their consumers" (docs/dashboard.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from schedulerd.auth.authorize import (
    Action,
    Rules,
    Target,
    admin_of,
    authorize,
    is_cluster_admin,
)
from schedulerd.auth.identity import Identity
from schedulerd.core import ConsumerPath
from schedulerd.core.windows import policy_at
from schedulerd.daemon.convert import consumer_to_pb, job_to_pb
from schedulerd.daemon.state import ClusterState
from schedulerd.store import EventRecord, JobRecord, JobState

MAX_LISTED = 500  # waiting, running: the oldest shown, the count of all given
MAX_EVENTS = 200  # a job page's history: the newest


def as_json(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = MessageToDict(
        msg,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return out


@dataclass(frozen=True)
class Viewer:
    who: Identity
    rules: Rules

    @property
    def admin(self) -> bool:
        return is_cluster_admin(self.who, self.rules)

    def owns_consumer(self, path: str) -> bool:
        """One of the viewer's consumers: may submit there, or administers it."""
        if self.admin or admin_of(self.who, path, self.rules):
            return True
        policy = self.rules.policy
        p = ConsumerPath(path)
        return p in policy.consumers and policy.may_submit(p, self.who.name)

    def sees(self, consumer: str, owner: str) -> bool:
        """Whether the object (a job, experiment, service) is shown at all."""
        return owner == self.who.name or self.owns_consumer(consumer)

    def in_full(self, consumer: str, owner: str) -> bool:
        """With its command, env, history and logs: the API's rule for GetJob."""
        target = Target(consumer, owner=owner)
        return authorize(self.who, Action.GET_JOB, target, self.rules).full

    def may(self, action: Action, consumer: str, owner: str) -> bool:
        return authorize(self.who, action, Target(consumer, owner=owner), self.rules).allowed

    def consumers(self) -> list[str]:
        """The consumers shown: all for a cluster admin; else the viewer's, and the
        ancestors of those (the tree they sit in), in the policy's order."""
        policy = self.rules.policy
        if self.admin:
            return list(policy.consumers)
        shown: set[str] = set()
        for path in policy.consumers:
            if self.owns_consumer(path):
                shown.update(policy.ancestors(path))
        return [p for p in policy.consumers if p in shown]


def me(viewer: Viewer) -> dict[str, Any]:
    return {
        "user": viewer.who.name,
        "admin": viewer.admin,
        "scopes": sorted(s.value for s in viewer.who.scopes or ()) or None,
    }


def job_json(
    viewer: Viewer,
    job: JobRecord,
    history: list[EventRecord] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    full = viewer.in_full(job.consumer, job.user)
    out = as_json(job_to_pb(job, history if full else None, redacted=not full, reason=reason))
    out["state"] = job.state.value
    # Where it runs, by node: "n1: 0,1".
    out["where"] = [
        {"node": p.node, "rank": p.node_rank, "gpus": list(p.gpu_indices)}
        for p in job.parts
        if job.state is JobState.RUNNING or job.state.ended
    ]
    out["holds"] = sum(len(p.gpu_indices) for p in job.parts)
    return out


def overview(viewer: Viewer, state: ClusterState) -> dict[str, Any]:
    assert state.policy is not None
    policy = policy_at(state.policy, state.clock())
    shown = viewer.consumers()
    consumers = []
    for path in shown:
        p = ConsumerPath(path)
        spec = policy.consumers.get(p)
        if spec is None:
            continue
        row = as_json(consumer_to_pb(spec, state.consumer_states.get(p), policy.is_leaf(p)))
        row["depth"] = 0 if path == "/" else path.count("/")
        consumers.append(row)
    waiting: list[JobRecord] = []
    running: list[JobRecord] = []
    for job in sorted(state.jobs.values(), key=lambda j: j.id):
        if not viewer.sees(job.consumer, job.user):
            continue
        (running if job.state is JobState.RUNNING else waiting).append(job)
    return {
        "me": me(viewer),
        "now": state.clock(),
        "total_gpus": sum(state.pool_gpus().values()),
        "consumers": consumers,
        "waiting": [job_json(viewer, j, reason=state.reason_of(j)) for j in waiting[:MAX_LISTED]],
        "waiting_count": len(waiting),
        "running": [job_json(viewer, j, reason=state.reason_of(j)) for j in running[:MAX_LISTED]],
        "running_count": len(running),
    }


def nodes(viewer: Viewer, state: ClusterState) -> dict[str, Any]:
    holders: dict[tuple[str, int], JobRecord] = {
        (p.node, i): job for job in state.jobs.values() for p in job.parts for i in p.gpu_indices
    }
    out = []
    for node in sorted(state.nodes.values(), key=lambda n: n.name):
        fenced = node.fenced()
        gpus = []
        for g in node.gpus:
            job = holders.get((node.name, g.index))
            cell: dict[str, Any] = {
                "index": g.index,
                "model": g.model,
                "memory_bytes": g.memory_bytes,
                "busy": job is not None,
                "fenced": g.index in fenced,
            }
            if job is not None and viewer.sees(job.consumer, job.user):
                cell.update(
                    job_id=job.id, consumer=job.consumer, user=job.user, state=job.state.value
                )
            gpus.append(cell)
        out.append(
            {
                "name": node.name,
                "pool": node.pool,
                "gpu_type": node.gpu_type,
                "state": state.liveness(node).value,
                "drained": node.drained,
                "drain_reason": node.drain_reason,
                "fake_gpus": node.fake_gpus,
                "gpus": gpus,
            }
        )
    return {"me": me(viewer), "nodes": out}


def job_page(viewer: Viewer, state: ClusterState, job_id: int) -> dict[str, Any] | None:
    """None when there is no such job or the viewer may not see it (the same answer,
    so that a page tells nothing of others' job ids)."""
    job = state.jobs.get(job_id) or state.store.load_job(job_id)
    if job is None or not viewer.sees(job.consumer, job.user):
        return None
    events = state.store.events(job.id)[-MAX_EVENTS:]
    out = job_json(viewer, job, events, reason=state.reason_of(job))
    out["may_read_logs"] = viewer.may(Action.READ_LOGS, job.consumer, job.user)
    return {"me": me(viewer), "job": out}


def shown_consumers(viewer: Viewer, paths: Iterable[str]) -> list[str]:
    return [p for p in paths if viewer.admin or viewer.owns_consumer(p)]
