"""schedulerd-router: the HTTP front of inference services (docs/router.md).

Pure parts (no I/O): table.py (routes, readiness, least-in-flight picking), stats.py
(counters, latency percentiles), report.py (a load report's numbers), retry.py (which
failures may go to another replica), headers.py (what crosses the router).
The shell: proxy.py (the aiohttp handler) with body.py, hold.py (requests waiting for a
ready replica), access.py (the token check and its cache) and answers.py; probe.py
(readiness probes); link.py and wire.py (the daemon's Routing service); state.py (what
they share); main.py (options, config file, signals, sd_notify).
"""
