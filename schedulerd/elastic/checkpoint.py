"""Checkpoints for jobs that are stopped (SIGTERM) and run again later.

The scheduler stops a job by SIGTERM, waits its grace, then SIGKILLs it; a preempted job runs
again later as a new attempt (SCHEDULERD_ATTEMPT goes up) with the same command line, so it
resumes from whatever it saved. The handler only sets a flag: the script saves at its next
step boundary, where the state is consistent, so a step should take well under the grace.

Saving is atomic (a temporary file in the same directory, fsync, os.replace, fsync of the
directory): a SIGKILL in the middle of a save leaves the previous checkpoint intact, never a
torn one. For a job that may run on another node next time, the path must be on storage that
node sees too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from schedulerd.elastic.signals import FLAGS, install_stop_handler


class Checkpointer:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        install_stop_handler()

    def should_stop(self) -> bool:
        """True once SIGTERM has arrived (or `request_stop` was called)."""
        return FLAGS.stop

    def request_stop(self) -> None:
        FLAGS.stop = True

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> dict[str, Any] | None:
        """The last saved state, on the CPU, or None when there is none. Only plain data
        (tensors, numbers, strings, lists, dicts) is loaded: weights_only, no pickled code."""
        if not self.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{self.path} does not hold a checkpoint dict")
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable only once the directory is
        finally:
            os.close(fd)
