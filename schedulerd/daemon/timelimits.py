"""Jobs past their declared time limit (`--time`) are stopped, as Slurm stops them: a
limit is what lets a job backfill into GPUs held for a larger job's reservation
(docs/scheduling.md), so it must hold, or a job could claim a short one and delay
the reservation for good."""

from __future__ import annotations

from schedulerd.store import JobRecord, JobState


def overdue(jobs: list[JobRecord], now: float) -> list[JobRecord]:
    """Running jobs past their time limit that have not been asked to stop yet."""
    return [
        j
        for j in jobs
        if j.state is JobState.RUNNING
        and j.time_limit_s is not None
        and j.start_time is not None
        and now - j.start_time >= j.time_limit_s
        and not j.cancel_requested
    ]


def reason(job: JobRecord) -> str:
    return f"its time limit ({job.time_limit_s:g} s) ran out"
