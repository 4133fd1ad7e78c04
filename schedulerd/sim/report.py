"""A run's numbers, and the side-by-side table of several runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from schedulerd.sim.engine import Outcome, Result
from schedulerd.sim.metrics import percentile


@dataclass(frozen=True)
class Summary:
    scheduler: str
    jobs: int
    refused: int
    completed: int
    unfinished: int
    allocation_while_demand: float
    idle_beside_waiting_min: float
    # GPU-time waiting jobs wanted while GPUs sat free, not held (fragmentation),
    # and its share of the GPU-time wanted (∫ min(capacity, demand) dt).
    wanted_while_free_gpu_h: float
    wanted_while_free_share: float
    fairness_error: float
    jain: float
    contended_share: float  # fraction of the time >= 2 consumers were backlogged
    wait_mean_s: float
    wait_p95_s: float
    # Mean wait per job-size class (SIZE_CLASSES): a large class far above the small
    # ones is starvation that the overall mean hides (docs/scheduling.md, reservations).
    wait_by_size_s: tuple[float, ...]
    completion_mean_s: float
    completion_p95_s: float
    preemptions: int
    preemptions_by_cause: dict[str, int]
    jobs_preempted: int  # jobs preempted at least once
    most_preemptions: int  # of any one job (docs/scheduling.md, bounded disruption)
    shrinks: int
    cycles: int
    cycle_mean_ms: float
    cycle_p99_ms: float
    cycle_max_ms: float
    virtual_days: float
    wall_s: float

    @property
    def speedup(self) -> float:
        return self.virtual_days * 86400 / self.wall_s if self.wall_s else math.inf


def summarize(result: Result) -> Summary:
    rec = result.recorder
    started = [o for o in result.outcomes if o.first_start is not None]
    waits = sorted(o.first_start - o.spec.submit_s for o in started if o.first_start is not None)
    done = sorted(o.end - o.spec.submit_s for o in result.outcomes if o.end is not None)
    cycles_ms = sorted(c * 1000 for c in result.cycle_s)
    return Summary(
        scheduler=result.scheduler,
        jobs=len(result.outcomes),
        refused=sum(1 for o in result.outcomes if o.refused),
        completed=len(done),
        unfinished=result.unfinished,
        allocation_while_demand=rec.allocation_while_demand,
        idle_beside_waiting_min=rec.idle_beside_waiting_s / 60,
        wanted_while_free_gpu_h=rec.wanted_while_free_gpu_s / 3600,
        wanted_while_free_share=rec.wanted_while_free_share,
        fairness_error=rec.fairness_error,
        jain=rec.jain_index,
        contended_share=rec.contended_s / rec.span_s if rec.span_s else math.nan,
        wait_mean_s=statistics.fmean(waits) if waits else math.nan,
        wait_p95_s=percentile(waits, 95),
        wait_by_size_s=_waits_by_size(started),
        completion_mean_s=statistics.fmean(done) if done else math.nan,
        completion_p95_s=percentile(done, 95),
        preemptions=result.preemptions,
        preemptions_by_cause=dict(result.preemptions_by_cause),
        jobs_preempted=sum(1 for o in result.outcomes if o.preemptions),
        most_preemptions=max((o.preemptions for o in result.outcomes), default=0),
        shrinks=result.shrinks,
        cycles=len(cycles_ms),
        cycle_mean_ms=statistics.fmean(cycles_ms) if cycles_ms else math.nan,
        cycle_p99_ms=percentile(cycles_ms, 99),
        cycle_max_ms=cycles_ms[-1] if cycles_ms else math.nan,
        virtual_days=result.virtual_s / 86400,
        wall_s=result.wall_s,
    )


SIZE_CLASSES = ((1, 1), (2, 4), (5, 8), (9, 1_000_000))  # GPUs: 1, 2-4, 5-8, 9+


def _waits_by_size(started: list[Outcome]) -> tuple[float, ...]:
    out = []
    for low, high in SIZE_CLASSES:
        waits = [
            o.first_start - o.spec.submit_s
            for o in started
            if o.first_start is not None and low <= o.spec.gpus_min <= high
        ]
        out.append(statistics.fmean(waits) if waits else math.nan)
    return tuple(out)


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _num(x: float, digits: int = 3) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


ROWS: tuple[tuple[str, str], ...] = (
    ("jobs completed / refused / unfinished", "jobs"),
    ("GPU allocation while demand exists", "alloc"),
    ("minutes idle GPUs sat beside a waiting job that fit", "idle"),
    ("GPU-hours waiting jobs wanted while GPUs sat free (share of wanted)", "frag"),
    ("fairness error (Σ abs(alloc − entitlement) / cluster)", "error"),
    ("Jain's index over backlogged consumers", "jain"),
    ("wait, mean / p95", "wait"),
    ("mean wait of 1 / 2-4 / 5-8 / 9+ GPU jobs", "wait_size"),
    ("completion time, mean / p95", "jct"),
    ("preemptions / elastic shrinks", "preempt"),
    ("preemptions by cause", "causes"),
    ("jobs preempted; most preemptions of one job", "victims"),
    ("cycles; decision time mean / p99 / max", "cycles"),
    ("simulated days; wall time; speed-up", "speed"),
)


def _cell(s: Summary, key: str) -> str:
    match key:
        case "jobs":
            return f"{s.completed:,} / {s.refused:,} / {s.unfinished:,}"
        case "alloc":
            alloc = s.allocation_while_demand
            return "-" if math.isnan(alloc) else f"{alloc:.1%}"
        case "idle":
            return f"{s.idle_beside_waiting_min:,.0f}"
        case "frag":
            share = s.wanted_while_free_share
            pct = "-" if math.isnan(share) else f"{share:.1%}"
            return f"{s.wanted_while_free_gpu_h:,.0f} ({pct})"
        case "error":
            return _num(s.fairness_error)
        case "jain":
            return f"{_num(s.jain)} ({s.contended_share:.0%} of the time)"
        case "wait":
            return f"{_duration(s.wait_mean_s)} / {_duration(s.wait_p95_s)}"
        case "wait_size":
            return " / ".join(_duration(w) for w in s.wait_by_size_s)
        case "jct":
            return f"{_duration(s.completion_mean_s)} / {_duration(s.completion_p95_s)}"
        case "preempt":
            return f"{s.preemptions:,} / {s.shrinks:,}"
        case "causes":
            parts = [f"{cause} {n:,}" for cause, n in sorted(s.preemptions_by_cause.items())]
            return ", ".join(parts) or "-"
        case "victims":
            return f"{s.jobs_preempted:,}; {s.most_preemptions:,}"
        case "cycles":
            return (
                f"{s.cycles:,}; {_num(s.cycle_mean_ms, 1)} / {_num(s.cycle_p99_ms, 1)} / "
                f"{_num(s.cycle_max_ms, 1)} ms"
            )
        case "speed":
            return f"{s.virtual_days:.1f}; {s.wall_s:.0f} s; {s.speedup:,.0f}×"
    raise KeyError(key)


def table(summaries: Sequence[Summary]) -> str:
    """A Markdown table: one row per measure, one column per scheduler."""
    lines = [
        "| measure | " + " | ".join(s.scheduler for s in summaries) + " |",
        "| --- |" + " ---: |" * len(summaries),
    ]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(s, key) for s in summaries) + " |")
    return "\n".join(lines)
