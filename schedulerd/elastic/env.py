"""What the agent tells a worker, read from the environment (docs/elastic.md).

Pure Python on purpose: the signal handlers are installed from this information before
`import torch` (which takes about a second), so it must not need torch itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 30.0
# Not set by the agent: the user may set it in the job's environment. It bounds every wait
# on a peer (collectives, forming a process group, store requests), so a worker that dies
# or stalls makes the others fail after at most this long instead of hanging.
TIMEOUT_VAR = "SCHEDULERD_ELASTIC_TIMEOUT"
# Start-up is slower and more uneven than a step: workers of one job start on several nodes
# at different moments and spend seconds importing torch. Reaching the store and waiting for
# the other initial workers are bounded by this instead (default: the larger of 120 s and
# the timeout above).
START_TIMEOUT_VAR = "SCHEDULERD_ELASTIC_START_TIMEOUT"
MIN_START_TIMEOUT_S = 120.0


class ElasticEnvError(RuntimeError):
    """The environment does not describe an elastic worker the way docs/elastic.md says."""


@dataclass(frozen=True)
class WorkerEnv:
    elastic: bool
    job_id: str
    attempt: int
    worker_id: int
    initial: tuple[int, ...]  # ids of generation 0, sorted: their order is their rank
    join: bool
    store_host: str
    store_port: int
    min_workers: int
    max_workers: int  # 0: unknown (a standalone run)
    timeout_s: float
    start_timeout_s: float

    @property
    def hosts_store(self) -> bool:
        # Worker 0 is never released and lives as long as the job (docs/elastic.md).
        return self.worker_id == 0

    @property
    def store_is_loopback(self) -> bool:
        return self.store_host in ("localhost", "::1") or self.store_host.startswith("127.")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerEnv:
        env = os.environ if environ is None else environ
        elastic = env.get("SCHEDULERD_ELASTIC", "0") == "1"
        timeout_s = _float(env, TIMEOUT_VAR, DEFAULT_TIMEOUT_S)
        start_timeout_s = _float(env, START_TIMEOUT_VAR, max(MIN_START_TIMEOUT_S, timeout_s))
        if timeout_s <= 0 or start_timeout_s <= 0:
            raise ElasticEnvError(f"{TIMEOUT_VAR} and {START_TIMEOUT_VAR} must be positive")
        job_id = env.get("SCHEDULERD_JOB_ID", "")
        attempt = _int(env, "SCHEDULERD_ATTEMPT", 0)
        if not elastic:
            # A rigid job (or a plain `python train.py`): one process, no peers.
            return cls(
                elastic=False,
                worker_id=0,
                initial=(0,),
                join=False,
                store_host="",
                store_port=0,
                min_workers=1,
                max_workers=1,
                job_id=job_id,
                attempt=attempt,
                timeout_s=timeout_s,
                start_timeout_s=start_timeout_s,
            )
        for var in ("SCHEDULERD_WORKER_ID", "SCHEDULERD_ELASTIC_STORE"):
            if var not in env:
                raise ElasticEnvError(f"SCHEDULERD_ELASTIC=1 but {var} is not set")
        address = env["SCHEDULERD_ELASTIC_STORE"]
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ElasticEnvError(f"SCHEDULERD_ELASTIC_STORE must be host:port, got {address!r}")
        worker_id = _int(env, "SCHEDULERD_WORKER_ID", 0)
        join = env.get("SCHEDULERD_ELASTIC_JOIN", "0") == "1"
        initial_text = env.get("SCHEDULERD_ELASTIC_INITIAL", "")
        try:
            initial = tuple(sorted(int(x) for x in initial_text.split(",") if x.strip()))
        except ValueError:
            raise ElasticEnvError(
                f"SCHEDULERD_ELASTIC_INITIAL must be comma-separated ids, got {initial_text!r}"
            ) from None
        if not join and worker_id not in initial:
            raise ElasticEnvError(
                f"worker {worker_id} has SCHEDULERD_ELASTIC_JOIN=0 but is not in "
                f"SCHEDULERD_ELASTIC_INITIAL={initial_text!r}"
            )
        if 0 not in initial:
            raise ElasticEnvError("worker 0 (the store's host) must be an initial worker")
        return cls(
            elastic=True,
            worker_id=worker_id,
            initial=initial,
            join=join,
            store_host=host.strip("[]"),  # [::1]:port
            store_port=int(port),
            min_workers=_int(env, "SCHEDULERD_ELASTIC_MIN", 1),
            max_workers=_int(env, "SCHEDULERD_ELASTIC_MAX", 0),
            job_id=job_id,
            attempt=attempt,
            timeout_s=timeout_s,
            start_timeout_s=start_timeout_s,
        )


def _int(env: Mapping[str, str], var: str, default: int) -> int:
    text = env.get(var, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ElasticEnvError(f"{var} must be an integer, got {text!r}") from None


def _float(env: Mapping[str, str], var: str, default: float) -> float:
    text = env.get(var, "")
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ElasticEnvError(f"{var} must be a number of seconds, got {text!r}") from None
