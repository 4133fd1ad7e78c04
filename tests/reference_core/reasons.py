"""Reasons a person can read, for every start and every waiting job
(SEMANTICS: the cycle, step 6)."""

from __future__ import annotations

from reference_core.admission import Admission
from schedulerd.core.model import ConsumerPath, Job


def amount(x: float) -> str:
    """A number of GPUs (an entitlement, a reserve) for people: at most one decimal,
    none when whole: 2.90909 is "2.9", 3.0 is "3"."""
    text = f"{x:.1f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _holds(adm: Admission, path: ConsumerPath) -> str:
    ent = adm.division.entitlement.get(path, 0.0)
    return f"{path} holds {adm.allocation[path]} of its entitlement {ent:.1f}"


def start_reason(job: Job, leaf: ConsumerPath, ratio_before: float, adm: Admission) -> str:
    ent = adm.division.entitlement.get(leaf, 0.0)
    held = adm.allocation[leaf] - job.gpus
    if held + job.gpus <= ent + 1e-9:
        why = "within its entitlement"
    else:
        why = "borrowing idle GPUs (work conservation)"
    return f"started on {_gpus(job.gpus)}: {leaf} held {held} of its entitlement {ent:.1f}, {why}"


def grow_reason(job: Job, added: int, adm: Admission) -> str:
    leaf = job.consumer
    return (
        f"grown by {_gpus(added)} to {len(job.held) + added} (max {job.gpus_max}): idle GPUs "
        f"(work conservation); {_holds(adm, leaf)}"
    )


def queue_place(leaf: ConsumerPath, place: int, waiting: int) -> str:
    return f" ({_ordinal(place)} of {waiting} waiting in {leaf})"


def why_waiting(leaf: ConsumerPath, n: int, adm: Admission) -> str:
    """Why a job of `n` GPUs in `leaf` waits, once admission is over. It depends
    on the leaf and the size only, so the caller can share it between jobs."""
    code = adm.blocker(leaf, n) or "next-cycle"
    kind, _, where = code.partition(":")
    path = ConsumerPath(where)
    if kind == "limit":
        limit = adm.policy.consumers[path].limit
        return f"waiting for {_gpus(n)}: {path} holds {adm.allocation[path]} of its limit {limit}"
    if kind == "borrow":
        return f"waiting for {_gpus(n)}: {_holds(adm, path)} and may not borrow (borrow: false)"
    free = adm.free
    if n > free.capacity:
        return (
            f"waiting for {_gpus(n)}: only {_gpus(free.capacity)} are schedulable now "
            f"(other nodes are drained or unreachable)"
        )
    if free.total == 0:
        state = "no GPU is free"
    elif free.spans_nodes(n):
        state = f"{_gpus(free.total)} free"
    else:
        state = f"{_gpus(free.total)} free, at most {free.largest_block()} on one node"
    where_ = "" if free.spans_nodes(n) else " on one node"
    text = f"waiting for {_gpus(n)}{where_}: {_holds(adm, leaf)}; {state}"
    reserved = {p: r for p, r in adm.division.reserved.items() if r > 0}
    if kind == "reserved" and reserved:
        names = ", ".join(f"{amount(r)} for {p}" for p, r in sorted(reserved.items()))
        text += f"; reserved (lend: false): {names}"
    if adm.ratio(leaf) < 1:
        text += "; below its entitlement, it is served first as GPUs free up"
    return text


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
