"""What the simulator replays: jobs with a submit time, a size and a run time.

Two sources: the Philly trace (../shared/traces/philly/philly.csv: one row per job,
each `cluster` value a consumer) and seeded synthetic scenarios.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PHILLY_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PHILLY_COLUMNS = ("timestamp", "duration", "num_gpus", "cluster")


@dataclass(frozen=True)
class SimJob:
    """One job of a workload. `duration_s` is its run time on `gpus_min` GPUs; an
    elastic job (gpus_max > gpus_min) runs faster on more, in proportion."""

    id: int
    consumer: str  # leaf path, e.g. "/6214e9"
    submit_s: float  # seconds since the workload's origin
    duration_s: float
    gpus_min: int
    gpus_max: int
    user: str = "user"
    priority: int = 0
    # Its declared time limit (`--time`), if any: it may backfill into GPUs held for a
    # reservation (core/reservation.py). Traces have none.
    time_limit_s: float | None = None
    # The pool or GPU type it asks for (docs/pools.md); None: any.
    pool: str | None = None

    @property
    def work(self) -> float:
        """GPU-seconds the job must run."""
        return self.duration_s * self.gpus_min


@dataclass(frozen=True)
class Workload:
    name: str
    jobs: tuple[SimJob, ...]  # sorted by submit time; jobs[i].id == i
    origin: datetime | None = None  # wall-clock time of second 0 (traces only)

    def __post_init__(self) -> None:
        for i, j in enumerate(self.jobs):
            if j.id != i:
                raise ValueError(f"job {i} of {self.name} has id {j.id}; ids must be positions")

    @property
    def consumers(self) -> tuple[str, ...]:
        return tuple(sorted({j.consumer for j in self.jobs}))

    def gpu_time_by_consumer(self) -> dict[str, float]:
        out: dict[str, float] = dict.fromkeys(self.consumers, 0.0)
        for j in self.jobs:
            out[j.consumer] += j.work
        return out


class TraceError(ValueError):
    """A trace file that cannot be read, with its path and line."""


def load_philly(
    path: Path,
    start: datetime | None = None,
    days: float | None = None,
) -> Workload:
    """The Philly trace's jobs submitted in [start, start + days), origin at the
    first of them. Rows are not sorted in the file; the result is."""
    rows: list[tuple[datetime, float, int, str]] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PHILLY_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise TraceError(f"{path}:1: missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            rows.append(_philly_row(path, line, row))
    end = start.timestamp() + days * 86400 if start is not None and days is not None else None
    if start is None and days is not None and rows:
        first = min(r[0] for r in rows)
        end = first.timestamp() + days * 86400
    picked = [
        r
        for r in rows
        if (start is None or r[0] >= start) and (end is None or r[0].timestamp() < end)
    ]
    picked.sort(key=lambda r: (r[0], r[3]))
    if not picked:
        raise TraceError(f"{path}: no jobs in the chosen window")
    origin = picked[0][0]
    jobs = tuple(
        SimJob(
            id=i,
            consumer="/" + cluster,
            submit_s=(ts - origin).total_seconds(),
            duration_s=duration,
            gpus_min=gpus,
            gpus_max=gpus,
        )
        for i, (ts, duration, gpus, cluster) in enumerate(picked)
    )
    return Workload(name=f"philly:{path.name}", jobs=jobs, origin=origin)


def _philly_row(path: Path, line: int, row: dict[str, str]) -> tuple[datetime, float, int, str]:
    try:
        ts = datetime.fromisoformat(row["timestamp"])
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except ValueError:
        raise TraceError(f"{path}:{line}: timestamp: not {PHILLY_TIME_FORMAT}") from None
    try:
        duration = float(row["duration"])
        gpus = int(row["num_gpus"])
    except ValueError:
        raise TraceError(f"{path}:{line}: duration/num_gpus: not a number") from None
    if not math.isfinite(duration) or duration <= 0:
        raise TraceError(f"{path}:{line}: duration: must be > 0, got {row['duration']}")
    if gpus < 1:
        raise TraceError(f"{path}:{line}: num_gpus: must be >= 1, got {gpus}")
    cluster = row["cluster"].strip().lower()
    if not cluster or "/" in cluster:
        raise TraceError(f"{path}:{line}: cluster: must be a plain name, got {row['cluster']!r}")
    return ts, duration, gpus, cluster


# --- synthetic scenarios -------------------------------------------------------


def backlog_scenario(
    shares: Sequence[float] = (1.0, 3.0),
    jobs_per_consumer: int = 2000,
    duration_s: float = 30.0,
) -> Workload:
    """Every consumer submits a backlog of one-GPU jobs at time 0 (the workload of
    the side-by-side with Slurm): the split of the cluster should follow the shares."""
    # Interleaved, one job per consumer per millisecond, as parallel submitters would.
    jobs = tuple(
        SimJob(
            id=k * len(shares) + c,
            consumer=f"/team{c}",
            submit_s=k * 1e-3,
            duration_s=duration_s,
            gpus_min=1,
            gpus_max=1,
        )
        for k in range(jobs_per_consumer)
        for c in range(len(shares))
    )
    return Workload(name="backlog", jobs=jobs)


# Job sizes and their weights, as in the Philly trace (93% one GPU).
PHILLY_SIZES = ((1, 0.93), (2, 0.022), (4, 0.023), (8, 0.02), (16, 0.004), (32, 0.001))


def mixed_scenario(
    consumers: int = 6,
    gpus: int = 256,
    load: float = 1.2,
    hours: float = 48.0,
    elastic_fraction: float = 0.0,
    seed: int = 1,
) -> Workload:
    """Poisson arrivals per consumer, Philly-like sizes, log-normal run times
    (median 30 min), offered `load` times the cluster; consumers' rates differ
    (consumer i submits (i + 1) times as much as consumer 0) and come in daily
    waves so that owners return to find their GPUs lent out. A fraction of jobs is
    elastic: min its size, max twice that."""
    rng = random.Random(seed)
    weights = [i + 1 for i in range(consumers)]
    mean_work = sum(s * w for s, w in PHILLY_SIZES) * math.exp(math.log(1800) + 0.5 * 1.2**2)
    total_rate = load * gpus / mean_work  # jobs per second over the whole cluster
    span = hours * 3600
    jobs: list[SimJob] = []
    for c, w in enumerate(weights):
        rate = total_rate * w / sum(weights)
        phase = rng.uniform(0, 2 * math.pi)
        t = 0.0
        while True:
            # Thinning gives a rate that swings ±90% over a day.
            t += rng.expovariate(rate * 1.9)
            if t >= span:
                break
            wave = 1 + 0.9 * math.sin(2 * math.pi * t / 86400 + phase)
            if rng.random() * 1.9 > wave:
                continue
            size = _pick(rng, PHILLY_SIZES)
            elastic = rng.random() < elastic_fraction
            jobs.append(
                SimJob(
                    id=0,
                    consumer=f"/team{c}",
                    submit_s=t,
                    duration_s=max(10.0, rng.lognormvariate(math.log(1800), 1.2)),
                    gpus_min=size,
                    gpus_max=size * 2 if elastic else size,
                )
            )
    jobs.sort(key=lambda j: (j.submit_s, j.consumer))
    ordered = tuple(
        SimJob(
            id=i,
            consumer=j.consumer,
            submit_s=j.submit_s,
            duration_s=j.duration_s,
            gpus_min=j.gpus_min,
            gpus_max=j.gpus_max,
        )
        for i, j in enumerate(jobs)
    )
    return Workload(name=f"mixed(seed={seed})", jobs=ordered)


def _pick(rng: random.Random, weighted: Iterable[tuple[int, float]]) -> int:
    items = list(weighted)
    x = rng.random() * sum(w for _, w in items)
    for value, w in items:
        x -= w
        if x <= 0:
            return value
    return items[-1][0]
