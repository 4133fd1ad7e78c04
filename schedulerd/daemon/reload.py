"""SIGHUP (`systemctl reload schedulerd`): re-read the config file and the policy file.

What can change live: `policy` (the file is re-read even when its name is unchanged, and
put in force if it changed since it was last applied: Daemon.reload_policy), `log-level`
and `admin`. Any other key that changed in the config file is logged as taking
effect at the next start. A flag given on the command line still wins over the file.
A reload that fails changes nothing: the log says why with the file, line and key
(docs/deploy.md). One reload at a time; signals meanwhile make one more."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from schedulerd.configfile import ConfigError, Source, read_config
from schedulerd.configfile.options import options
from schedulerd.daemon.listeners import cluster_admins
from schedulerd.daemon.policy_swap import PolicyRefused
from schedulerd.daemon.server import Daemon
from schedulerd.policy import PolicyError
from schedulerd.sdnotify import Notifier
from schedulerd.store import StoreUnavailable

log = logging.getLogger("schedulerd.reload")

LIVE = ("policy", "log_level", "admin")  # argparse dests that a reload applies


class Reloads:
    def __init__(
        self,
        daemon: Daemon,
        notifier: Notifier,
        args: argparse.Namespace | None = None,
        parser: argparse.ArgumentParser | None = None,
    ) -> None:
        self.daemon = daemon
        self.notifier = notifier
        self.args = args
        self.parser = parser
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        """From the signal handler: start a reload, or run one more after the current
        one (signals that come meanwhile are one request: the files are read anew)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            self.notifier.reloading()
            try:
                await self.reload_once()
            except Exception:  # a bug here must not take the daemon down with it
                log.exception("reload failed")
            self.notifier.ready()
            if not self._again:
                return

    async def reload_once(self) -> bool:
        # Off the event loop: the file is small and regular, but the disk may be slow.
        wanted = await asyncio.to_thread(self._config_values)
        if wanted is None:
            return False
        # The config's live keys apply even if the policy file turns out bad: they do
        # not depend on it, and the log says what happened to each.
        if "log_level" in wanted:
            logging.getLogger().setLevel(wanted["log_level"])
        if "admin" in wanted:
            admins = cluster_admins(wanted["admin"])
            if admins != self.daemon.gate.cluster_admins:
                log.info("reload: cluster admins now %s", ", ".join(sorted(admins)))
                self.daemon.gate.cluster_admins = admins
        if self.args is not None:
            for dest, value in wanted.items():
                setattr(self.args, dest, value)
        policy_path: Path | None = wanted.get("policy") or self.daemon.config.policy_path
        try:
            outcome = await self.daemon.reload_policy(policy_path)
        except PolicyError as e:
            log.error("reload: the policy in force stays; the file has errors:\n%s", e)
            return False
        except (PolicyRefused, StoreUnavailable) as e:
            log.error("reload: the policy in force stays: %s", e)
            return False
        log.info("reload: %s", outcome)
        return True

    def _config_values(self) -> dict[str, Any] | None:
        """The live values the config file asks for now (a key removed from it goes
        back to its default), or None if the file has errors: then nothing changes."""
        args, parser = self.args, self.parser
        path: Path | None = getattr(args, "config_path", None)
        if args is None or parser is None or path is None:
            return {}
        try:
            found = read_config(path, parser)
        except ConfigError as e:
            log.error("reload: nothing changed; the config file has errors:\n%s", e)
            return None
        sources: dict[str, Source] = getattr(args, "sources", {})
        wanted: dict[str, Any] = {}
        for key, option in options(parser).items():
            dest = option.action.dest
            if sources.get(dest) == Source("command line"):
                continue  # the flag still wins over the file
            value = found[dest][0] if dest in found else parser.get_default(dest)
            if dest in LIVE:
                wanted[dest] = value
            elif getattr(args, dest, value) != value:
                line = found[dest][1] if dest in found else 0
                log.warning(
                    "reload: %s changed in %s%s; it takes effect at the next start",
                    key,
                    path,
                    f":{line}" if line else "",
                )
        return wanted
