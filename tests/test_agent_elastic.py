"""The runner's elastic parts: a worker process per GPU, released one by one with
SIGUSR1 (SIGKILL after the grace), joiners added in place (docs/elastic.md)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from agent_helpers import job_spec

from agent.model import ElasticSpec, JobSpec, Phase, ResizeRequest, StopRequest
from agent.runner import Runner

# Writes its environment, then waits; leaves with 0 on SIGUSR1 unless told to ignore it.
WORKER = """
import json, os, signal, sys, time
out = os.path.join(sys.argv[1], "worker-" + os.environ["SCHEDULERD_WORKER_ID"] + ".json")
keys = [k for k in os.environ if k.startswith(("SCHEDULERD_", "CUDA_VISIBLE"))]
with open(out + ".tmp", "w") as f:  # atomic: the test reads it as soon as it exists
    json.dump({k: os.environ[k] for k in keys}, f)
os.replace(out + ".tmp", out)
if os.environ.get("IGNORE_RELEASE"):
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
else:
    signal.signal(signal.SIGUSR1, lambda *a: sys.exit(0))
while True:
    time.sleep(0.05)
"""


def _spec(tmp: Path, env: dict[str, str] | None = None) -> JobSpec:
    return job_spec(
        job_id=7,
        attempt=0,
        command=(sys.executable, "-c", WORKER, str(tmp)),
        env=env or {},
        gpu_indices=(0, 1, 2),
        elastic=ElasticSpec("127.0.0.1:29555", 1, 4, (0, 1, 2), ((0, 0), (1, 1), (2, 2))),
    )


def _wait(runner: Runner, until, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        seen += runner.poll()
        if until(seen):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"timed out; reports: {seen}")


def test_one_worker_per_gpu_with_the_contract_environment(tmp_path: Path) -> None:
    runner = Runner(tmp_path / "state", "n1")
    runner.start(_spec(tmp_path))
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("worker-*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    envs = {
        int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in tmp_path.glob("worker-*.json")
    }
    assert sorted(envs) == [0, 1, 2]
    for wid, env in envs.items():
        assert env["CUDA_VISIBLE_DEVICES"] == str(wid)
        assert env["SCHEDULERD_ELASTIC"] == "1" and env["SCHEDULERD_ELASTIC_JOIN"] == "0"
        assert env["SCHEDULERD_ELASTIC_STORE"] == "127.0.0.1:29555"
        assert env["SCHEDULERD_ELASTIC_INITIAL"] == "0,1,2"
        assert env["SCHEDULERD_ELASTIC_MIN"] == "1" and env["SCHEDULERD_ELASTIC_MAX"] == "4"
    runner.stop(StopRequest(7, 0, 0.0))
    _wait(runner, lambda seen: any(r.phase is Phase.EXITED for r in seen))


def test_release_frees_one_gpu_and_a_joiner_takes_another(tmp_path: Path) -> None:
    runner = Runner(tmp_path / "state", "n1")
    runner.start(_spec(tmp_path))
    runner.resize(ResizeRequest(7, 0, release=(2,), grace_seconds=5.0))
    seen = _wait(runner, lambda seen: any(r.gpu_indices == (0, 1) for r in seen))
    assert all(r.phase is Phase.RUNNING for r in seen)  # a release does not end the job

    report = runner.resize(ResizeRequest(7, 0, add=((3, 3),)))
    assert report is not None and report.gpu_indices == (0, 1, 3)
    deadline = time.monotonic() + 10
    while not (tmp_path / "worker-3.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    joiner = json.loads((tmp_path / "worker-3.json").read_text())
    assert joiner["SCHEDULERD_ELASTIC_JOIN"] == "1" and joiner["CUDA_VISIBLE_DEVICES"] == "3"

    # Releasing every worker ends the part with 0: released workers leave on purpose.
    runner.resize(ResizeRequest(7, 0, release=(0, 1, 3), grace_seconds=5.0))
    seen = _wait(runner, lambda seen: any(r.phase is Phase.EXITED for r in seen))
    assert seen[-1].exit_code == 0


def test_a_worker_ignoring_the_release_is_killed_after_the_grace(tmp_path: Path) -> None:
    runner = Runner(tmp_path / "state", "n1")
    runner.start(_spec(tmp_path, {"IGNORE_RELEASE": "1"}))
    time.sleep(1.0)  # let the workers install their handlers
    runner.resize(ResizeRequest(7, 0, release=(1,), grace_seconds=0.5))
    seen = _wait(runner, lambda seen: any(r.gpu_indices == (0, 2) for r in seen))
    assert seen[-1].phase is Phase.RUNNING
    runner.stop(StopRequest(7, 0, 0.0))
    _wait(runner, lambda seen: any(r.phase is Phase.EXITED for r in seen))
