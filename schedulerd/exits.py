"""Exit statuses in words: a negative code is the signal that ended the process
(as Python's subprocess reports it), so -15 reads "killed by SIGTERM"."""

from __future__ import annotations

import signal


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(code: int) -> str:
    """`exited with 3`, `killed by SIGTERM`; a shell's 128+N says which signal too."""
    if code < 0:
        return f"killed by {signal_name(-code)}"
    if 128 < code <= 128 + 64:
        return f"exited with {code} (128 + {signal_name(code - 128)})"
    return f"exited with {code}"
