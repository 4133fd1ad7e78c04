"""The job's store, and how joiners get in: registration, claim, acknowledgement, admission.

One TCPStore for the whole attempt, hosted by worker 0 (docs/elastic.md). Keys:

    joiners/n        how many registrations were started (a joiner may register twice)
    joiners/<i>      the worker id of registration i (1-based), set right after taking i
    j/<wid>          a joiner's state, changed only by compare_set so that the joiner and
                     worker 0 never both win:
                       ready -> taken:<n> -> acked:<n> -> admit:<gen>   (admitted)
                       ready -> gone                                     (joiner withdrew)
                       taken:<n> -> dropped -> ready                     (no ack in time)
                       ready | dropped | acked:<n> -> done -> bye        (job over)
    start/<wid>      an initial worker has reached the store (generation 0 forms when all have)
    m/<gen>          the members of generation <gen>, in rank order
    gen<gen>/...     that generation's process group rendezvous (PrefixStore)
    closed           the job is ending: a joiner that sees it leaves

Why the ack: a joiner killed while waiting (SIGKILL, OOM) leaves "ready" behind. Admitting
it would make every member wait the full timeout for it at the next process group and then
fail; waiting a moment for a live joiner to answer the claim costs one poll interval.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from torch._C._distributed_c10d import Store, TCPStore

from schedulerd.elastic.env import WorkerEnv
from schedulerd.elastic.exits import ElasticError, Released, Stopped, first_line
from schedulerd.elastic.signals import FLAGS

log = logging.getLogger("schedulerd.elastic")

JOINER_POLL_S = 0.005  # a waiting joiner reads its state this often: one store round trip
HOST_POLL_S = 0.002  # worker 0 waiting for acks (the members are blocked meanwhile)
ACK_TIMEOUT_CAP_S = 2.0  # a live joiner acks within a few polls; a dead one costs this once
BYE_TIMEOUT_S = 2.0  # worker 0, ending, waits this long for waiting joiners to see "done"


def connect(env: WorkerEnv) -> TCPStore:
    """Host (worker 0) or reach the job's store, within the start timeout. Clients retry in
    short attempts so that a signal is noticed while worker 0 is not listening yet."""
    timeout = timedelta(seconds=env.timeout_s)
    if env.hosts_store:
        return TCPStore(
            env.store_host,
            env.store_port,
            is_master=True,
            timeout=timeout,
            wait_for_workers=False,
        )
    deadline = time.monotonic() + env.start_timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            store = TCPStore(
                env.store_host,
                env.store_port,
                is_master=False,
                timeout=timedelta(seconds=max(0.1, min(1.0, left))),
            )
        except RuntimeError as e:  # DistNetworkError, DistStoreError
            _leave_if_asked(joined=False)
            if time.monotonic() >= deadline:
                raise ElasticError(
                    f"cannot reach the job's store at {env.store_host}:{env.store_port} "
                    f"within {env.start_timeout_s:g} s: {first_line(e)}"
                ) from e
            continue
        store.set_timeout(timeout)
        return store


def wait_for_initial(store: Store, env: WorkerEnv) -> None:
    """Wait (start timeout) until every initial worker has reached the store, so that forming
    generation 0 then takes milliseconds and the collective timeout can stay short."""
    store.set(f"start/{env.worker_id}", "1")
    keys = [f"start/{wid}" for wid in env.initial]
    deadline = time.monotonic() + env.start_timeout_s
    while not store.check(keys):
        if FLAGS.stop:
            raise Stopped("stopped before the job started")
        if time.monotonic() >= deadline:
            missing = [
                wid for wid, key in zip(env.initial, keys, strict=True) if not store.check([key])
            ]
            raise ElasticError(
                f"initial workers {missing} did not start within {env.start_timeout_s:g} s"
            )
        time.sleep(JOINER_POLL_S)


def _leave_if_asked(*, joined: bool) -> None:
    """Before this worker is part of any generation, nobody waits for it: leave at once."""
    if joined:
        return
    if FLAGS.stop:
        raise Stopped("stopped before joining")
    if FLAGS.release:
        raise Released("released before joining")


def _key(wid: int) -> str:
    return f"j/{wid}"


def members_key(gen: int) -> str:
    return f"m/{gen}"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class Joiner:
    """A worker started to grow the job, waiting at the door until the members let it in."""

    def __init__(self, store: Store, worker_id: int) -> None:
        self.store = store
        self.wid = worker_id
        self.key = _key(worker_id)

    def register(self) -> None:
        self.store.set(self.key, "ready")
        self._append()

    def _append(self) -> None:
        slot = self.store.add("joiners/n", 1)
        self.store.set(f"joiners/{slot}", str(self.wid))

    def wait_for_admission(self) -> tuple[int, list[int]]:
        """Block until admitted; return (generation, its members in rank order). Leaves
        (Released/Stopped) if asked to before it has been claimed, or if the job ends."""
        try:
            if self.store.check(["closed"]):
                self._withdraw_or_join("the job is ending")
            while True:
                state = _text(self.store.get(self.key))
                if state.startswith("admit:"):
                    gen = int(state.split(":", 1)[1])
                    return gen, parse_ids(self.store.get(members_key(gen)))
                if state.startswith("taken:"):
                    self.store.compare_set(self.key, state, "acked:" + state.split(":", 1)[1])
                elif state == "dropped":
                    # Worker 0 gave up on our ack (we were slow): stand in line again.
                    if _text(self.store.compare_set(self.key, "dropped", "ready")) == "ready":
                        self._append()
                elif state == "done":
                    self.store.set(self.key, "bye")
                    if FLAGS.stop:
                        raise Stopped("the job was stopped before this worker was admitted")
                    raise Released("the job ended before this worker was admitted")
                if FLAGS.release or FLAGS.stop:
                    self._withdraw_or_join("asked to leave")
                time.sleep(JOINER_POLL_S)
        except RuntimeError as e:  # the store went away: worker 0 ended or died
            raise ElasticError(
                f"lost the job's store while waiting to join: {first_line(e)}"
            ) from e

    def _withdraw_or_join(self, why: str) -> None:
        """Withdraw if still unclaimed; once claimed, the members count on us: go on and
        join, and leave at the first step boundary (the flags are still set)."""
        for expected in ("ready", "dropped"):
            if _text(self.store.compare_set(self.key, expected, "gone")) == "gone":
                if FLAGS.stop:
                    raise Stopped(why)
                raise Released(why)


class Doorkeeper:
    """Worker 0's side: finds ready joiners, claims them, and admits them."""

    def __init__(self, store: Store, timeout_s: float) -> None:
        self.store = store
        self.ack_timeout_s = min(ACK_TIMEOUT_CAP_S, timeout_s / 4)
        self._read = 0  # registrations read so far
        self._queue: list[int] = []  # read but not yet claimed (over capacity)
        self._seen: set[int] = set()  # every joiner that ever registered
        self._claims = 0

    def claim(self, capacity: int) -> list[int]:
        """Claim up to `capacity` live joiners; they wait, acked, until `admit`."""
        self._queue += self._registrations()
        tokens: dict[int, str] = {}
        while self._queue and len(tokens) < capacity:
            wid = self._queue.pop(0)
            if wid in tokens:
                continue
            self._claims += 1
            token = f"taken:{self._claims}"
            if _text(self.store.compare_set(_key(wid), "ready", token)) == token:
                tokens[wid] = token
        if not tokens:
            return []
        acked: list[int] = []
        deadline = time.monotonic() + self.ack_timeout_s
        while tokens:
            for wid, token in list(tokens.items()):
                if _text(self.store.get(_key(wid))) == "acked:" + token.split(":", 1)[1]:
                    acked.append(wid)
                    del tokens[wid]
            if not tokens or time.monotonic() >= deadline:
                break
            time.sleep(HOST_POLL_S)
        for wid, token in tokens.items():
            log.warning("joiner %d did not answer in %.1f s: not admitted", wid, self.ack_timeout_s)
            self.store.compare_set(_key(wid), token, "dropped")
        return sorted(acked)

    def _registrations(self) -> list[int]:
        """Worker ids of registrations not read yet, in order. A slot taken but not yet
        written (the joiner is between its two requests) is read at the next boundary."""
        found: list[int] = []
        n = int(self.store.add("joiners/n", 0))
        while self._read < n:
            key = f"joiners/{self._read + 1}"
            if not self.store.check([key]):
                break
            found.append(int(self.store.get(key)))
            self._read += 1
        self._seen.update(found)
        return found

    def admit(self, gen: int, members: list[int], joiners: list[int]) -> None:
        self.store.set(members_key(gen), ",".join(map(str, members)))
        for wid in joiners:
            self.store.set(_key(wid), f"admit:{gen}")

    def close(self, claimed: list[int]) -> None:
        """The job is ending: tell every waiting joiner, and give them a moment to read it
        before this process (and the store with it) goes away."""
        self.store.set("closed", "1")
        waiting = set(claimed)
        self._registrations()
        for wid in self._seen:
            for expected in ("ready", "dropped"):
                if _text(self.store.compare_set(_key(wid), expected, "done")) == "done":
                    waiting.add(wid)
        for wid in claimed:
            self.store.set(_key(wid), "done")
        deadline = time.monotonic() + BYE_TIMEOUT_S
        while waiting and time.monotonic() < deadline:
            waiting = {w for w in waiting if _text(self.store.get(_key(w))) != "bye"}
            time.sleep(HOST_POLL_S)


def parse_ids(raw: bytes | str) -> list[int]:
    return [int(x) for x in _text(raw).split(",") if x]
