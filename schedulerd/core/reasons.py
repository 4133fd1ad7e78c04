"""Reasons a person can read, for every start and every waiting job
(SEMANTICS: the cycle, step 6)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from schedulerd.core.admission import Admission
from schedulerd.core.model import ConsumerPath, Job, JobId
from schedulerd.core.queues import Waiting


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


class WaitingReasons(Mapping[JobId, str]):
    """Every waiting job's reason, worded when asked (issue 15): a cycle no longer
    words tens of thousands of reasons nobody reads. Built from what the cycle decided
    and never changed after: asking later, from another thread, reads the same. A
    reason is why its leaf's jobs of its size wait (shared by them, worded once), what
    is under way for it (a reclaim, a reservation), and its place in its queue."""

    def __init__(
        self,
        adm: Admission,
        queues: Mapping[ConsumerPath, Waiting],
        notes: Mapping[JobId, str],
        reserved_notes: Mapping[JobId, str],
        others: Mapping[ConsumerPath, Mapping[JobId, Job]],
        noted_in: Mapping[JobId, ConsumerPath] | None = None,
    ) -> None:
        self._adm = adm
        # The consumer of each job with a note: kinds() words those one by one.
        self._noted_by: dict[ConsumerPath, list[JobId]] = {}
        if noted_in is None:  # not given: found by looking in every queue
            noted_in = {
                i: leaf
                for leaf, view in queues.items()
                for i in (*notes, *reserved_notes)
                if i in view.queue.index
            }
        for job_id, leaf in noted_in.items():
            self._noted_by.setdefault(leaf, []).append(job_id)
        self._queues = queues
        self._notes = notes
        self._reserved = reserved_notes
        self._others = others  # waiting jobs of consumers that are not leaves
        self._why: dict[tuple[ConsumerPath, int], str] = {}
        self._where: dict[JobId, ConsumerPath] | None = None

    def of(self, job_id: JobId, consumer: ConsumerPath) -> str | None:
        """The reason of a job of `consumer`, without an index of every job."""
        view = self._queues.get(consumer)
        if view is not None:
            at = view.queue.index.get(job_id)
            if at is None or job_id in view.gone:
                return None
            return self._word(consumer, view, view.queue.jobs[at])
        if job_id in self._others.get(consumer, {}):
            return (
                f"consumer {consumer} is not a leaf of the policy in force; "
                "apply a policy that has it, or cancel the job"
            )
        return None

    def _word(self, leaf: ConsumerPath, view: Waiting, job: Job) -> str:
        key = (leaf, job.gpus)
        why = self._why.get(key)
        if why is None:
            why = self._why[key] = why_waiting(leaf, job.gpus, self._adm)
        note = self._notes.get(job.id) or self._reserved.get(job.id)
        text = why + (f"; {note}" if note else "")
        return text + queue_place(leaf, view.place(job.id), len(view))

    def kinds(self, classify: Callable[[str], str]) -> dict[tuple[str, str], int]:
        """The waiting jobs counted by (consumer, classify(reason)), classifying one
        reason per leaf and size (and each job with a note of its own): the jobs of a
        group differ only in their place in the queue."""
        counts: dict[tuple[str, str], int] = {}

        def count(consumer: str, text: str, n: int) -> None:
            if n:
                key = (consumer, classify(text))
                counts[key] = counts.get(key, 0) + n

        for leaf, view in self._queues.items():
            if not len(view):
                continue
            queue = view.queue
            special: dict[int, int] = {}  # per size, jobs classified one by one
            for job_id in set(self._noted_by.get(leaf, ())):
                at = queue.index.get(job_id)
                if at is not None and job_id not in view.gone:
                    job = queue.jobs[at]
                    count(leaf, self._word(leaf, view, job), 1)
                    special[job.gpus] = special.get(job.gpus, 0) + 1
            gone: dict[int, int] = {}
            for job_id in view.gone:
                at = queue.index.get(job_id)
                if at is not None:
                    size = queue.jobs[at].gpus
                    gone[size] = gone.get(size, 0) + 1
            for size, places in queue.at.items():
                n = len(places) - gone.get(size, 0) - special.get(size, 0)
                if n:
                    why = self._why.get((leaf, size))
                    if why is None:
                        why = self._why[(leaf, size)] = why_waiting(leaf, size, self._adm)
                    count(leaf, why + queue_place(leaf, 1, len(view)), n)
        for consumer, jobs in self._others.items():
            for job_id in jobs:
                text = self.of(job_id, consumer)
                if text is not None:
                    count(consumer, text, 1)
        return counts

    def __getitem__(self, job_id: JobId) -> str:
        if self._where is None:
            where = {j.id: leaf for leaf, view in self._queues.items() for j in view}
            for consumer, jobs in self._others.items():
                where.update(dict.fromkeys(jobs, consumer))
            self._where = where
        found = self._where.get(job_id)
        text = None if found is None else self.of(job_id, found)
        if text is None:
            raise KeyError(job_id)
        return text

    def __iter__(self) -> Iterator[JobId]:
        for view in self._queues.values():
            for j in view:
                yield j.id
        for jobs in self._others.values():
            yield from jobs

    def __len__(self) -> int:
        return sum(len(v) for v in self._queues.values()) + sum(
            len(o) for o in self._others.values()
        )

    def items(self) -> Iterator[tuple[JobId, str]]:  # type: ignore[override]
        """Every (job, reason), without looking each job up again."""
        for leaf, view in self._queues.items():
            for j in view:
                yield j.id, self._word(leaf, view, j)
        for consumer, jobs in self._others.items():
            for job_id in jobs:
                text = self.of(job_id, consumer)
                assert text is not None
                yield job_id, text

    def values(self) -> Iterator[str]:  # type: ignore[override]
        return (text for _, text in self.items())


def reason_for(reasons: Mapping[JobId, str], job_id: JobId, consumer: ConsumerPath) -> str | None:
    """A waiting job's reason in a plan's `pending_reasons`, found without an index of
    every job when the plan words them when asked (WaitingReasons, pools.PooledReasons)."""
    of = getattr(reasons, "of", None)
    if of is not None:
        text: str | None = of(job_id, consumer)
        return text
    return reasons.get(job_id)


def count_kinds(
    reasons: Mapping[JobId, str],
    consumer_of: Callable[[JobId], str | None],
    classify: Callable[[str], str],
) -> dict[tuple[str, str], int]:
    """Waiting jobs by (consumer, classify(reason)) over a plan's reasons."""
    kinds = getattr(reasons, "kinds", None)
    if kinds is not None:
        out: dict[tuple[str, str], int] = kinds(classify)
        return out
    counts: dict[tuple[str, str], int] = {}
    for job_id, text in reasons.items():
        consumer = consumer_of(job_id)
        if consumer is not None:
            key = (consumer, classify(text))
            counts[key] = counts.get(key, 0) + 1
    return counts
