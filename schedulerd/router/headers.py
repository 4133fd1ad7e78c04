"""Which headers cross the router, each way (RFC 9110 section 7.6.1: hop-by-hop headers
are for one connection and never forwarded)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never sent to a replica: the caller's token is for the router (a replica runs as the
# model's owner, who must not see callers' tokens); Host names the router, and the
# client library sets the replica's; Expect: the router already answered 100-continue;
# Content-Length: the client library sets it from the body it sends.
NOT_FORWARDED = frozenset({"authorization", "host", "expect", "content-length"})


def _connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    """Headers that a Connection header declares hop-by-hop."""
    named: set[str] = set()
    for value in headers.getall("connection", []):
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def to_replica(
    headers: CIMultiDictProxy[str], peer: str | None, scheme: str, host: str | None
) -> CIMultiDict[str]:
    """The caller's headers as a replica gets them, with X-Forwarded-For (the caller's
    address appended to any the caller sent), -Proto and -Host."""
    drop = HOP_BY_HOP | NOT_FORWARDED | _connection_named(headers)
    out: CIMultiDict[str] = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
    if peer:
        earlier = ", ".join(out.popall("x-forwarded-for", []))
        out["X-Forwarded-For"] = f"{earlier}, {peer}" if earlier else peer
    out["X-Forwarded-Proto"] = scheme
    if host:
        out["X-Forwarded-Host"] = host
    return out


def to_caller(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """A replica's response headers as the caller gets them."""
    drop = HOP_BY_HOP | _connection_named(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
