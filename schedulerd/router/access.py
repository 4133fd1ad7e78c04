"""Who may call a service that is not public: the caller's bearer token, checked by the
daemon (Routing.CheckAccess), its answers kept for as long as the daemon allows.

The cache is keyed by (service, sha256 of the token): the router never keeps a caller's
token itself, and a token good for one service says nothing about another. It is a
bounded LRU. While the daemon cannot be reached, an answer past its time is still used
for STALE_GRACE_S (a daemon restart does not cut off callers it had just let in); with
none, the caller gets a 503 to retry.

An answer past its time is asked again, and its caller waits for the daemon (a token
revoked meanwhile is refused at once). But once the daemon failed to answer (down, or
hung: each question then waits out the link's timeout), for DAEMON_DOWN_S after that
an answer past its time is used at once, while one question per (service, token) goes
on in the background; the first answer the daemon gives ends that.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("schedulerd.router.access")

MAX_ENTRIES = 10_000
MAX_CACHE_S = 3600.0  # whatever the daemon says, ask again within the hour
STALE_GRACE_S = 300.0
DAEMON_DOWN_S = 30.0  # after the daemon failed to answer, stale answers are used at once
# Statuses the router passes on as they are; anything else the daemon says is a refusal.
KNOWN_STATUSES = frozenset({200, 401, 403, 404})
UNAVAILABLE = 503


@dataclass(frozen=True)
class Verdict:
    status: int  # 200: go on; 401, 403, 404: answer that; 503: cannot tell now
    reason: str = ""
    user: str = ""
    cache_s: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.status == 200


class DaemonUnreachable(Exception):
    """The daemon could not answer (down, restarting, or refusing the router itself)."""


# The daemon's CheckAccess: (service, token) -> verdict, or DaemonUnreachable.
AskDaemon = Callable[[str, str], Awaitable[Verdict]]


class AccessChecker(Protocol):
    async def check(self, service: str, token: str) -> Verdict: ...


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


@dataclass
class _Entry:
    verdict: Verdict
    expires: float


class CachedAccess:
    """An AccessChecker asking the daemon, with the cache of the module's doc. Concurrent
    checks of the same (service, token) share one question to the daemon."""

    def __init__(
        self,
        ask: AskDaemon,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._ask = ask
        self._clock = clock
        self._max = max_entries
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._asking: dict[tuple[str, str], asyncio.Task[Verdict]] = {}
        self._down_until = float("-inf")  # the daemon failed to answer: see the doc

    @property
    def cached(self) -> int:
        """Answers kept (not __len__: an empty cache must not read as a false checker)."""
        return len(self._cache)

    async def check(self, service: str, token: str) -> Verdict:
        key = (service, hashlib.sha256(token.encode()).hexdigest())
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None and now < entry.expires:
            self._cache.move_to_end(key)
            return entry.verdict
        task = self._asking.get(key)
        if task is None:
            # A task of its own, not the first caller's: a caller that goes away does
            # not cancel the answer others wait for.
            task = asyncio.ensure_future(self._fetch(key, service, token, entry))
            self._asking[key] = task
            task.add_done_callback(lambda _: self._asking.pop(key, None))
        if entry is not None and now < self._down_until and self._stale_usable(entry, now):
            return entry.verdict  # the daemon is not answering: do not wait for it
        return await asyncio.shield(task)

    @staticmethod
    def _stale_usable(entry: _Entry, now: float) -> bool:
        return now < entry.expires + STALE_GRACE_S

    async def _fetch(
        self, key: tuple[str, str], service: str, token: str, entry: _Entry | None
    ) -> Verdict:
        try:
            verdict = _normalized(await self._ask(service, token))
        except Exception as e:
            if not isinstance(e, DaemonUnreachable):
                log.exception("checking access to %s", service)
            now = self._clock()
            self._down_until = now + DAEMON_DOWN_S
            if entry is not None and self._stale_usable(entry, now):
                return entry.verdict
            return Verdict(UNAVAILABLE, "cannot check access now: the daemon does not answer")
        self._down_until = float("-inf")
        cache_s = min(verdict.cache_s, MAX_CACHE_S)
        if cache_s > 0:
            self._cache[key] = _Entry(verdict, self._clock() + cache_s)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        else:
            self._cache.pop(key, None)
        return verdict


def _normalized(v: Verdict) -> Verdict:
    if v.status in KNOWN_STATUSES:
        return v
    return Verdict(403, v.reason or "access denied", v.user, v.cache_s)
