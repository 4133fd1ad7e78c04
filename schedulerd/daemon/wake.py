"""Waiting for a wake-up or a tick, in a way a cancel always ends.

`asyncio.wait_for(event.wait(), timeout)` on Python 3.11 swallows a cancel that lands
in the turn the event is set (the inner wait finished, wait_for returns its result):
a loop that waits so in `while True` then never stops, and a daemon's shutdown hangs
(tests/test_e2e_hostile.py found it). `asyncio.wait` lets the cancel through.
"""

from __future__ import annotations

import asyncio


async def woken(event: asyncio.Event, timeout_s: float) -> None:
    """Return when `event` is set or `timeout_s` has passed; a cancel propagates."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout_s)
    finally:
        waiter.cancel()
