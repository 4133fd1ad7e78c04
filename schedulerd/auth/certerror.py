"""CertError alone: what the CLI catches without importing `cryptography` (about 40 ms
of a `schedctl` start that needs no certificate)."""

from __future__ import annotations


class CertError(Exception):
    """A certificate or key is missing, unreadable, or not what it must be."""
