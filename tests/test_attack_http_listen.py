"""A careless admin's --http-listen: the port now takes dashboard logins (tokens) and
session cookies in clear text, yet a non-loopback address is bound silently, where the
gRPC listener refuses one without TLS unless --insecure (daemon/listeners.py)."""

from __future__ import annotations

import time
from pathlib import Path

from harness import Cluster, free_port

POLICY = """
version: 1
consumers:
  a: {share: 1}
"""


def test_a_non_loopback_http_listener_is_refused_or_warned_about(tmp_path: Path) -> None:
    port = free_port()
    cluster = Cluster(tmp_path, POLICY, daemon_args=("--http-listen", f"0.0.0.0:{port}"))
    try:
        try:
            cluster.start_daemon()
        except Exception:
            return  # refused at start: as the gRPC listener does
        time.sleep(0.5)
        if cluster.daemon is not None and cluster.daemon.poll() not in (None, 0):
            return  # refused
        log = cluster.log_tail(400)
        warned = [
            line
            for line in log.splitlines()
            if " WARNING " in line
            and ("clear text" in line or "WITHOUT TLS" in line.upper())
            and str(port) in line
        ]
        assert warned, "no refusal and no warning for a plaintext non-loopback HTTP port"
    finally:
        cluster.stop()
