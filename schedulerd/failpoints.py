"""Fault injection for tests of what must survive a fault (as etcd's gofail or TiKV's
fail-rs): `SCHEDULERD_FAILPOINTS="name=argument;..."` in the environment of the process.

Only whoever starts the process sets its environment, so this opens nothing to callers.
The failpoints:

- `loop-hang=PATH`: once the file PATH exists, the daemon's scheduling loop blocks
  for good in its next turn, as a deadlock would; everything else keeps serving. It
  shows that the systemd watchdog is fed by the loop's progress, not by a timer.
- `store-commit-fail=PATH`: while the file PATH exists, every group commit
  (schedulerd/store/group.py) writes its batch and then rolls it back, as a COMMIT
  that fails (disk full) would: none of the batch's callers is acknowledged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV = "SCHEDULERD_FAILPOINTS"


def parse(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    text = (os.environ if environ is None else environ).get(ENV, "")
    points: dict[str, str] = {}
    for item in text.split(";"):
        name, _, argument = item.strip().partition("=")
        if name:
            points[name] = argument
    return points
