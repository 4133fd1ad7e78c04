"""What one cycle keeps for the next (issue 15: the incremental cycle)."""

from __future__ import annotations


class DecideCache:
    pass
