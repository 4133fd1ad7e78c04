"""The pure decision core: snapshot and policy in, plan with reasons out."""

from schedulerd.core.cache import DecideCache
from schedulerd.core.decide import decide
from schedulerd.core.entitlement import Division, divide
from schedulerd.core.model import (
    ROOT,
    Changes,
    ConsumerPath,
    ConsumerPolicy,
    ConsumerState,
    GpuSlot,
    Grow,
    Job,
    JobId,
    JobPhase,
    Node,
    NodeName,
    Order,
    Plan,
    Policy,
    Preempt,
    Shrink,
    Snapshot,
    Start,
    is_within,
    parent_of,
)
from schedulerd.core.submission import ClusterShape, check_submission
from schedulerd.core.usage import decay_usage

__all__ = [
    "ROOT",
    "Changes",
    "ClusterShape",
    "ConsumerPath",
    "ConsumerPolicy",
    "ConsumerState",
    "DecideCache",
    "Division",
    "GpuSlot",
    "Grow",
    "Job",
    "JobId",
    "JobPhase",
    "Node",
    "NodeName",
    "Order",
    "Plan",
    "Policy",
    "Preempt",
    "Shrink",
    "Snapshot",
    "Start",
    "check_submission",
    "decay_usage",
    "decide",
    "divide",
    "is_within",
    "parent_of",
]
