"""A worker that dies or stalls must not hang the others: they fail (exit non-zero) within
SCHEDULERD_ELASTIC_TIMEOUT instead of waiting forever (gloo's default is 30 minutes)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from elastic_harness import ElasticJob


def test_a_killed_worker_fails_the_others_at_once(tmp_path: Path) -> None:
    job = ElasticJob(tmp_path, steps=1_000_000, step_time=0.02, timeout_s=5.0)
    try:
        job.start(2)
        job.wait_for("two workers training", lambda r: job.last_step() >= 3, 60)
        t0 = time.monotonic()
        job.signal(0, signal.SIGKILL)  # rank 0, and the store's host
        code = job.wait_exit(1, job.timeout_s + 10)
        elapsed = time.monotonic() - t0
    finally:
        job.stop_all()
    assert code == 1, job.logs()
    assert elapsed < job.timeout_s, elapsed  # a closed connection is seen at once
    assert "Traceback" in job.workers[1].output()  # the error is in the log, not swallowed


def test_a_stalled_worker_fails_the_others_at_the_timeout(tmp_path: Path) -> None:
    job = ElasticJob(tmp_path, steps=1_000_000, step_time=0.02, timeout_s=3.0)
    try:
        job.start(2)
        job.wait_for("two workers training", lambda r: job.last_step() >= 3, 60)
        t0 = time.monotonic()
        job.signal(1, signal.SIGSTOP)  # alive, connected, silent
        code = job.wait_exit(0, job.timeout_s + 10)
        elapsed = time.monotonic() - t0
    finally:
        job.stop_all()
    assert code == 1, job.logs()
    assert job.timeout_s - 0.5 < elapsed < job.timeout_s + 5, elapsed
    assert "timed out" in job.workers[0].output().lower(), job.logs()
