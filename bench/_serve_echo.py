"""A replica that answers at once (bench/serve.py's router overhead): every path, any
method, 200 with a two-byte body, on $SCHEDULERD_PORT. What the router adds to a
request is the latency through it minus the latency straight to this server."""

from __future__ import annotations

import os

from aiohttp import web


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(
        app,
        host="0.0.0.0",
        port=int(os.environ.get("SCHEDULERD_PORT", "8000")),
        access_log=None,
        print=None,
        shutdown_timeout=1,
    )


if __name__ == "__main__":
    main()
