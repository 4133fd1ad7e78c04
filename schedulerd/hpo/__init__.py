"""`schedulerd.hpo`: what a trial's training script uses (docs/hpo.md).

    from schedulerd import hpo

    p = hpo.params()                      # {"lr": 0.003, "width": 64, ...}
    for epoch in range(epochs):
        loss = train_one_epoch(...)
        if hpo.report(epoch, loss):       # True: pruned (or the experiment stopped)
            break                         # the daemon cancels the job anyway
    hpo.final(loss)                       # the objective; the trial is COMPLETE

Light on purpose: grpc and the generated stubs, no torch, no Optuna. The daemon
puts everything this needs in the job's environment: SCHEDULERD_ADDRESS,
SCHEDULERD_EXPERIMENT_ID, SCHEDULERD_TRIAL, SCHEDULERD_JOB_ID and
SCHEDULERD_HPO_PARAMS (the parameters as a JSON object). Outside a trial (no
SCHEDULERD_EXPERIMENT_ID), `report` and `final` only print, so the same script
runs by hand; `params()` then reads SCHEDULERD_HPO_PARAMS if set, else {}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PARAMS_VAR = "SCHEDULERD_HPO_PARAMS"
RETRY_S_VAR = "SCHEDULERD_HPO_RETRY_S"  # how long a report retries while the daemon is away

__all__ = ["HpoError", "final", "in_trial", "params", "report", "trial_number"]


class HpoError(RuntimeError):
    """The daemon refused a report (the message says why), or stayed unreachable."""


def in_trial() -> bool:
    """Whether this process is a trial of an experiment."""
    return bool(os.environ.get("SCHEDULERD_EXPERIMENT_ID"))


def params() -> dict[str, Any]:
    """The trial's parameters (int, float, str or bool values)."""
    text = os.environ.get(PARAMS_VAR, "")
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise HpoError(f"{PARAMS_VAR} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise HpoError(f"{PARAMS_VAR} must be a JSON object, got {type(value).__name__}")
    return value


def trial_number() -> int | None:
    text = os.environ.get("SCHEDULERD_TRIAL", "")
    return int(text) if text.isdigit() else None


def report(step: int, value: float) -> bool:
    """An intermediate value of the objective at `step` (an epoch, a number of
    batches: what the pruner's resources count). Returns True when the trial
    should stop now: the pruner stopped it, or the experiment was stopped. The
    daemon cancels a pruned trial's job itself, so a script that goes on is
    stopped anyway (SIGTERM, then SIGKILL after the consumer's grace)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not in_trial():
        print(f"hpo: step {step}: {value:g}", file=sys.stderr)
        return False
    return bool(_send(step=step, value=float(value), final=False).should_stop)


def final(value: float) -> None:
    """The trial's objective value: the trial is COMPLETE. Call it once, last."""
    if not in_trial():
        print(f"hpo: final: {value:g}", file=sys.stderr)
        return
    _send(step=0, value=float(value), final=True)


def _send(step: int, value: float, final: bool) -> Any:
    import grpc  # here, so that params() works where grpc is missing

    from schedulerd.api.v1 import experiments_pb2, experiments_pb2_grpc

    env = os.environ
    request = experiments_pb2.ReportTrialRequest(
        experiment_id=int(env["SCHEDULERD_EXPERIMENT_ID"]),
        trial=int(env.get("SCHEDULERD_TRIAL", "0")),
        job_id=int(env.get("SCHEDULERD_JOB_ID", "0") or 0),
        step=step,
        value=value,
        final=final,
    )
    address = env.get("SCHEDULERD_ADDRESS", "127.0.0.1:50051")
    # A daemon restart must not lose a result: retry while it is away. A final
    # report is idempotent, so a retry after a lost answer is harmless.
    deadline = time.monotonic() + float(env.get(RETRY_S_VAR, "300"))
    delay = 0.2
    # Who reports: the trial's token (the daemon puts one in its env), over TLS when
    # the node has the cluster CA (docs/security.md).
    token = env.get("SCHEDULERD_TOKEN", "")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    ca = env.get("SCHEDULERD_CA", "")
    tls = grpc.ssl_channel_credentials(Path(ca).read_bytes()) if ca else None  # read once
    while True:
        try:
            with (
                grpc.secure_channel(address, tls) if tls else grpc.insecure_channel(address)
            ) as channel:
                stub = experiments_pb2_grpc.ExperimentsStub(channel)
                return stub.ReportTrial(request, timeout=30, wait_for_ready=True, metadata=metadata)
        except grpc.RpcError as e:
            code = e.code()
            retry = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not retry or time.monotonic() > deadline:
                raise HpoError(f"report to {address} failed: {e.details() or code}") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
