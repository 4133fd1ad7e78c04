"""When a request that failed on one replica may be sent to another (docs/router.md).

Only failures before the replica answered reach here. An idempotent request may run
twice without harm, so any connection failure is retried. Another (a POST: a generation,
a write) only when the connection never opened: then the replica cannot have seen it.
A timeout is never retried (the request may be running).
"""

from __future__ import annotations

import aiohttp

MAX_RETRIES = 2  # tries on other replicas after the first
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def never_connected(error: aiohttp.ClientError) -> bool:
    """Refused, unreachable, or no answer to the connect itself."""
    return isinstance(error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


def may_retry(method: str, error: aiohttp.ClientError) -> bool:
    if isinstance(error, aiohttp.ServerTimeoutError) and not never_connected(error):
        return False
    if method.upper() in IDEMPOTENT:
        return isinstance(error, aiohttp.ClientConnectionError)
    return never_connected(error)
