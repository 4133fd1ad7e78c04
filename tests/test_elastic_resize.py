"""Elastic training in place, with real worker processes and gloo on the CPU, driven as the
agent drives them (docs/elastic.md): grow 2 -> 4 while the members keep training, joiners
released before admission, shrink 4 -> 2 by SIGUSR1, grow back to 3, stop the job by SIGTERM
(checkpoint), and resume it as a new attempt on another number of workers.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from elastic_harness import ElasticJob, by_step, check_trace, global_loss

TIMEOUT_S = 10.0  # SCHEDULERD_ELASTIC_TIMEOUT


def generations(records: list[dict]) -> list[tuple[int, int, list[int], float]]:
    """(first step, world, workers, longest survivor pause in ms) of each generation."""
    steps = by_step(records)
    out = []
    prev_workers: set[int] = set()
    prev_gen = -1
    for s in sorted(steps):
        recs = steps[s]
        gen = recs[0]["gen"]
        if gen != prev_gen:
            workers = {r["worker"] for r in recs}
            survivors = [r["sync_ms"] for r in recs if r["worker"] in prev_workers]
            out.append((s, recs[0]["world"], sorted(workers), max(survivors, default=0.0)))
            prev_workers, prev_gen = workers, gen
    return out


def test_grow_shrink_grow_stop_and_resume(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    job = ElasticJob(
        tmp_path / "attempt0",
        steps=1_000_000,  # ended by SIGTERM, then finished by the next attempt
        step_time=0.02,
        timeout_s=TIMEOUT_S,
        max_workers=4,
        extra_args=["--checkpoint", str(ckpt)],
    )
    job.workdir.mkdir()
    t_start = time.monotonic()
    try:
        w0, w1 = job.start(2)
        job.wait_for("two workers training", lambda r: job.last_step() >= 3, 60)

        # Grow 2 -> 4: the joiners take seconds to start (imports); the members train on.
        spawned_at_step = job.last_step()
        job.add_joiner()  # 2
        job.add_joiner()  # 3
        job.wait_for("world 4", lambda r: any(x["world"] == 4 for x in r), 60)

        # At the maximum (4), a joiner waits at the door: released there, it exits 0 at once;
        # so does one released while it is still starting (before it announced itself).
        # (A joiner that dies at the door: test_elastic_rendezvous.)
        j4, j5 = job.add_joiner(), job.add_joiner()
        time.sleep(2.0)  # past interpreter start-up, within `import torch` (seconds here)
        t_release = time.monotonic()
        job.release(j5.wid)
        assert job.wait_exit(j5.wid, 10) == 0, job.logs()
        starting_release_s = time.monotonic() - t_release
        job.wait_for_log(j4.wid, "waiting to be admitted", 60)
        t_release = time.monotonic()
        job.release(j4.wid)
        assert job.wait_exit(j4.wid, 5) == 0, job.logs()
        waiting_release_s = time.monotonic() - t_release

        # Shrink 4 -> 2: the released workers exit 0, the others go on.
        job.release(2)
        job.release(3)
        assert job.wait_exit(2, 30) == 0, job.logs()
        assert job.wait_exit(3, 30) == 0, job.logs()
        job.wait_for("world 2", lambda r: r[-1]["world"] == 2, 30)

        # Grow back to 3.
        j6 = job.add_joiner()
        job.wait_for("world 3 with worker 6", lambda r: _first(r, 6) < 10**9, 60)
        job.wait_for("a few steps at world 3", lambda r: job.last_step() >= _first(r, 6) + 5, 30)

        # Stop the job (preemption): everyone stops at the same boundary, worker 0 saves.
        for wid in (0, 1, 6):
            job.signal(wid, signal.SIGTERM)
        for wid in (0, 1, 6):
            assert job.wait_exit(wid, 30) == 143, job.logs()
        assert (ckpt / "checkpoint.pt").is_file()
    finally:
        job.stop_all()
    records = job.trace()
    stopped_at = max(r["step"] for r in records)

    # The next attempt, on 1 worker, resumes from the checkpoint and runs to the end.
    resumed = ElasticJob(
        tmp_path / "attempt1",
        steps=stopped_at + 10,
        step_time=0.0,
        timeout_s=TIMEOUT_S,
        max_workers=4,
        attempt=1,
        extra_args=["--checkpoint", str(ckpt)],
    )
    resumed.workdir.mkdir()
    try:
        resumed.start(1)
        assert resumed.wait_exit(0, 60) == 0, resumed.logs()
    finally:
        resumed.stop_all()
    records2 = resumed.trace()
    elapsed = time.monotonic() - t_start

    # Every step done exactly once, by a consistent membership, with identical parameters
    # on all ranks; one process per worker throughout.
    check_trace(records2, stopped_at + 10, first_step=stopped_at + 1)
    steps = check_trace(records, stopped_at)
    steps.update(by_step(records2))
    pids = {r["worker"]: r["pid"] for r in records}
    assert pids[0] == w0.pid and pids[1] == w1.pid and pids[6] == j6.pid
    assert {r["worker"] for r in records} == {0, 1, 2, 3, 6}, "4 or 5 got in"

    gens = generations(records)
    worlds = [g[1] for g in gens]
    assert worlds[0] == 2 and 4 in worlds and worlds[-1] == 3, gens
    assert gens[-1][2] == [0, 1, 6], gens
    i4 = worlds.index(4)
    # 4 -> 2: in one step, or in two when the two signals straddle a step boundary.
    i2 = worlds.index(2, i4)
    assert i2 - i4 in (1, 2) and all(set(g[2]) >= {0, 1} for g in gens[i4:i2]), gens
    # The members trained while the joiners started: admission came many steps later, and
    # did not make the members wait for the joiners' start-up.
    first4 = gens[i4][0]
    assert first4 > spawned_at_step + 10, gens
    grow_pauses = [g[3] for g in [*gens[1 : i4 + 1], gens[-1]]]
    assert max(grow_pauses) < 1500, gens

    # The loss goes on from where it was: no jump back towards the initial loss.
    initial = sum(global_loss(steps[s]) for s in (1, 2, 3)) / 3
    for first, *_ in [*gens[1:], (stopped_at + 1,)]:
        after = sum(global_loss(steps[s]) for s in range(first, first + 3)) / 3
        assert after < 0.5 * initial, (first, after, initial)

    print(
        f"\nelastic: {elapsed:.1f} s; release of a starting joiner "
        f"{starting_release_s * 1000:.0f} ms, of a waiting one {waiting_release_s * 1000:.0f} ms;"
        f"\ngenerations (first step, world, workers, longest survivor pause in ms): {gens}"
    )


def _first(records: list[dict], wid: int) -> int:
    return min((r["step"] for r in records if r["worker"] == wid), default=10**9)
