"""How a worker ends when it is asked to (docs/elastic.md, "Signals").

Both are SystemExit, so an uncaught one ends the process with its code and no traceback,
while `finally` blocks and context managers in the script still run. A script may catch them
to do its own cleanup, and should re-raise.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

# What a shell reports for a process ended by SIGTERM (128 + 15). A stopped job is not a
# success: the agent sent SIGTERM and knows why, and the job resumes from its checkpoint.
STOPPED_EXIT_CODE = 143


_leaving_with: list[int] = []  # the code of the Released/Stopped this process is ending with


class Released(SystemExit):
    """This worker was released (SIGUSR1) and has left the job: exit code 0."""

    def __init__(self, why: str = "released") -> None:
        super().__init__(0)
        self.why = why
        _leaving_with[:] = [0]


class Stopped(SystemExit):
    """The job was stopped (SIGTERM); the checkpoint, if any, has been saved: exit code 143."""

    def __init__(self, why: str = "stopped") -> None:
        super().__init__(STOPPED_EXIT_CODE)
        self.why = why
        _leaving_with[:] = [STOPPED_EXIT_CODE]


@atexit.register  # registered before torch is imported, so it runs after torch's handlers
def _exit_now() -> None:
    """Once a released or stopped worker has unwound (the script's `finally` blocks and its
    later atexit handlers have run), skip the rest of interpreter shutdown: with torch and
    dynamo loaded it takes 1.5-3.5 s on a busy 2-core machine, during which the GPU is still
    held and the agent's grace runs. A script that catches Released or Stopped must re-raise
    it: the exit code is theirs."""
    if _leaving_with:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_leaving_with[0])


class ElasticError(RuntimeError):
    """A peer died, stalled past the timeout, or broke the protocol. Not recoverable here:
    the worker should exit non-zero (an uncaught ElasticError does)."""


def first_line(e: BaseException) -> str:
    """torch's errors carry a C++ backtrace after their first line: keep the message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
