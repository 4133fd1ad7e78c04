"""The dashboard's HTTP routes, added to the daemon's aiohttp application (--http-listen)
by `add_dashboard_routes(app, daemon)`: pages under /ui/, their JSON under /ui/api/.

Every page and every JSON answer needs a session cookie (from the login form) or an
`Authorization: Bearer` header, and both are checked through the daemon's gate on every
request, as an API call is: a token expired or revoked since the login ends its session.
The token needs the `read` scope (or none). Read-only: GET, plus the POST of the login
and logout forms (docs/dashboard.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

from aiohttp import web

from schedulerd.auth.authorize import NOTHING, Action, authorize
from schedulerd.auth.identity import ANONYMOUS, Kind
from schedulerd.daemon.gate import Gate, Unauthenticated
from schedulerd.daemon.links import AgentLinks, NodeNotConnected
from schedulerd.daemon.state import ClusterState
from schedulerd.dashboard import views
from schedulerd.dashboard.history import History
from schedulerd.dashboard.history import build as build_history
from schedulerd.dashboard.sessions import MAX_TOKEN_CHARS, SessionBook
from schedulerd.dashboard.views import Viewer, as_json

if TYPE_CHECKING:
    from schedulerd.daemon.experiments import ExperimentController
    from schedulerd.daemon.serving import ServiceController

log = logging.getLogger("schedulerd.dashboard")

PREFIX = "/ui"
COOKIE = "schedulerd_session"
MAX_FORM_BYTES = 8192
FORM_TIMEOUT_S = 10.0  # to read a login form's body
TAIL_BYTES = 64 * 1024  # a log's tail on a job page
MAX_PROBES = 48  # reads to find a log's end (doubling, then halving)
LOG_READS_AT_ONCE = 8  # log reads through agents, all sessions together
MAX_ID = 2**63 - 1
PAGES = ("/", "/nodes", "/experiments", "/services")
STATIC = {
    "app.js": "application/javascript",
    "login.js": "application/javascript",
    "style.css": "text/css",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it a browser sends "Origin: null" on the login form.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class DaemonParts(Protocol):
    """What the dashboard reads of the daemon (schedulerd/daemon/server.py's Daemon)."""

    state: ClusterState
    gate: Gate
    links: AgentLinks
    experiments: ExperimentController | None
    services: ServiceController | None


class Dashboard:
    def __init__(self, daemon: DaemonParts, history: History | None = None) -> None:
        self.daemon = daemon
        self.sessions = SessionBook(daemon.state.clock)
        self.history = history or History()
        self._log_reads = asyncio.Semaphore(LOG_READS_AT_ONCE)
        self._assets = {
            name: (resources.files(__package__).joinpath("static", name).read_bytes(), kind)
            for name, kind in {
                **STATIC,
                "index.html": "text/html",
                "login.html": "text/html",
            }.items()
        }
        self._history_task: asyncio.Task[None] | None = None

    # -- who is asking ----------------------------------------------------

    def viewer(self, request: web.Request) -> Viewer | None:
        """The caller, if their credential is good and may read; else None (their
        session, if any, is closed when the token no longer is)."""
        gate = self.daemon.gate
        header = request.headers.get("Authorization")
        cookie = request.cookies.get(COOKIE)
        token: str | None = None
        bearer = False
        if header is not None:
            # Only a Bearer header is a credential here: another scheme (a proxy's Basic
            # auth, forwarded on every request) leaves the session cookie to answer.
            scheme, _, rest = header.strip().partition(" ")
            if scheme.lower() == "bearer":
                token, bearer = rest.strip(), True
        if not bearer:
            token = self.sessions.token(cookie)
        if not token:
            return None
        try:
            who = gate.identify_bearer(token)
        except Unauthenticated:
            if not bearer:
                self.sessions.close(cookie)
            return None
        rules = gate.rules()
        if who.kind is not Kind.USER:
            return None
        if not authorize(who, Action.LIST_CONSUMERS, NOTHING, rules).allowed:
            return None  # a token without the read scope
        return Viewer(who, rules)

    # -- pages and assets -------------------------------------------------

    def asset(self, name: str, status: int = 200) -> web.Response:
        body, kind = self._assets[name]
        return secured(web.Response(body=body, content_type=kind, status=status))

    async def page(self, request: web.Request) -> web.StreamResponse:
        if self.viewer(request) is None:
            where = quote(request.path, safe="/")
            return see_other(f"{PREFIX}/login?next={where}")
        return self.asset("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return self.asset(name)

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return self.asset("login.html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        """The form's POST: a token in, a session cookie out. Same-origin only (the
        browser's Origin header), a small body, and the token checked as the API does."""
        same_origin(request)
        if (request.content_length or 0) > MAX_FORM_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_FORM_BYTES, request.content_length or 0)
        body = await read_form(request)
        try:
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        except ValueError:  # more fields than the form has
            form = {}
        token = (form.get("token") or [""])[0].strip()
        back = safe_next((form.get("next") or [""])[0])
        gate = self.daemon.gate
        problem = ""
        who = ANONYMOUS
        if not token or len(token) > MAX_TOKEN_CHARS:
            problem = "refused"
        else:
            try:
                who = gate.identify_bearer(token)
            except Unauthenticated as e:
                gate.audit.refused(
                    ANONYMOUS, Action.LIST_CONSUMERS, NOTHING, "UNAUTHENTICATED", f"dashboard: {e}"
                )
                problem = "refused"
        if not problem and who.kind is not Kind.USER:
            problem = "node"
        if not problem:
            decision = authorize(who, Action.LIST_CONSUMERS, NOTHING, gate.rules())
            if not decision.allowed:
                gate.audit.refused(
                    who, Action.LIST_CONSUMERS, NOTHING, "PERMISSION_DENIED", decision.reason
                )
                problem = "scope"
        if problem:
            return see_other(f"{PREFIX}/login?failed={problem}&next={quote(back, safe='/')}")
        cookie = self.sessions.open(token, who.name)
        log.info("dashboard: %s logged in", who.label)
        response = see_other(back)
        response.set_cookie(
            COOKIE,
            cookie,
            path=f"{PREFIX}/",
            max_age=int(self.sessions.lifetime_s),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        same_origin(request)
        self.sessions.close(request.cookies.get(COOKIE))
        response = see_other(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path=f"{PREFIX}/")
        return response

    # -- JSON ---------------------------------------------------------------

    def api(
        self, build: Callable[[Viewer, web.Request], Awaitable[dict[str, Any] | None]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            viewer = self.viewer(request)
            if viewer is None:
                return json_response({"error": "log in first (a token with scope read)"}, 401)
            try:
                data = await build(viewer, request)
            except Refused as e:
                return json_response({"error": e.message}, e.status)
            if data is None:
                return json_response({"error": "not found"}, 404)
            return json_response(data)

        return handler

    async def api_me(self, viewer: Viewer, request: web.Request) -> dict[str, Any]:
        return views.me(viewer)

    async def api_overview(self, viewer: Viewer, request: web.Request) -> dict[str, Any]:
        return views.overview(viewer, self.daemon.state)

    async def api_history(self, request: web.Request) -> web.StreamResponse:
        """The chart's samples (History.encoded): `?since=T` gives only those after T,
        what a page that has the rest asks for."""
        viewer = self.viewer(request)
        if viewer is None:
            return json_response({"error": "log in first (a token with scope read)"}, 401)
        since: float | None = None
        text = request.query.get("since")
        if text is not None:
            try:
                since = float(text) if len(text) <= 32 else math.nan
            except ValueError:
                since = math.nan
            if not math.isfinite(since):
                return json_response({"error": "since: a time in seconds"}, 400)
        history = self.history
        shown = viewer.consumers()
        body = history.cached(shown) if since is None else None
        if body is None:
            seq, chosen = history.select(since)
            args = (chosen, shown, history.every_s, history.keep)
            if since is None:  # up to 6 hours of up to 1,000 consumers: not on the loop
                body = await asyncio.to_thread(build_history, *args)
                history.remember(shown, seq, body)
            else:  # the samples since the page's last poll: a few
                body = build_history(*args)
        return secured(web.Response(body=body, content_type="application/json"))

    async def api_nodes(self, viewer: Viewer, request: web.Request) -> dict[str, Any]:
        return views.nodes(viewer, self.daemon.state)

    async def api_job(self, viewer: Viewer, request: web.Request) -> dict[str, Any] | None:
        job_id = _id(request)
        return None if job_id is None else views.job_page(viewer, self.daemon.state, job_id)

    async def api_log(self, viewer: Viewer, request: web.Request) -> dict[str, Any] | None:
        """The tail of each part's log (`?node=N&offset=O`: what follows O on node N)."""
        job_id = _id(request)
        state = self.daemon.state
        job = None if job_id is None else state.jobs.get(job_id) or state.store.load_job(job_id)
        if job is None or not viewer.sees(job.consumer, job.user):
            return None
        if not viewer.may(Action.READ_LOGS, job.consumer, job.user):
            raise Refused(403, "the logs of this job are its owner's and its admins'")
        node = request.query.get("node")
        offset_text = request.query.get("offset")
        offset = _int(offset_text)
        if offset_text is not None and offset is None:
            raise Refused(400, "offset: a byte offset (digits)")
        parts = []
        for part in sorted(job.parts, key=lambda p: p.node_rank):
            if node is not None and part.node != node:
                continue
            entry: dict[str, Any] = {"node": part.node, "rank": part.node_rank}
            try:
                async with self._log_reads:
                    if node is not None and offset is not None:
                        data, found, end = await self._read(part.node, job.id, offset, TAIL_BYTES)
                        entry["more"] = len(data) >= TAIL_BYTES
                        entry["from"] = offset
                    else:
                        data, found, start, end = await self._tail(part.node, job.id)
                        entry["from"] = start
                entry.update(text=data.decode("utf-8", "replace"), found=found, next=end)
            except (NodeNotConnected, TimeoutError):
                entry["error"] = f"node {part.node}'s agent is not connected"
            parts.append(entry)
        return {"job_id": job.id, "state": job.state.value, "parts": parts}

    async def _read(
        self, node: str, job_id: int, offset: int, size: int
    ) -> tuple[bytes, bool, int]:
        return await self.daemon.links.read_log(node, job_id, offset, size)

    async def _tail(self, node: str, job_id: int) -> tuple[bytes, bool, int, int]:
        """The last TAIL_BYTES of a log: (data, found, its start, its end). The agent
        reads from an offset only, so the end is found first: doubling, then halving."""
        data, found, end = await self._read(node, job_id, 0, TAIL_BYTES)
        if len(data) < TAIL_BYTES or not found:
            return data, found, 0, end
        low, high, probes = end, end * 2, 0  # the size is at least `low`
        while probes < MAX_PROBES:
            probes += 1
            more, _, _ = await self._read(node, job_id, high - 1, 1)
            if not more:
                break
            low, high = high, high * 2
        while low < high and probes < MAX_PROBES:  # the size is in [low, high)
            probes += 1
            mid = (low + high) // 2
            more, _, _ = await self._read(node, job_id, mid, 1)
            if more:
                low = mid + 1
            else:
                high = mid
        start = max(0, low - TAIL_BYTES)
        data, found, end = await self._read(node, job_id, start, TAIL_BYTES)
        return data, found, start, end

    async def api_experiments(self, viewer: Viewer, request: web.Request) -> dict[str, Any]:
        from schedulerd.daemon.experiments.convert import experiment_to_pb

        ctl = self.daemon.experiments
        listed = []
        for exp, trials in ctl.list() if ctl is not None else []:
            consumer, owner = exp.spec.consumer, exp.spec.user
            # As ListExperiments: only those seen in full (an experiment is its command).
            if viewer.sees(consumer, owner) and viewer.in_full(consumer, owner):
                listed.append(as_json(experiment_to_pb(exp, trials, self.daemon.state, False)))
        return {"me": views.me(viewer), "experiments": listed[-views.MAX_LISTED :]}

    async def api_experiment(self, viewer: Viewer, request: web.Request) -> dict[str, Any] | None:
        from schedulerd.daemon.experiments.convert import experiment_to_pb

        ctl = self.daemon.experiments
        exp_id = _id(request)
        got = None if ctl is None or exp_id is None else ctl.get(exp_id)
        if got is None:
            return None
        exp, trials = got
        consumer, owner = exp.spec.consumer, exp.spec.user
        if not viewer.sees(consumer, owner) or not viewer.may(
            Action.GET_EXPERIMENT, consumer, owner
        ):
            return None
        msg = experiment_to_pb(exp, trials, self.daemon.state, True)
        return {"me": views.me(viewer), "experiment": as_json(msg)}

    async def api_services(self, viewer: Viewer, request: web.Request) -> dict[str, Any]:
        from schedulerd.daemon.serving.convert import service_to_pb

        ctl = self.daemon.services
        listed: list[dict[str, Any]] = []
        if ctl is None:
            return {"me": views.me(viewer), "services": listed}
        for svc in ctl.listed(False):
            consumer, owner = svc.spec.consumer, svc.spec.user
            if viewer.sees(consumer, owner):
                full = viewer.in_full(consumer, owner)
                listed.append(as_json(service_to_pb(ctl, svc, False, redacted=not full)))
        return {"me": views.me(viewer), "services": listed[-views.MAX_LISTED :]}

    # -- the chart's samples ----------------------------------------------

    async def start_history(self, app: web.Application) -> None:
        state = self.daemon.state
        self._history_task = asyncio.create_task(
            self.history.run(state.clock, lambda: state.consumer_states)
        )

    async def stop_history(self, app: web.Application) -> None:
        if self._history_task is not None:
            self._history_task.cancel()
            await asyncio.gather(self._history_task, return_exceptions=True)


DASHBOARD = web.AppKey("dashboard", Dashboard)


def add_dashboard_routes(app: web.Application, daemon: DaemonParts) -> Dashboard:
    """The dashboard's pages and JSON under /ui/, and its history sampler (started and
    stopped with the application)."""
    dash = Dashboard(daemon)
    app[DASHBOARD] = dash
    r = app.router
    r.add_get(PREFIX, _to_root)
    for page in PAGES:
        r.add_get(PREFIX + page, dash.page)
    r.add_get(PREFIX + "/jobs/{id}", dash.page)
    r.add_get(PREFIX + "/experiments/{id}", dash.page)
    r.add_get(PREFIX + "/login", dash.login_page)
    r.add_post(PREFIX + "/login", dash.login)
    r.add_post(PREFIX + "/logout", dash.logout)
    r.add_get(PREFIX + "/static/{name}", dash.static)
    api = PREFIX + "/api"
    r.add_get(api + "/me", dash.api(dash.api_me))
    r.add_get(api + "/overview", dash.api(dash.api_overview))
    r.add_get(api + "/history", dash.api_history)
    r.add_get(api + "/nodes", dash.api(dash.api_nodes))
    r.add_get(api + "/jobs/{id}", dash.api(dash.api_job))
    r.add_get(api + "/jobs/{id}/log", dash.api(dash.api_log))
    r.add_get(api + "/experiments", dash.api(dash.api_experiments))
    r.add_get(api + "/experiments/{id}", dash.api(dash.api_experiment))
    r.add_get(api + "/services", dash.api(dash.api_services))
    app.on_startup.append(dash.start_history)
    app.on_cleanup.append(dash.stop_history)
    return dash


async def _to_root(request: web.Request) -> web.StreamResponse:
    return see_other(PREFIX + "/")


def secured(response: web.Response) -> web.Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def json_response(data: dict[str, Any], status: int = 200) -> web.Response:
    return secured(
        web.Response(text=json.dumps(data), status=status, content_type="application/json")
    )


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def see_other(where: str) -> web.Response:
    return secured(web.Response(status=303, headers={"Location": where}))


def same_origin(request: web.Request) -> None:
    """A form POST from another site is refused: its Origin names that site. (The
    session cookie is SameSite=Strict too, so another site's POST carries none.)"""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if origin == "null" or urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(text="cross-site form refused\n")


def safe_next(where: str) -> str:
    """Where the login goes next: a dashboard page of this site only."""
    if where.startswith(PREFIX + "/") and not where.startswith("//") and "\\" not in where:
        path = urlsplit(where).path
        if path.startswith(PREFIX + "/") and "//" not in path:
            return path
    return PREFIX + "/"


async def read_form(request: web.Request) -> bytes:
    """The whole body of a form POST, however many pieces it comes in: at most
    MAX_FORM_BYTES (else 413) and within FORM_TIMEOUT_S (else 408)."""
    body = bytearray()
    try:
        async with asyncio.timeout(FORM_TIMEOUT_S):
            while len(body) <= MAX_FORM_BYTES:
                chunk = await request.content.read(MAX_FORM_BYTES + 1 - len(body))
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the form took too long\n") from None
    if len(body) > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_FORM_BYTES, len(body))
    return bytes(body)


def _int(text: str | None) -> int | None:
    """ASCII digits only: str.isdigit() is true of '\u00b2' too, which int() refuses."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


def _id(request: web.Request) -> int | None:
    value = _int(request.match_info.get("id"))
    return value if value is not None and 0 < value <= MAX_ID else None
