"""End to end: /metrics of a daemon with two agents and a 1:3 backlog (issue 14, "Tests
that must pass"), scraped over real HTTP and read by prometheus_client's own parser:
the allocation and entitlement series per consumer match ListConsumers, counters move
as jobs start and end, the probes answer, and the agents' per-GPU series say fake.
Also the reason kinds of the waiting-jobs gauge, from the texts the core writes."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from harness import Cluster, free_port, sleep_job, wait_for
from prometheus_client.parser import text_string_to_metric_families

from schedulerd.api.v1 import jobs_pb2
from schedulerd.daemon.metrics import WAIT_KIND_NAMES, shrink_cause, start_kind, waiting_kind

POLICY = """
version: 1
consumers:
  a: {share: 1}
  b: {share: 3}
"""

Samples = dict[str, list[tuple[dict[str, str], float]]]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(url: str) -> Samples:
    """Every sample by its name (a histogram's _bucket/_count/_sum apart)."""
    status, text = get(url)
    assert status == 200, text
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((dict(s.labels), s.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    return sum(
        v for got, v in samples.get(name, []) if all(got.get(k) == x for k, x in labels.items())
    )


def by_consumer(samples: Samples, name: str) -> dict[str, float]:
    return {labels["consumer"]: v for labels, v in samples.get(name, [])}


def test_metrics_of_a_daemon_with_two_agents_and_a_1_to_3_backlog(tmp_path: Path) -> None:
    http = free_port()
    cluster = Cluster(tmp_path, POLICY, daemon_args=("--http-listen", f"127.0.0.1:{http}"))
    base = f"http://127.0.0.1:{http}"
    nodes = {f"m1-{os.getpid()}": free_port(), f"m2-{os.getpid()}": free_port()}
    try:
        cluster.start_daemon()
        for node, port in nodes.items():
            cluster.start_agent(node, 2, extra_args=("--metrics-listen", f"127.0.0.1:{port}"))
        cluster.wait_nodes_up(2)

        assert get(f"{base}/healthz") == (200, "ok\n")
        wait_for("/readyz to answer 200", lambda: get(f"{base}/readyz")[0] == 200)
        status, _ = get(f"{base}/nope")
        assert status == 404
        request = urllib.request.Request(f"{base}/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405

        before = scrape(f"{base}/metrics")
        assert value(before, "schedulerd_jobs_ended_total", consumer="/a") == 0

        # Counters move as jobs start and end: two that succeed and one that fails.
        short = [
            cluster.client.submit("/a", sleep_job(0.2)).id,
            cluster.client.submit("/a", sleep_job(0.2)).id,
            cluster.client.submit("/b", sleep_job(0.2, exit_code=3)).id,
        ]

        def ended() -> bool:
            states = [jobs_pb2.JobState.Name(cluster.client.get_job(i).state) for i in short]
            return all(s in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT") for s in states)

        wait_for("the short jobs to end", ended)
        moved = scrape(f"{base}/metrics")
        assert value(moved, "schedulerd_jobs_submitted_total", consumer="/a") == 2
        assert value(moved, "schedulerd_jobs_submitted_total", consumer="/b") == 1
        assert value(moved, "schedulerd_jobs_started_total") == 3
        assert value(moved, "schedulerd_jobs_ended_total", consumer="/a", state="SUCCEEDED") == 2
        assert value(moved, "schedulerd_jobs_ended_total", consumer="/b", state="FAILED") == 1
        assert value(moved, "schedulerd_job_submit_to_start_seconds_count") == 3
        assert value(moved, "schedulerd_scheduler_cycles_total") > 0
        assert value(moved, "schedulerd_scheduler_cycle_duration_seconds_count") > 0
        assert value(moved, "schedulerd_api_requests_total", method="Scheduler.SubmitJob") == 3
        assert value(moved, "schedulerd_api_requests_total", code="OK") >= 3
        assert value(moved, "schedulerd_api_streams_open", method="AgentService.Connect") == 2

        # The 1:3 backlog: more 1-GPU jobs than the 4 GPUs, in both consumers.
        for _ in range(6):
            cluster.client.submit("/a", sleep_job(600), name="a-backlog")
            cluster.client.submit("/b", sleep_job(600), name="b-backlog")
        wait_for(
            "the 1:3 split",
            lambda: cluster.allocation().get("/a") == 1 and cluster.allocation().get("/b") == 3,
        )

        def matches() -> Samples | None:
            """A scrape between two identical ListConsumers answers (a cycle may land
            between the two reads; the test retries rather than times anything)."""
            first = cluster.client.consumers()
            samples = scrape(f"{base}/metrics")
            second = cluster.client.consumers()
            if first != second:
                return None
            alloc = by_consumer(samples, "schedulerd_consumer_allocation_gpus")
            ent = by_consumer(samples, "schedulerd_consumer_entitlement_gpus")
            for c in second.consumers:
                if alloc.get(c.path) != c.allocation or ent.get(c.path) != pytest.approx(
                    c.entitlement
                ):
                    return None
            return samples

        samples = wait_for("/metrics to match ListConsumers", matches)
        alloc = by_consumer(samples, "schedulerd_consumer_allocation_gpus")
        ent = by_consumer(samples, "schedulerd_consumer_entitlement_gpus")
        assert (alloc["/a"], alloc["/b"]) == (1, 3)
        assert ent["/a"] == pytest.approx(1.0) and ent["/b"] == pytest.approx(3.0)
        listed = {c.path: c for c in cluster.client.consumers().consumers}
        assert set(alloc) == set(listed) == set(ent)
        # Waiting jobs by reason: every kind a known one, and they add up to the
        # consumer's waiting jobs.
        waiting = samples["schedulerd_consumer_jobs_waiting"]
        assert {labels["reason"] for labels, _ in waiting} <= set(WAIT_KIND_NAMES)
        for path in ("/a", "/b"):
            assert value(samples, "schedulerd_consumer_jobs_waiting", consumer=path) == len(
                cluster.client.list_jobs(path, ["PENDING", "PREEMPTED"])
            )
        assert value(samples, "schedulerd_consumer_jobs_waiting", consumer="/a") > 0
        assert value(samples, "schedulerd_consumer_demand_gpus", consumer="/a") == 6
        # Nodes: 2 GPUs each, all busy, both up; no job id anywhere in the labels.
        for node in nodes:
            assert value(samples, "schedulerd_node_gpus", node=node) == 2
            assert value(samples, "schedulerd_node_gpus_busy", node=node) == 2
            assert value(samples, "schedulerd_node_up", node=node) == 1
            assert value(samples, "schedulerd_node_info", node=node, fake="true") == 1
        labels_seen = {k for series in samples.values() for labels, _ in series for k in labels}
        assert not labels_seen & {"job", "job_id", "user", "command"}

        # Each agent: per-GPU series labelled fake, its parts, its link.
        for node, port in nodes.items():
            assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
            agent = scrape(f"http://127.0.0.1:{port}/metrics")
            util = agent["schedulerd_agent_gpu_utilization_ratio"]
            assert sorted(labels["gpu"] for labels, _ in util) == ["0", "1"]
            assert all(labels["fake"] == "true" and labels["node"] == node for labels, _ in util)
            assert value(agent, "schedulerd_agent_gpu_memory_total_bytes") > 0
            assert value(agent, "schedulerd_agent_connected", node=node) == 1
            assert value(agent, "schedulerd_agent_messages_sent_total", kind="register") >= 1
            assert "process_cpu_seconds_total" in agent
            wait_for(
                f"{node}'s metrics to show its 2 parts",
                lambda port=port: (
                    value(
                        scrape(f"http://127.0.0.1:{port}/metrics"),
                        "schedulerd_agent_job_parts_running",
                    )
                    == 2
                ),
            )
    finally:
        cluster.stop()


# -- reason kinds: from the texts core/reasons.py and its neighbours write ------------


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("submitted; waiting for the next scheduling cycle", "new"),
        (
            "consumer /old is not a leaf of the policy in force; apply a policy that has it, "
            "or cancel the job",
            "consumer",
        ),
        ("waiting for pool h100: no node has that pool or GPU type (pools now: a100)", "pool"),
        (
            "in pool a100: waiting for 2 GPUs: /a holds 0 of its entitlement 2.0; no GPU is "
            "free; reclaim from /b started (1st of 3 waiting in /a)",
            "reclaim",
        ),
        (
            "waiting for 1 GPU: /a holds 1 of its entitlement 2.0; no GPU is free; GPUs on "
            "their way back, grace ends in 12 s (1st of 1 waiting in /a)",
            "reclaim",
        ),
        (
            "waiting for 8 GPUs on one node: /a holds 0 of its entitlement 8.0; 3 GPUs free, "
            "at most 2 on one node; holds a reservation on n1: 2 of its 8 GPUs held for it as "
            "they free up; start time unknown (its GPUs' holders have no time limit)",
            "reservation",
        ),
        ("waiting for 1 GPU: /a/x holds 4 of its limit 4 (2nd of 5 waiting in /a/x)", "limit"),
        (
            "waiting for 1 GPU: /a holds 2 of its entitlement 2.0 and may not borrow "
            "(borrow: false)",
            "borrow",
        ),
        (
            "waiting for 1 GPU: /a holds 3 of its entitlement 3.0; 2 GPUs free; reserved "
            "(lend: false): 2 for /oncall",
            "reserved",
        ),
        (
            "waiting for 4 GPUs: only 2 GPUs are schedulable now (other nodes are drained or "
            "unreachable)",
            "nodes",
        ),
        (
            "waiting for 4 GPUs on one node: /a holds 6 of its entitlement 6.0; 4 GPUs free, "
            "at most 2 on one node (1st of 1 waiting in /a)",
            "fragmented",
        ),
        (
            "waiting for 1 GPU: /a holds 0 of its entitlement 1.0; no GPU is free; below its "
            "entitlement, it is served first as GPUs free up (1st of 2 waiting in /a)",
            "fair",
        ),
        (
            "waiting for 1 GPU: /a holds 2 of its entitlement 1.0; no GPU is free (3rd of 5 "
            "waiting in /a)",
            "capacity",
        ),
        ("preempted (to give 1 GPU(s) to ...); back in the queue, restart 1", "other"),
        ("", "other"),
    ],
)
def test_waiting_kind(reason: str, kind: str) -> None:
    assert waiting_kind(reason) == kind
    assert kind in WAIT_KIND_NAMES


def test_waiting_kind_of_the_cores_own_reasons() -> None:
    """The texts decide() writes for a real backlog map to known kinds, never "other"."""
    from schedulerd import core
    from schedulerd.core import ConsumerPath, JobId, NodeName
    from schedulerd.policy import load_policy

    policy = load_policy(POLICY + "  c: {share: 1, limit: 1}\n", "test")
    nodes = (core.Node(NodeName("n1"), (0, 1), True, "default", ""),)
    jobs = tuple(
        core.Job(
            id=JobId(i),
            consumer=ConsumerPath(path),
            user="u",
            gpus_min=1,
            gpus_max=1,
            priority=0,
            submit_seq=i,
            phase=core.JobPhase.PENDING,
        )
        for i, path in enumerate(["/a", "/b", "/c", "/c", "/a", "/b"], start=1)
    )
    plan = core.decide(core.Snapshot(nodes=nodes, jobs=jobs), policy, 0.0)
    kinds = {job_id: waiting_kind(text) for job_id, text in plan.pending_reasons.items()}
    assert kinds and "other" not in kinds.values(), plan.pending_reasons
    # /c, at its limit of 1 once its first job started, waits for its limit.
    c_waiting = [j.id for j in jobs if j.consumer == "/c" and j.id in kinds]
    if c_waiting and any(s.job_id in (3, 4) for s in plan.starts):
        assert all(kinds[i] == "limit" for i in c_waiting)


def test_start_and_shrink_kinds() -> None:
    assert (
        start_kind("started on 1 GPU: /a held 0 of its entitlement 1.0, within its entitlement")
        == "entitled"
    )
    assert (
        start_kind(
            "started on 2 GPUs: /a held 1 of its entitlement 1.0, borrowing idle "
            "GPUs (work conservation)"
        )
        == "borrowing"
    )
    assert start_kind("started on 1 GPU: ...; backfilled on GPUs held for job 7") == "backfill"
    assert start_kind("something new") == "other"
    assert (
        shrink_cause("shrunk for job 4 of /a, priority 5 above its 0 (priority preemption)")
        == "priority"
    )
    assert shrink_cause("shrunk to give 1 GPU(s) to job 3 of /b: ...") == "reclaim"


# -- the Grafana dashboard and the alert rules use only metrics that exist -------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC_NAME = re.compile(r"\b(?:schedulerd|process)_[a-z0-9_]+\b")


def exposed(text: str) -> set[str]:
    """Every name a scrape can show: families (even those with no sample yet) and the
    series names of their types."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana/schedulerd.json").read_text())
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exprs = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            exprs.append(target["expr"])
    for v in variables.values():
        if v["type"] == "query":
            exprs.append(v["definition"])
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    exprs = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["labels"]["severity"], rule
            assert rule["annotations"]["summary"], rule
            exprs.append(rule["expr"])
    return exprs


def test_dashboard_and_alerts_use_only_metrics_the_daemon_and_agents_expose(
    tmp_path: Path,
) -> None:
    http, agent_port = free_port(), free_port()
    cluster = Cluster(tmp_path, POLICY, daemon_args=("--http-listen", f"127.0.0.1:{http}"))
    node = f"m3-{os.getpid()}"
    try:
        cluster.start_daemon()
        cluster.start_agent(node, 1, extra_args=("--metrics-listen", f"127.0.0.1:{agent_port}"))
        cluster.wait_nodes_up(1)
        wait_for("/readyz", lambda: get(f"http://127.0.0.1:{http}/readyz")[0] == 200)
        names = exposed(get(f"http://127.0.0.1:{http}/metrics")[1])
        names |= exposed(get(f"http://127.0.0.1:{agent_port}/metrics")[1])
    finally:
        cluster.stop()
    for where, exprs in (("dashboard", dashboard_exprs()), ("alerts", alert_exprs())):
        used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
        assert used, where
        assert used <= names, f"{where} uses metrics nobody exposes: {sorted(used - names)}"
    # Every metric of ours is documented (a counter by its _total name).
    doc = (DEPLOY.parent / "docs/metrics.md").read_text()
    documented = set(METRIC_NAME.findall(doc))
    ours = {n for n in names if n.startswith("schedulerd_")}
    missing = {
        n
        for n in ours
        if n not in documented
        and not any(n == d + suffix for d in documented for suffix in ("_bucket", "_count", "_sum"))
        and n + "_total" not in documented
    }
    assert not missing, f"docs/metrics.md does not list: {sorted(missing)}"
    assert documented <= names | {"process_resident_memory_bytes", "process_open_fds"}, sorted(
        documented - names
    )
    # The rules the issue asks for are there.
    alerts = " ".join(alert_exprs())
    for needed in (
        "schedulerd_node_up",
        "schedulerd_scheduler_seconds_since_last_cycle",
        "schedulerd_consumer_below_entitlement_seconds",
        "schedulerd_consumer_grace_seconds",
        "schedulerd_api_requests_total",
    ):
        assert needed in alerts
