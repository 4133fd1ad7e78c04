"""Job arrays (docs/arrays.md): Slurm's `--array` index syntax, and the compact names
`123_7` (one element) and `123_[4-999]` (several). Pure functions, shared by the CLI
(which refuses early, with the same words) and the daemon (which decides)."""

from __future__ import annotations

from collections.abc import Iterable

# One call submits at most this many elements (one transaction, and that many jobs in
# the daemon's memory); an index is below MAX_INDEX (Slurm's default MaxArraySize is
# 1001: ours is larger, and still bounded).
MAX_ELEMENTS = 10_000
MAX_INDEX = 1_000_000
MAX_TEXT = 1024  # characters of an --array expression


class ArrayError(ValueError):
    """An --array expression that cannot be used; the message says why."""


def parse_indices(text: str) -> list[int]:
    """The indices of "0-999", "0-999:10", "1,3,5-7" (any mix, comma-separated), in
    ascending order without repeats. Raises ArrayError on anything else, on an index
    of MAX_INDEX or more, and past MAX_ELEMENTS distinct elements (an item is checked
    before it is expanded)."""
    if len(text) > MAX_TEXT:
        raise ArrayError(f"longer than {MAX_TEXT} characters")
    if "%" in text:
        raise ArrayError(
            "a %N limit on the elements running at once is not supported; "
            "submit without it (every element is scheduled as a job of its own)"
        )
    if not text.strip():
        raise ArrayError("empty; give indices like 0-999, 0-999:10 or 1,3,5-7")
    found: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        span, colon, step_text = item.partition(":")
        low_text, dash, high_text = span.partition("-")
        numbers = [low_text, high_text] if dash else [low_text]
        if colon:
            numbers.append(step_text)
        if not all(n.isascii() and n.isdigit() and len(n) <= 7 for n in numbers):
            raise ArrayError(f"{item!r} is not N, N-M or N-M:STEP (non-negative integers)")
        low = int(low_text)
        high = int(high_text) if dash else low
        step = int(step_text) if colon else 1
        if colon and not dash:
            raise ArrayError(f"{item!r}: a step needs a range, N-M:STEP")
        if high < low:
            raise ArrayError(f"{item!r}: the range ends before it starts")
        if step < 1:
            raise ArrayError(f"{item!r}: the step must be at least 1")
        if high >= MAX_INDEX:
            raise ArrayError(f"{item!r}: an index must be below {MAX_INDEX:,}")
        # One item is bounded before it is expanded (at most MAX_ELEMENTS set inserts
        # per item, MAX_TEXT characters of items); the array by its distinct indices.
        if (high - low) // step + 1 > MAX_ELEMENTS:
            raise ArrayError(f"more than {MAX_ELEMENTS:,} elements in one array")
        found.update(range(low, high + 1, step))
        if len(found) > MAX_ELEMENTS:
            raise ArrayError(f"more than {MAX_ELEMENTS:,} elements in one array")
    return sorted(found)


def compact(indices: Iterable[int]) -> str:
    """Indices as ranges and steps-of-one: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    out: list[str] = []
    run: list[int] = []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(_span(run))
        run = [i]
    if run:
        out.append(_span(run))
    return ",".join(out)


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def element_name(array_id: int, index: int) -> str:
    return f"{array_id}_{index}"


def parse_job_ref(text: str) -> tuple[int, int | None]:
    """A job as the CLI takes it: "123" (a job, or a whole array), or "123_7" (element
    7 of array 123). Raises ArrayError on anything else."""
    head, sep, tail = text.partition("_")
    if not (head.isascii() and head.isdigit() and len(head) <= 20):
        raise ArrayError(f"{text!r} is not a job id (123) or an array element (123_7)")
    if not sep:
        return int(head), None
    if not (tail.isascii() and tail.isdigit() and len(tail) <= 7):
        raise ArrayError(f"{text!r} is not a job id (123) or an array element (123_7)")
    return int(head), int(tail)
