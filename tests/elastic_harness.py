"""Drives elastic workers the way the agent does (docs/elastic.md): real processes, the
contract's environment, SIGUSR1 to release one, joiners started with fresh ids and JOIN=1.
The workers run examples/elastic_train.py with gloo on the CPU and write a shared trace."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "elastic_train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


@dataclass
class Worker:
    wid: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


@dataclass
class ElasticJob:
    """One attempt of an elastic job on this machine, as one agent would run it."""

    workdir: Path
    steps: int
    step_time: float = 0.02
    timeout_s: float = 10.0
    min_workers: int = 1
    max_workers: int = 4
    extra_args: list[str] = field(default_factory=list)
    attempt: int = 0
    port: int = field(default_factory=free_port)
    workers: dict[int, Worker] = field(default_factory=dict)
    initial: list[int] = field(default_factory=list)
    _next_id: int = 0

    @property
    def trace_path(self) -> Path:
        return self.workdir / "trace.jsonl"

    def _env(self, wid: int, join: bool) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SCHEDULERD_JOB_ID": "1",
                "SCHEDULERD_ATTEMPT": str(self.attempt),
                "SCHEDULERD_ELASTIC": "1",
                "SCHEDULERD_WORKER_ID": str(wid),
                "SCHEDULERD_ELASTIC_INITIAL": ",".join(map(str, self.initial)),
                "SCHEDULERD_ELASTIC_JOIN": "1" if join else "0",
                "SCHEDULERD_ELASTIC_STORE": f"127.0.0.1:{self.port}",
                "SCHEDULERD_ELASTIC_MIN": str(self.min_workers),
                "SCHEDULERD_ELASTIC_MAX": str(self.max_workers),
                "SCHEDULERD_ELASTIC_TIMEOUT": str(self.timeout_s),
                "CUDA_VISIBLE_DEVICES": "",  # gloo on the CPU, whatever this machine has
                # Several workers share 2 cores: torch's spinning intra-op threads would make
                # every step several times slower (torchrun sets this too).
                "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _spawn(self, join: bool) -> Worker:
        wid = self._next_id
        self._next_id += 1
        log_path = self.workdir / f"worker{wid}.log"
        log = open(log_path, "wb")  # noqa: SIM115 (closed in stop_all)
        cmd = [
            sys.executable,
            str(EXAMPLE),
            "--steps",
            str(self.steps),
            "--step-time",
            str(self.step_time),
            "--trace",
            str(self.trace_path),
            *self.extra_args,
        ]
        proc = subprocess.Popen(
            cmd,
            env=self._env(wid, join),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # as the agent does
            cwd=self.workdir,
        )
        worker = Worker(wid, proc, log_path, log)
        self.workers[wid] = worker
        return worker

    def start(self, n: int) -> list[Worker]:
        self.initial = list(range(n))
        return [self._spawn(join=False) for _ in range(n)]

    def add_joiner(self) -> Worker:
        return self._spawn(join=True)

    def signal(self, wid: int, sig: signal.Signals) -> None:
        self.workers[wid].proc.send_signal(sig)

    def release(self, wid: int) -> None:
        self.signal(wid, signal.SIGUSR1)

    def wait_exit(self, wid: int, timeout_s: float) -> int:
        try:
            return self.workers[wid].proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {wid} still running after {timeout_s:g} s; its log:\n"
                + self.workers[wid].output()
            ) from None

    def running(self, wid: int) -> bool:
        return self.workers[wid].proc.poll() is None

    def stop_all(self) -> None:
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            w.log.close()

    def logs(self) -> str:
        return "\n".join(f"--- worker {w} ---\n{x.output()}" for w, x in self.workers.items())

    # --- the trace ---------------------------------------------------------------------

    def trace(self) -> list[dict[str, Any]]:
        if not self.trace_path.exists():
            return []
        lines = self.trace_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def last_step(self) -> int:
        return max((r["step"] for r in self.trace()), default=0)

    def wait_for(self, what: str, probe: Callable[[list[dict[str, Any]]], Any], timeout_s: float):
        try:
            return wait_until(what, lambda: probe(self.trace()), timeout_s)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None

    def wait_for_log(self, wid: int, text: str, timeout_s: float) -> None:
        try:
            wait_until(
                f"{text!r} in worker {wid}'s log",
                lambda: text in self.workers[wid].output(),
                timeout_s,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None


def by_step(records: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    steps: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        steps[r["step"]].append(r)
    return dict(steps)


def check_trace(
    records: list[dict[str, Any]], total_steps: int, *, first_step: int = 1
) -> dict[int, list[dict[str, Any]]]:
    """The invariants of in-place elastic training, step by step: every step done exactly
    once by a full, consistent membership, with identical parameters on every rank, and one
    process per worker id (a worker is never restarted). Records of one attempt."""
    steps = by_step(records)
    expected = list(range(first_step, total_steps + 1))
    assert sorted(steps) == expected, "a step is missing or extra"
    for s, recs in steps.items():
        world = recs[0]["world"]
        assert all(r["world"] == world and r["gen"] == recs[0]["gen"] for r in recs), recs
        assert sorted(r["rank"] for r in recs) == list(range(world)), f"step {s}: {recs}"
        assert len({r["worker"] for r in recs}) == world, f"step {s}: a worker twice: {recs}"
        sums = {r["checksum"] for r in recs}
        assert len(sums) == 1, f"step {s}: parameters differ across ranks: {recs}"
    pids: dict[int, set[int]] = defaultdict(set)
    for r in records:
        pids[r["worker"]].add(r["pid"])
    assert all(len(p) == 1 for p in pids.values()), f"a worker was restarted: {dict(pids)}"
    return steps


def global_loss(recs: list[dict[str, Any]]) -> float:
    return sum(r["loss"] for r in recs) / len(recs)
