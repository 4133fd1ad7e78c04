"""SIGUSR1 (release) and SIGTERM (stop) become flags read at step boundaries.

A handler only sets a flag: the worker must finish its step and leave at the boundary, in
the same step as everyone else, which only the boundary protocol can arrange (job.py).
The one exception is a joiner that has not announced itself yet: nobody waits for it, so a
release makes it exit 0 at once (docs/elastic.md, "Growing"), even in the middle of
`import torch`.

Python runs handlers in the main thread between bytecodes: while the main thread is inside
a long C++ call (a collective, a store request) the flag is set only when that call returns,
which is why every blocking call in this package is bounded.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from types import FrameType

from schedulerd.elastic.exits import Released


@dataclass
class Flags:
    release: bool = False  # SIGUSR1 seen
    stop: bool = False  # SIGTERM seen (or requested by the script)
    exit_on_release: bool = False  # a joiner not yet announced: leave now


FLAGS = Flags()
_installed = {"usr1": False, "term": False}


def _on_usr1(signum: int, frame: FrameType | None) -> None:
    FLAGS.release = True
    if FLAGS.exit_on_release:
        raise Released("released before joining")


def _on_term(signum: int, frame: FrameType | None) -> None:
    FLAGS.stop = True


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install_release_handler(*, exit_at_once: bool) -> None:
    """SIGUSR1's default action kills the process; an elastic worker must survive it."""
    FLAGS.exit_on_release = exit_at_once
    if exit_at_once and FLAGS.release:
        raise Released("released before joining")
    if not _installed["usr1"] and _main_thread():
        signal.signal(signal.SIGUSR1, _on_usr1)
        _installed["usr1"] = True


def install_stop_handler() -> None:
    """Only once the script has a Job or a Checkpointer: until then SIGTERM kills it, which
    is right for a script that cannot save anything."""
    if not _installed["term"] and _main_thread():
        signal.signal(signal.SIGTERM, _on_term)
        _installed["term"] = True
