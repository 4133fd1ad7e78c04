"""Browser sessions of the dashboard: a random cookie value for a bearer token.

The browser never keeps the token: the login form posts it once, the daemon checks it
and answers with a cookie (HttpOnly, SameSite=Strict) that names a session here. The
session keeps the token in the daemon's memory only, so that every request is checked
again through the gate as an API call is (an expired or revoked token ends its
sessions at their next request). Keyed by a hash of the cookie value: the map holds no
value a browser could present. Bounded in number (overall and per user) and in
lifetime; lost at a restart (log in again)."""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_SESSIONS = 1000
MAX_PER_USER = 20
LIFETIME_S = 8 * 3600.0
MAX_TOKEN_CHARS = 4096


@dataclass
class Session:
    token: str
    user: str
    expires: float


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()


class SessionBook:
    def __init__(
        self,
        clock: Callable[[], float],
        max_sessions: int = MAX_SESSIONS,
        max_per_user: int = MAX_PER_USER,
        lifetime_s: float = LIFETIME_S,
    ) -> None:
        self.clock = clock
        self.max_sessions = max_sessions
        self.max_per_user = max_per_user
        self.lifetime_s = lifetime_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, token: str, user: str) -> str:
        """A new session; returns the cookie value. The oldest session of the same user,
        then the oldest of all, make room when a bound is reached."""
        self._expire()
        mine = [k for k, s in self._sessions.items() if s.user == user]
        for key in mine[: max(0, len(mine) - self.max_per_user + 1)]:
            del self._sessions[key]
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        cookie = secrets.token_urlsafe(32)
        self._sessions[_key(cookie)] = Session(token, user, self.clock() + self.lifetime_s)
        return cookie

    def token(self, cookie: str | None) -> str | None:
        """The token of a live session, or None."""
        if not cookie or len(cookie) > 128:
            return None
        key = _key(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._sessions[key]
            return None
        return session.token

    def close(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(_key(cookie), None)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]
