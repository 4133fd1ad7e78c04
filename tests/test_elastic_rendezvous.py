"""The door protocol between waiting joiners and worker 0, in this process: one real
TCPStore, the joiner in a thread (no process groups, no signals: the flags are set by hand)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("torch")

from torch._C._distributed_c10d import TCPStore

from schedulerd.elastic import exits
from schedulerd.elastic.exits import Released, Stopped
from schedulerd.elastic.rendezvous import Doorkeeper, Joiner
from schedulerd.elastic.signals import FLAGS


@pytest.fixture
def store() -> Iterator[TCPStore]:
    master = TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=5))
    yield master
    FLAGS.release = FLAGS.stop = False
    # Released/Stopped were raised here on purpose: this process must not exit with their code.
    exits._leaving_with.clear()


def client(master: TCPStore) -> TCPStore:
    return TCPStore("127.0.0.1", master.port, is_master=False, timeout=timedelta(seconds=5))


class WaitingJoiner(threading.Thread):
    """A joiner in its own thread with its own store connection, as in its own process."""

    def __init__(self, master: TCPStore, wid: int) -> None:
        super().__init__(daemon=True)
        self.joiner = Joiner(client(master), wid)
        self.joiner.register()
        self.result: Any = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.joiner.wait_for_admission()
        except BaseException as e:  # Released / Stopped are SystemExit
            self.result = e

    def outcome(self) -> Any:
        self.join(5)
        assert not self.is_alive()
        return self.result


def state(store: TCPStore, wid: int) -> str:
    return store.get(f"j/{wid}").decode()


def test_a_claimed_joiner_acks_and_is_admitted(store: TCPStore) -> None:
    door = Doorkeeper(store, timeout_s=30)
    j = WaitingJoiner(store, 3)
    assert door.claim(capacity=2) == [3]
    door.admit(1, [0, 1, 3], [3])
    assert j.outcome() == (1, [0, 1, 3])


def test_capacity_keeps_the_others_waiting_in_order(store: TCPStore) -> None:
    door = Doorkeeper(store, timeout_s=30)
    first = WaitingJoiner(store, 4)
    second = WaitingJoiner(store, 5)
    assert door.claim(capacity=1) == [4]
    assert door.claim(capacity=0) == []
    assert door.claim(capacity=1) == [5]
    door.admit(1, [0, 4, 5], [4, 5])
    assert first.outcome() == second.outcome() == (1, [0, 4, 5])


def test_a_joiner_that_died_waiting_is_not_admitted(store: TCPStore) -> None:
    door = Doorkeeper(store, timeout_s=0.4)  # waits 0.1 s for the ack
    Joiner(client(store), 6).register()  # ... and is never heard from again
    alive = WaitingJoiner(store, 7)
    assert door.claim(capacity=2) == [7]
    assert state(store, 6) == "dropped"
    assert door.claim(capacity=2) == []  # not claimed again
    door.admit(1, [0, 7], [7])
    assert alive.outcome() == (1, [0, 7])


def test_a_released_joiner_withdraws_before_it_is_claimed(store: TCPStore) -> None:
    door = Doorkeeper(store, timeout_s=30)
    FLAGS.release = True
    j = WaitingJoiner(store, 8)
    assert isinstance(j.outcome(), Released) and j.outcome().code == 0
    assert state(store, 8) == "gone"
    assert door.claim(capacity=2) == []


def test_waiting_joiners_leave_when_the_job_ends_or_stops(store: TCPStore) -> None:
    door = Doorkeeper(store, timeout_s=30)
    j = WaitingJoiner(store, 9)
    time.sleep(0.3)  # past its first look at "closed": it is told by its own key
    door.close([])
    assert isinstance(j.outcome(), Released)
    assert state(store, 9) == "bye"
    FLAGS.stop = True
    late = Joiner(client(store), 10)
    late.register()  # after the end: it sees "closed" and withdraws
    with pytest.raises(Stopped):
        late.wait_for_admission()
