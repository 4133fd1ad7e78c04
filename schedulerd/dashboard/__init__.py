"""The web dashboard (docs/dashboard.md): read-only pages of the cluster served by the
daemon's HTTP port (--http-listen) under /ui/, with the API's authentication and
redaction. Plain HTML, CSS and JavaScript in static/: no build step, nothing fetched
from elsewhere. `add_dashboard_routes(app, daemon)` adds it to an aiohttp application."""

from schedulerd.dashboard.routes import add_dashboard_routes

__all__ = ["add_dashboard_routes"]
