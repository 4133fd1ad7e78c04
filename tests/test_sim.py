"""The simulator: the real decide() on a virtual clock, the baselines, the measures."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from schedulerd.sim.cli import main
from schedulerd.sim.engine import Engine, Result, SimConfig
from schedulerd.sim.metrics import ClusterState, Recorder, jain, percentile
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
from schedulerd.sim.workload import SimJob, TraceError, Workload, backlog_scenario, load_philly

# --- measures ------------------------------------------------------------------


def test_jain_index_is_one_when_equal_and_one_over_n_when_one_has_all() -> None:
    assert jain([2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert jain([1.0, 0.0]) == pytest.approx(0.5)
    assert jain([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert math.isnan(percentile([], 50))


def test_recorder_integrates_piecewise_constant_states() -> None:
    rec = Recorder(["/a", "/b"], capacity=10, start=0.0, bin_s=5.0)
    # 0-10 s: /a holds 6 (entitled 5), /b holds 2 (entitled 5), both waiting.
    rec.set(ClusterState([6, 2], [5.0, 5.0], [True, True], demand=20, idle_beside_waiting=False))
    rec.advance(10.0)
    # 10-20 s: nothing wanted, nothing held.
    rec.set(ClusterState([0, 0], [0.0, 0.0], [False, False], demand=0, idle_beside_waiting=False))
    rec.advance(20.0)
    assert rec.span_s == 20.0
    assert rec.allocated_gpu_s == 80.0
    assert rec.wanted_gpu_s == 100.0  # min(capacity 10, demand 20) for 10 s
    assert rec.allocation_while_demand == pytest.approx(0.8)
    assert rec.fairness_error == pytest.approx((1 + 3) / 10)  # only while demand exists
    assert rec.jain_index == pytest.approx(jain([6 / 5, 2 / 5]))
    assert len(rec.series.allocation) == 4
    assert rec.series.allocation[0] == [30.0, 10.0]


# --- the engine, on small hand-checked cases ----------------------------------


def _run(
    jobs: list[SimJob],
    scheduler_name: str,
    nodes: int = 1,
    weights: dict[str, float] | None = None,
    owned_fraction: float = 0.0,
    min_runtime_s: float = 0.0,
    config: SimConfig | None = None,
) -> Result:
    wl = Workload("test", tuple(jobs))
    weights = weights or split_weights(wl.consumers, Split.EQUAL, {})
    cluster = ClusterSpec(nodes=nodes, gpus_per_node=8)
    policy = build_policy(
        weights,
        cluster.gpus,
        PolicySettings(owned_fraction=owned_fraction, min_runtime_s=min_runtime_s, grace_s=30.0),
    )
    scheduler: Scheduler
    if scheduler_name == "schedulerd":
        scheduler = FairShare(policy, cluster.gpus)
    elif scheduler_name == "fifo":
        scheduler = Fifo(cluster.gpus)
    else:
        scheduler = StaticPartitions(partition(cluster.gpus, weights))
    return Engine(wl, cluster.build(), policy, scheduler, config or SimConfig(interval_s=1.0)).run()


def _job(i: int, consumer: str, at: float, run_s: float, gpus: int, gpus_max: int = 0) -> SimJob:
    return SimJob(i, consumer, at, run_s, gpus, gpus_max or gpus)


def test_fifo_blocks_behind_its_head_and_schedulerd_reserves_then_backfills() -> None:
    # One node of 8. A (4 GPUs, 100 s) runs; B needs all 8 and must wait for A;
    # C needs 1 and arrives behind B.
    jobs = [_job(0, "/x", 0, 100, 4), _job(1, "/x", 1, 10, 8), _job(2, "/x", 2, 10, 1)]
    fifo = _run(jobs, "fifo")
    ours = _run(jobs, "schedulerd")
    # FIFO: C waits behind B beside 4 idle GPUs from the cycle at t=2 until A ends.
    assert fifo.recorder.idle_beside_waiting_s == pytest.approx(98.0)
    assert fifo.outcomes[2].first_start == 110.0  # after B (100..110)
    # schedulerd: the node is reserved for B (its free GPUs held, not idle beside C):
    # C, with no time limit, could delay B, so it waits too.
    assert ours.recorder.idle_beside_waiting_s == 0.0
    assert ours.outcomes[1].first_start == 100.0
    assert ours.outcomes[2].first_start == 110.0
    # With time limits (A: 150 s, C: 20 s), C ends before B could start: it backfills.
    timed = [
        replace(jobs[0], time_limit_s=150.0),
        jobs[1],
        replace(jobs[2], time_limit_s=20.0),
    ]
    ours = _run(timed, "schedulerd")
    assert ours.outcomes[2].first_start == 2.0
    assert ours.outcomes[1].first_start == 100.0  # B is not delayed
    assert [o.end for o in ours.outcomes] == [100.0, 110.0, 12.0]


def test_backlog_with_shares_1_to_3_splits_the_cluster_1_to_3() -> None:
    wl = backlog_scenario((1.0, 3.0), jobs_per_consumer=200, duration_s=20.0)
    weights = {"/team0": 0.25, "/team1": 0.75}
    runs = {
        name: _run(list(wl.jobs), name, nodes=2, weights=weights)
        for name in ("schedulerd", "fifo", "static")
    }
    ours, fifo, static = (summarize(runs[n]) for n in ("schedulerd", "fifo", "static"))
    # While both are backlogged, team1 holds 12 of 16 GPUs and team0 4.
    first_bin = runs["schedulerd"].recorder.series.allocation[1]
    assert first_bin[1] == pytest.approx(3 * first_bin[0])
    assert ours.fairness_error < 0.02
    assert ours.allocation_while_demand > 0.97
    assert ours.idle_beside_waiting_min == 0
    # FIFO keeps the cluster busy but ignores the shares.
    assert fifo.allocation_while_demand > 0.97
    assert fifo.fairness_error > 5 * ours.fairness_error
    # Static partitions keep team1's 12 GPUs idle once its backlog is done.
    assert static.idle_beside_waiting_min > 0
    assert static.completion_mean_s > ours.completion_mean_s
    assert ours.completed == fifo.completed == static.completed == 400


def test_owner_reclaims_by_preemption_and_the_victim_resumes_its_work() -> None:
    # /b owns 4 GPUs and runs two 4-GPU jobs of 2,000 s (one on /a's 4, borrowed);
    # /a submits at t=1000. schedulerd preempts /b's newer job (grace 30 s), /a
    # runs, and /b's job resumes with the work it checkpointed.
    jobs = [_job(0, "/b", 0, 2000, 4), _job(1, "/b", 1, 2000, 4), _job(2, "/a", 1000, 100, 4)]
    weights = {"/a": 0.5, "/b": 0.5}
    r = _run(jobs, "schedulerd", weights=weights, owned_fraction=1.0)
    older, newer, owner = r.outcomes
    assert r.preemptions == 1 and newer.preemptions == 1 and older.preemptions == 0
    assert r.preemptions_by_cause == {"reclaim": 1}
    assert owner.first_start == 1030.0  # the victim's 30 s of grace
    assert older.end == 2000.0
    # The victim ran 999 s (t=1..1000); it resumes when /a's job ends at 1130.
    assert newer.end == pytest.approx(1130.0 + 1001.0)
    # Started over instead (no checkpoint), it redoes all 2,000 s.
    lost = _run(
        jobs,
        "schedulerd",
        weights=weights,
        owned_fraction=1.0,
        config=SimConfig(interval_s=1.0, restart_lost=True),
    )
    assert lost.outcomes[1].end == pytest.approx(1130.0 + 2000.0)


def test_min_runtime_delays_reclaim_until_the_victim_may_be_preempted() -> None:
    jobs = [_job(0, "/b", 0, 5000, 4), _job(1, "/b", 0, 5000, 4), _job(2, "/a", 100, 100, 4)]
    r = _run(
        jobs, "schedulerd", weights={"/a": 0.5, "/b": 0.5}, owned_fraction=1.0, min_runtime_s=600
    )
    # Nothing happens at t=100; the cycle woken at t=600 preempts, 30 s of grace.
    assert r.outcomes[2].first_start == 630.0


def test_reclaim_shrinks_an_elastic_borrower_instead_of_preempting_it() -> None:
    # /b's elastic job (2..8 GPUs) grows over the whole node; /a's owner job
    # arrives: /b shrinks and keeps running.
    jobs = [_job(0, "/b", 0, 4000, 2, 8), _job(1, "/a", 500, 100, 4)]
    r = _run(jobs, "schedulerd", weights={"/a": 0.5, "/b": 0.5}, owned_fraction=1.0)
    assert r.preemptions == 0
    assert r.shrinks >= 1 and r.grows >= 1
    assert r.outcomes[0].preemptions == 0
    # The shrink hands its GPUs back after resize_s (2 s): /a starts at once.
    assert r.outcomes[1].first_start == pytest.approx(502.0)
    # /b worked faster while it held 8 GPUs: it ends well before 4,000 s.
    assert r.outcomes[0].end is not None and r.outcomes[0].end < 2000


def test_static_partitions_refuse_jobs_larger_than_the_partition() -> None:
    jobs = [_job(0, "/a", 0, 10, 12), _job(1, "/b", 0, 10, 4)]
    r = _run(jobs, "static", nodes=2, weights={"/a": 0.5, "/b": 0.5})
    assert r.outcomes[0].refused and not r.outcomes[1].refused
    ours = _run(jobs, "schedulerd", nodes=2, weights={"/a": 0.5, "/b": 0.5})
    assert not ours.outcomes[0].refused and ours.outcomes[0].end == 10.0


# --- workloads -----------------------------------------------------------------

PHILLY_HEAD = "timestamp,duration,num_gpus,gpu_time,cluster\n"


def test_philly_loader_sorts_windows_and_names_consumers(tmp_path: Path) -> None:
    trace = tmp_path / "philly.csv"
    trace.write_text(
        PHILLY_HEAD
        + "2017-10-02 00:00:10,50.0,2,100.0,bbb\n"
        + "2017-10-01 00:00:00,10.0,1,10.0,aaa\n"
        + "2017-10-05 00:00:00,10.0,1,10.0,aaa\n"
    )
    wl = load_philly(trace)
    assert [(j.consumer, j.submit_s, j.gpus_min) for j in wl.jobs] == [
        ("/aaa", 0.0, 1),
        ("/bbb", 86410.0, 2),
        ("/aaa", 4 * 86400.0, 1),
    ]
    assert wl.gpu_time_by_consumer() == {"/aaa": 20.0, "/bbb": 100.0}
    assert len(load_philly(trace, days=2).jobs) == 2


def test_philly_loader_names_the_bad_line(tmp_path: Path) -> None:
    trace = tmp_path / "philly.csv"
    trace.write_text(PHILLY_HEAD + "2017-10-01 00:00:00,10.0,1,10.0,aaa\n2017-10-01,x,1,1,a\n")
    with pytest.raises(TraceError, match=r"philly.csv:3: duration/num_gpus"):
        load_philly(trace)


def test_partition_sums_to_the_cluster() -> None:
    weights = split_weights(["/a", "/b", "/c"], Split.GPU_TIME, {"/a": 1, "/b": 1, "/c": 1})
    assert sum(partition(100, weights).values()) == 100
    assert partition(10, {"/a": 0.24, "/b": 0.76}) == {"/a": 2, "/b": 8}  # largest remainder


# --- the command ---------------------------------------------------------------


def test_command_prints_the_table_and_writes_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "backlog",
            "--gpus",
            "16",
            "--jobs-per-consumer",
            "50",
            "--duration",
            "20",
            "--interval",
            "1",
            "--plots",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| measure | schedulerd | static partitions | FIFO |" in out
    for name in ("allocation.png", "wait_cdf.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_command_reports_a_missing_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["philly", "--trace", "/nonexistent/philly.csv"]) == 2
    assert "/nonexistent/philly.csv" in capsys.readouterr().err


def test_table_has_one_column_per_run() -> None:
    r = _run([_job(0, "/x", 0, 10, 1)], "fifo")
    text = table([summarize(r), summarize(r)])
    assert text.splitlines()[0] == "| measure | FIFO | FIFO |"


def test_a_run_stops_at_until_and_counts_what_is_unfinished() -> None:
    jobs = [_job(0, "/x", 0, 10 * 86400, 8), _job(1, "/x", 10, 100, 8)]
    r = _run(jobs, "schedulerd", config=SimConfig(interval_s=1.0, until_s=86400.0))
    assert r.unfinished == 2
    assert r.virtual_s == 86400.0
    assert r.recorder.allocated_gpu_s == 8 * 86400.0


def test_an_interval_that_is_not_exact_in_binary_does_not_stall_the_clock() -> None:
    # With a 0.3 s tick the borrower starts at the tick 0.6, so it may be preempted
    # from 60.6, and ceil(60.6 / 0.3) * 0.3 is 60.599999...: the run once repeated
    # a cycle at that instant forever, waiting for min_runtime to run out.
    jobs = [_job(0, "/b", 0.4, 4000, 4), _job(1, "/b", 0.4, 4000, 4), _job(2, "/a", 10, 100, 4)]
    r = _run(
        jobs,
        "schedulerd",
        weights={"/a": 0.5, "/b": 0.5},
        owned_fraction=1.0,
        min_runtime_s=60,
        config=SimConfig(interval_s=0.3),
    )
    assert r.preemptions == 1
    start = r.outcomes[2].first_start
    assert start is not None and 60.6 + 30 <= start < 60.6 + 30 + 1


def test_an_overloaded_consumer_starts_every_8_gpu_job_among_its_1_gpu_ones() -> None:
    """No starvation (docs/scheduling.md, reservations): 32 GPUs; one consumer submits a
    1-GPU job of 30-90 s every second (about twice what the cluster serves) and an 8-GPU
    job every 100 s. Without reservations each GPU that frees up goes at once to a 1-GPU job and
    no node is ever whole; with them, every 8-GPU job starts, each within minutes."""
    jobs: list[SimJob] = []
    for t in range(600):
        # 30..90 s, staggered: GPUs free up one at a time, never a whole node at once.
        jobs.append(SimJob(len(jobs), "/x", float(t), 30.0 + (t * 37) % 61, 1, 1))
        if t % 100 == 10:
            jobs.append(SimJob(len(jobs), "/x", float(t), 100.0, 8, 8))
    result = _run(jobs, "schedulerd", nodes=4, config=SimConfig(until_s=1500.0))
    large = [o for o in result.outcomes if o.spec.gpus_min == 8]
    assert len(large) == 6
    waits = [o.first_start - o.spec.submit_s for o in large if o.first_start is not None]
    assert len(waits) == 6, [o.first_start for o in large]
    # The queue is FIFO and grows: everyone waits longer as the run goes on. An 8-GPU
    # job waits about as long as the 1-GPU jobs submitted with it, not for ever.
    small = {o.spec.submit_s: o for o in result.outcomes if o.spec.gpus_min == 1}
    for o, wait in zip(large, waits, strict=True):
        peer = small[o.spec.submit_s]
        assert peer.first_start is not None
        assert wait <= 2 * (peer.first_start - peer.spec.submit_s) + 120.0, (wait, peer)


def test_the_simulator_keeps_usage_with_the_daemons_function() -> None:
    """Decayed usage, once (core/usage.py): the simulator's equals the closed form the
    daemon's is tested against (test_daemon_usage.py), whatever its cycles were."""
    from schedulerd.core import Order, decay_usage

    wl = Workload("usage", (SimJob(0, "/x", 0.0, 100.0, 2, 2), SimJob(1, "/x", 300.0, 10.0, 1, 1)))
    weights = split_weights(wl.consumers, Split.EQUAL, {})
    cluster = ClusterSpec(nodes=1, gpus_per_node=8)
    policy = build_policy(weights, cluster.gpus, PolicySettings(grace_s=30.0))
    fair = {p: replace(c, order=Order.FAIRSHARE) for p, c in policy.consumers.items()}
    policy = replace(policy, consumers=fair)  # the order that reads usage
    engine = Engine(wl, cluster.build(), policy, FairShare(policy, 8), SimConfig(interval_s=1.0))
    result = engine.run()
    first, second = result.outcomes
    assert first.first_start is not None and first.end is not None
    assert second.first_start is not None and second.end is not None
    h = policy.usage_half_life_s
    want = decay_usage({}, {"k": 2}, first.end - first.first_start, h)
    want = decay_usage(want, {}, second.first_start - first.end, h)
    want = decay_usage(want, {"k": 1}, second.end - second.first_start, h)
    want = decay_usage(want, {}, engine.usage_at - second.end, h)
    (got,) = engine.usage.values()
    assert got == pytest.approx(want["k"], rel=1e-9)


def test_a_job_ends_at_its_time_limit_as_the_daemon_stops_it() -> None:
    jobs = [replace(_job(0, "/x", 0, 300, 1), time_limit_s=20.0)]
    (outcome,) = _run(jobs, "schedulerd").outcomes
    assert outcome.first_start is not None and outcome.end == outcome.first_start + 20.0


def test_gpu_time_wanted_while_gpus_sat_free_counts_fragmentation() -> None:
    # Two nodes of 8. Two 6-GPU jobs (1,000 s) leave 2 + 2 GPUs free; an 8-GPU job
    # arriving at 10 s fits on neither node. The smallest waiting job never fits, so
    # "idle beside a waiting job that fit" reads 0, but 4 free GPUs sat beside 8
    # wanted from the cycle at 10 s until the 6-GPU jobs end at 1,000 s.
    jobs = [_job(0, "/x", 0, 1000, 6), _job(1, "/x", 0, 1000, 6), _job(2, "/x", 10, 100, 8)]
    fifo = _run(jobs, "fifo", nodes=2)
    assert fifo.recorder.idle_beside_waiting_s == 0.0
    assert fifo.recorder.wanted_while_free_gpu_s == pytest.approx(4 * 990.0)
    s = summarize(fifo)
    assert s.wanted_while_free_gpu_h == pytest.approx(4 * 990.0 / 3600)
    assert s.wanted_while_free_share == pytest.approx(4 * 990.0 / fifo.recorder.wanted_gpu_s)
    assert "| GPU-hours waiting jobs wanted while GPUs sat free (share of wanted) | 1 (" in table(
        [s]
    )
    # schedulerd reserves one node for the 8-GPU job and holds its 2 free GPUs: held
    # GPUs do not count, the other node's 2 do.
    ours = _run(jobs, "schedulerd", nodes=2)
    assert ours.outcomes[2].first_start == 1000.0
    assert ours.recorder.wanted_while_free_gpu_s == pytest.approx(2 * 990.0)


def test_gpu_time_wanted_while_free_is_capped_by_what_waiting_jobs_want() -> None:
    # One node of 8: a 4-GPU job runs 100 s and an 8-GPU job waits beside 4 free
    # GPUs; after it, a 2-GPU job waits behind the 8-GPU one (FIFO blocks) beside
    # 8 free GPUs: min(free, wanted) counts only what the waiting jobs want.
    jobs = [_job(0, "/x", 0, 100, 4), _job(1, "/x", 1, 10, 8)]
    fifo = _run(jobs, "fifo")
    assert fifo.recorder.wanted_while_free_gpu_s == pytest.approx(4 * 99.0)
    r = Recorder(["/a"], capacity=8, start=0.0, bin_s=5.0)
    r.set(
        ClusterState([2], [8.0], [True], demand=5, idle_beside_waiting=False, wanted_while_free=3)
    )
    r.advance(10.0)
    assert r.wanted_while_free_gpu_s == 30.0
