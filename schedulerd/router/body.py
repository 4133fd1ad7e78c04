"""A caller's request body on its way to a replica: bounded by --max-body-bytes, and
sendable again to another replica when a first one failed before taking it.

A small body with a Content-Length is read first (at most BUFFER_BYTES), so a retry
can send it again; it must arrive within --body-timeout (a caller sending it a byte at a
time would otherwise hold its connection for ever: 408). A larger or chunked one streams
through, counted as it goes, within the service's request timeout like the rest of the
exchange; it can be retried only if no byte of it was taken yet (the connection failed
before the body was sent), since the bytes read from the caller are gone.

`Expect: 100-continue` is answered here, once the request passed every check that needs
no body (service, access, Content-Length): a caller refused anyway sends no body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

BUFFER_BYTES = 1 << 20  # a typical inference request (a JSON prompt) is far smaller
CHUNK_BYTES = 1 << 16
BODY_TIMEOUT_S = 30.0  # 1 MiB at 35 kB/s
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BodyTooLarge(Exception):
    pass


class CallerBodyFailed(Exception):
    """The caller's body ended before its length, or its connection failed: not the
    replica's fault."""


class CallerTooSlow(Exception):
    """The caller's body (one read first) did not arrive within its deadline."""


class Body:
    def __init__(self, request: web.Request, max_bytes: int) -> None:
        self._request = request
        self._max = max_bytes
        self._buffered: bytes | None = None
        self.started = False  # a streamed body: some of it was handed to a replica
        self.too_large = False
        self.caller_failed = False

    @classmethod
    async def read(
        cls, request: web.Request, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S
    ) -> Body:
        """The body, read now when small; BodyTooLarge when its Content-Length is over,
        CallerTooSlow when it was not all there within timeout_s."""
        body = cls(request, max_bytes)
        length = request.content_length
        if length is not None and length > max_bytes:
            raise BodyTooLarge
        if not request.body_exists:
            body._buffered = b""
            return body
        await _continue(request)
        if length is not None and length <= BUFFER_BYTES:
            try:
                async with asyncio.timeout(timeout_s):
                    body._buffered = await request.content.readexactly(length) if length else b""
            except TimeoutError:
                raise CallerTooSlow from None
            except (asyncio.IncompleteReadError, OSError, aiohttp.ClientError):
                raise CallerBodyFailed from None
        return body

    @property
    def streamed_length(self) -> int | None:
        """The Content-Length a streamed body is sent with (None: chunked, or buffered,
        whose length the client library sets): a replica that refuses chunked uploads
        still takes a large body that had a length."""
        return None if self._buffered is not None else self._request.content_length

    @property
    def resendable(self) -> bool:
        return self._buffered is not None or not self.started

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        if self._buffered is not None:
            return self._buffered or None
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            try:
                chunk = await self._request.content.readany()
            except (OSError, aiohttp.ClientError):
                self.caller_failed = True  # the client library wraps this; the flag tells
                raise CallerBodyFailed from None
            if not chunk:
                return
            sent += len(chunk)
            if sent > self._max:
                self.too_large = True  # the client library wraps this; the flag tells
                raise BodyTooLarge
            self.started = True
            yield chunk


def wants_continue(request: web.BaseRequest) -> bool:
    return (
        request.version >= aiohttp.HttpVersion11
        and request.headers.get("Expect", "").strip().lower() == "100-continue"
    )


async def _continue(request: web.Request) -> None:
    """`100 Continue` to a caller that waits for it before sending its body."""
    if wants_continue(request):
        await request.writer.write(CONTINUE)
        request.writer.output_size = 0  # as aiohttp's own: the answer is yet to come
