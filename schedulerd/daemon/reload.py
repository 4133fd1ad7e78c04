"""SIGHUP (`systemctl reload`): re-read the policy file, one reload at a time.

A reload that fails changes nothing: the policy in force stays, and the log says why
with the file, line and key (docs/deploy.md)."""

from __future__ import annotations

import asyncio
import logging

from schedulerd.daemon.policy_swap import PolicyRefused
from schedulerd.daemon.server import Daemon
from schedulerd.policy import PolicyError
from schedulerd.sdnotify import Notifier
from schedulerd.store import StoreUnavailable

log = logging.getLogger("schedulerd.reload")


class Reloads:
    def __init__(self, daemon: Daemon, notifier: Notifier) -> None:
        self.daemon = daemon
        self.notifier = notifier
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        """From the signal handler: start a reload, or run one more after the current
        one (signals that come meanwhile are one request: the file is read anew)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            self.notifier.reloading()
            await self.reload_once()
            self.notifier.ready()
            if not self._again:
                return

    async def reload_once(self) -> bool:
        try:
            outcome = await self.daemon.reload_policy()
        except PolicyError as e:
            log.error("reload: the policy in force stays; the file has errors:\n%s", e)
            return False
        except (PolicyRefused, StoreUnavailable) as e:
            log.error("reload: the policy in force stays: %s", e)
            return False
        log.info("reload: %s", outcome)
        return True
