"""The answers the router gives itself (not a replica's): JSON `{"error", "service"}`,
and which of them count as the router failing a request (docs/router.md)."""

from __future__ import annotations

import math

from aiohttp import web

# 5xx answered by the router itself: the `failed` of the load report.
ROUTER_FAILURES = frozenset({502, 503, 504})
MAX_RETRY_AFTER_S = 60


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1 (0 would invite a busy loop)."""
    return str(min(MAX_RETRY_AFTER_S, max(1, math.ceil(seconds))))


def error(
    status: int,
    message: str,
    service: str | None,
    *,
    retry_after_s: float | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    extra = dict(headers or {})
    if retry_after_s is not None:
        extra["Retry-After"] = retry_after(retry_after_s)
    return web.json_response(
        {"error": message, "service": service}, status=status, headers=extra or None
    )
