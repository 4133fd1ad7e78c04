"""The running jobs' index kept between cycles (schedulerd/core/running.py): updated job by
job as jobs come, change and go, it must hold what one built from the jobs of now holds,
and JobsIndex must hand on every waiting job that came or went, whether the snapshot says
what changed (core.Changes) or not."""

from __future__ import annotations

import random

from schedulerd.core import (
    Changes,
    ConsumerPath,
    GpuSlot,
    Job,
    JobId,
    JobPhase,
    Node,
    NodeName,
    Snapshot,
)
from schedulerd.core.running import JobsIndex, RunningIndex


def _fields(index: RunningIndex) -> dict[str, object]:
    return dict(vars(index))


def _random_job(rng: random.Random, job_id: int) -> Job:
    running = rng.random() < 0.6
    held: tuple[GpuSlot, ...] = ()
    if running:
        # Some running jobs hold nothing (all their parts gone), some span nodes.
        slots = {
            GpuSlot(NodeName(f"n{rng.randrange(6)}"), rng.randrange(4))
            for _ in range(rng.choice([0, 1, 2, 4, 6]))
        }
        held = tuple(sorted(slots))
    stopping = running and rng.random() < 0.2
    releasing = held[: rng.randrange(len(held) + 1)] if running and rng.random() < 0.2 else ()
    gpus_min = rng.choice([1, 2])
    return Job(
        id=JobId(job_id),
        consumer=ConsumerPath(rng.choice(["/a", "/b", "/p/c"])),
        user=rng.choice(["u", "v"]),
        gpus_min=gpus_min,
        gpus_max=gpus_min + rng.choice([0, 0, 2]),
        priority=rng.choice([0, 5]),
        submit_seq=job_id,
        phase=JobPhase.RUNNING if running else JobPhase.PENDING,
        held=held,
        started_at=0.0 if running else None,
        releasing=releasing,
        stopping=stopping,
        time_limit_s=rng.choice([None, 60.0]),
        pool=rng.choice([None, None, "a100"]),
    )


def test_the_kept_index_is_the_index_built_from_the_jobs_of_now() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        kept = RunningIndex()
        now: dict[JobId, Job] = {}
        for step in range(200):
            job_id = JobId(rng.randrange(40))
            old = now.pop(job_id, None)
            if old is not None and old.phase is JobPhase.RUNNING:
                kept.remove(old)
            if rng.random() < 0.7:
                new = _random_job(rng, job_id)
                now[job_id] = new
                if new.phase is JobPhase.RUNNING:
                    kept.add(new)
            fresh = RunningIndex()
            for j in now.values():
                if j.phase is JobPhase.RUNNING:
                    fresh.add(j)
            assert _fields(kept) == _fields(fresh), (seed, step)


def _waiting_after(index: JobsIndex, waiting: dict[JobId, Job]) -> dict[JobId, Job]:
    for job, came in index.take_waiting():
        if came:
            waiting[job.id] = job
        else:
            assert waiting.pop(job.id) is job
    return waiting


def test_jobs_index_hands_on_every_waiting_job_with_or_without_changes() -> None:
    nodes = (Node(NodeName("n0"), (0, 1, 2, 3)),)
    for seed in range(30):
        rng = random.Random(seed)
        index = JobsIndex()
        waiting: dict[JobId, Job] = {}
        jobs: dict[JobId, Job] = {}
        next_id = 0
        for generation in range(30):
            changed: dict[JobId, Job | None] = {}
            for _ in range(rng.randrange(8)):
                if jobs and rng.random() < 0.6:
                    job_id = rng.choice(list(jobs))
                    if rng.random() < 0.3:
                        del jobs[job_id]
                        changed[job_id] = None
                    else:  # changes in its place
                        jobs[job_id] = changed[job_id] = _random_job(rng, job_id)
                else:  # a new job, after all the others (ids are never reused)
                    next_id += 1
                    jobs[JobId(next_id)] = _random_job(rng, next_id)
                    changed[JobId(next_id)] = jobs[JobId(next_id)]
            # The changes, listed in any order (the daemon's come from a set).
            listed = list(changed.items())
            rng.shuffle(listed)
            said = rng.random() < 0.7
            changes = Changes(generation, generation + 1, dict(listed)) if said else None
            index.update(Snapshot(nodes=nodes, jobs=tuple(jobs.values()), changes=changes))
            want = {i: j for i, j in jobs.items() if j.phase is not JobPhase.RUNNING}
            assert _waiting_after(index, waiting) == want
            running = {i: j for i, j in jobs.items() if j.phase is JobPhase.RUNNING}
            assert index.running.jobs == running
            asked: dict[str, int] = {}
            for j in jobs.values():
                if j.pool is not None:
                    asked[j.pool] = asked.get(j.pool, 0) + 1
            assert index.asked == asked
            # Its order is the snapshot's (GPUs on their way back are claimed in it).
            assert sorted(jobs, key=index.rank.__getitem__) == list(jobs)
