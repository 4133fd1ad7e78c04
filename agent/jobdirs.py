"""A job's folders on the node, each owned by the job's user, in a folder only the agent may
write: `<state>/logs/job-<id>/` holds its log, `<state>/work/job-<id>/` is the working dir
of a job that names none.

The agent makes each one right in its own folder (mode 0755, the agent's), so no path it
follows to them goes through a folder a job can write, and no job can rename, replace or
redirect them. Inside them a job does as it likes: what the agent opens there is opened
relative to the folder and without following links (agent/joblog.py). They are 0700, so a job
of another user can neither read a job's log nor enter its working dir.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

log = logging.getLogger(__name__)


def owned_dir(parent: Path, name: str, uid: int, gid: int) -> Path:
    """`parent/name`, a folder of `uid`'s (mode 0700), made when missing. One found with
    another owner is set aside, renamed, and a new one made: it is not this user's (a job id
    used again after the daemon's store was reset, or a user made since an attempt was
    refused for want of it), and what another user left in it is not to be handed over."""
    parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = parent / name
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        found = os.lstat(path)
        if stat.S_ISDIR(found.st_mode) and found.st_uid == uid:
            return path
        aside = parent / f"{name}.uid-{found.st_uid}.{time.time_ns()}"
        log.warning("%s belongs to uid %d, not %d: renamed %s", path, found.st_uid, uid, aside)
        os.rename(path, aside)
        os.mkdir(path, 0o700)
    if os.lstat(path).st_uid != uid:  # a root agent making a folder for a job's user
        os.chown(path, uid, gid, follow_symlinks=False)
    return path
