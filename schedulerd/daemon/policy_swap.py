"""Putting a new policy in force: the one path for `ApplyPolicy` and a SIGHUP reload.

Checked first (no leaf may vanish under waiting or running jobs), committed to the store,
and only then in memory (ARCHITECTURE: commit before apply)."""

from __future__ import annotations

from schedulerd.core.model import Policy
from schedulerd.daemon.state import ClusterState
from schedulerd.store import PolicyRecord

# How a policy applied through the API is recorded (its source_name after it), so that
# it is never taken for one read from the daemon's own policy file (Daemon.reload_policy).
API_SOURCE = "api:"


class PolicyRefused(Exception):
    """A valid policy that cannot replace the one in force now."""


def refusal(state: ClusterState, policy: Policy, source: str) -> str | None:
    """Why `policy` cannot be put in force now, or None if it can."""
    orphans = state.orphaned_consumers(policy)
    if not orphans:
        return None
    listed = ", ".join(f"{c} ({n} jobs)" for c, n in sorted(orphans.items()))
    return (
        f"policy {source} refused: it has no leaf consumer for jobs that are waiting "
        f"or running: {listed}; keep those consumers or cancel their jobs first"
    )


def put_in_force(state: ClusterState, policy: Policy, text: str, source: str) -> PolicyRecord:
    """Commit `policy` and make it the one in force. Raises PolicyRefused (nothing
    changed) or StoreUnavailable (nothing changed either)."""
    why = refusal(state, policy, source)
    if why is not None:
        raise PolicyRefused(why)
    record = state.store.save_policy(text, source, state.clock())
    state.set_policy(policy, record)
    return record
