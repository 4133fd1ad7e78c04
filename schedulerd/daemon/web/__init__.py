"""The daemon's HTTP port (--http-listen): /healthz, /readyz and /metrics (docs/metrics.md),
and the place for the read-only web dashboard's routes. `app.build_app` makes the one
aiohttp application; `server.HttpServer` binds it."""
