"""The daemon's one aiohttp application (--http-listen). Routes are added in
`build_app`, each area by its own `add_*_routes(app, daemon)` function: probes and
metrics here; the web dashboard adds its own beside them.

The probes and /metrics are unauthenticated and read-only (GET and HEAD only: aiohttp
answers 405 to other methods): they show consumer, pool and node names and numbers,
never a job's command, environment, user or logs. Bind the port to loopback or a
management network (docs/metrics.md). The dashboard's routes have their own
authentication (schedulerd/dashboard)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from schedulerd.daemon.web.metrics import add_metrics_routes
from schedulerd.dashboard import add_dashboard_routes

if TYPE_CHECKING:
    from schedulerd.daemon.server import Daemon

DAEMON = web.AppKey("daemon", object)  # the Daemon (typed loosely: no import cycle)
# GET requests have no body: anything larger than this is refused (413).
MAX_BODY_BYTES = 4096
# /readyz fails when the scheduling loop has not completed a cycle without error for
# this many ticks (and at least STALL_MIN_S): a cycle that takes long, a loop that
# wedged, or cycles that all fail.
STALL_TICKS = 10
STALL_MIN_S = 10.0


def build_app(daemon: Daemon) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[DAEMON] = daemon
    add_probe_routes(app)
    add_metrics_routes(app, daemon)
    # More routes go here, each area with its own function.
    add_dashboard_routes(app, daemon)  # the web dashboard, under /ui/ (docs/dashboard.md)
    return app


def add_probe_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON]  # type: ignore[return-value]


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Ready to schedule: the store answers, a policy is in force, and the scheduling
    loop turned recently. 503 with what is wrong otherwise."""
    problems = not_ready(daemon_of(request))
    if problems:
        return web.Response(status=503, text="".join(f"{p}\n" for p in problems))
    return web.Response(text="ready\n")


def not_ready(daemon: Daemon) -> list[str]:
    problems = []
    try:
        daemon.store.db.conn.execute("SELECT 1").fetchone()
    except Exception as e:  # closed, or the file is gone
        problems.append(f"store: {type(e).__name__}")
    if daemon.state.policy is None:
        problems.append("policy: none in force")
    # A cycle that raised does not count: a loop whose every cycle fails (the store
    # unwritable, a bug in decide) schedules nothing, however fast it turns.
    good = daemon.loop.last_good_turn
    stall_s = max(STALL_TICKS * daemon.loop.tick_s, STALL_MIN_S)
    if good is None:
        if daemon.loop.last_turn is None:
            problems.append("loop: no scheduling cycle yet")
        else:
            problems.append("loop: every scheduling cycle so far failed (see the log)")
    elif time.monotonic() - good > stall_s:
        ago = time.monotonic() - good
        problems.append(
            f"loop: no successful scheduling cycle for {ago:.0f} s (stalled after {stall_s:g} s)"
        )
    return problems
