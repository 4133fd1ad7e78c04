"""The admin's policy file: YAML in, a validated core `Policy` out, or a `PolicyError`
naming the file, line and key of every problem."""

from schedulerd.policy.errors import PolicyError, PolicyIssue
from schedulerd.policy.loader import (
    default_policy_text,
    load_policy,
    load_policy_file,
    read_policy_file,
)

__all__ = [
    "PolicyError",
    "PolicyIssue",
    "default_policy_text",
    "load_policy",
    "load_policy_file",
    "read_policy_file",
]
