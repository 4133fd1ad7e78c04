"""Inference services in the daemon (docs/serve.md)."""

from schedulerd.daemon.serving.controller import NotFound, Refused, ServiceController

__all__ = ["NotFound", "Refused", "ServiceController"]
