"""The decision core as it was before issue 15's incremental cycle (schedulerd/core at
8d29540), kept as the reference the plan-equality suite (tests/test_core_incremental.py)
compares the incremental cycle with: every plan, and every waiting job's reason, must be
the same. It shares the model (schedulerd/core/model.py): same inputs, same plan type;
and the parts the incremental cycle did not change (entitlement, ordering, windows) are
the core's own, not copies.
Not to be changed, but to follow a deliberate change of the core's decisions."""

from reference_core.decide import decide

__all__ = ["decide"]
