"""Requests held while a service has no usable replica (scale from zero, every replica
restarting), woken by an event when one becomes usable: no polling.

A service holds at most its max_queue requests, each at most its queue_timeout_s; what
is held counts as `queued` in the load report, which is how the autoscaler learns that a
service scaled to zero has callers.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Refusal(enum.Enum):
    FULL = "queue full"  # max_queue requests are held already
    TIMEOUT = "no replica became ready in time"  # held for queue_timeout_s
    STOPPING = "the router is stopping"


class Holds:
    def __init__(self) -> None:
        # One event per service with waiters; set (and dropped) when the service may
        # have a usable endpoint, so every waiter tries again.
        self._events: dict[str, asyncio.Event] = {}
        self._queued: dict[str, int] = {}
        self._stopping = False

    def queued(self, name: str) -> int:
        return self._queued.get(name, 0)

    def wake(self, name: str) -> None:
        event = self._events.pop(name, None)
        if event is not None:
            event.set()

    def stop(self) -> None:
        """Answer every held request (503) and hold no more."""
        self._stopping = True
        for name in list(self._events):
            self.wake(name)

    async def hold(
        self, name: str, pick: Callable[[], T | None], max_queue: int, timeout_s: float
    ) -> T | Refusal:
        """What `pick` returns once it returns something, or why not."""
        if self._stopping:
            return Refusal.STOPPING
        if self.queued(name) >= max_queue:
            return Refusal.FULL
        self._queued[name] = self.queued(name) + 1
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    event = self._events.setdefault(name, asyncio.Event())
                    await event.wait()
                    if self._stopping:
                        return Refusal.STOPPING
                    found = pick()
                    if found is not None:
                        return found
        except TimeoutError:
            return Refusal.TIMEOUT
        finally:
            left = self._queued[name] - 1
            if left:
                self._queued[name] = left
            else:
                del self._queued[name]
                last = self._events.get(name)
                if last is not None and not last.is_set():
                    del self._events[name]  # bounded: events only for services with waiters
