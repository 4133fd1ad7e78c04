"""HOST:PORT listen addresses, as the daemon's --http-listen and the agent's
--metrics-listen take them (one parser, so both read the same way)."""

from __future__ import annotations

import argparse


def split_host_port(address: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:PORT for IPv6) -> (host, port); ValueError if malformed. An empty
    host is loopback."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def listen_address(text: str) -> str:
    """An argparse type: HOST:PORT, or "" for off."""
    if text:
        try:
            split_host_port(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text
