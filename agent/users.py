"""Who a job runs as: its user's uid, primary gid and groups on this node, or why it may not
run here.

The daemon names the job's user; this node's passwd and group databases say what that name
is here (a cluster keeps them the same on every node, through LDAP or sssd). A root agent
runs every job as its user, and a job whose user is root (uid 0, whatever its name) only when
the daemon says the policy allows it (StartJob.allow_root). An agent that is not root cannot
switch users: it runs only the jobs of its own user.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from agent.model import JobSpec


@dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int  # the primary group, from the passwd entry
    groups: tuple[int, ...]  # every group of the user, the primary one included
    home: str
    shell: str


class UserRefused(Exception):
    """The job may not run on this node as its user; the message says why."""


def job_user(spec: JobSpec, node: str, agent_uid: int) -> JobUser:
    """The identity `spec` runs as on this node (`agent_uid`: the agent's own effective uid);
    UserRefused when there is none it may run as."""
    name = spec.user
    if not name:
        raise UserRefused(f"the job names no user to run as on node {node}")
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        raise UserRefused(f"user {name!r} does not exist on node {node}") from None
    if entry.pw_uid == 0 and not spec.allow_root:
        raise UserRefused(
            f"jobs of {name} may not run as root on {spec.consumer or 'this consumer'}: the "
            f"policy's run_as_root is off (user {name!r} is uid 0 on node {node})"
        )
    if agent_uid != 0 and entry.pw_uid != agent_uid:
        raise UserRefused(
            f"the agent on node {node} is not root (uid {agent_uid}): it cannot run jobs "
            f"as user {name!r}"
        )
    return JobUser(
        name=name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=tuple(os.getgrouplist(name, entry.pw_gid)),
        home=entry.pw_dir,
        shell=entry.pw_shell,
    )
