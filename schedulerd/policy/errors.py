"""What a policy file did wrong, located precisely enough for an admin to fix it.

The loader collects every problem in one pass and raises them together: fixing a policy
one error per daemon restart is the experience this module exists to avoid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from yaml.nodes import Node


@dataclass(frozen=True)
class PolicyIssue:
    """One problem: file, 1-based line (0 when no line applies, e.g. a missing file),
    the dotted key it concerns ("" for the document as a whole) and what is wrong."""

    source: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        # Compiler style, so editors and terminals can jump to the line.
        if self.key:
            return f"{self.source}:{self.line}: {self.key}: {self.message}"
        return f"{self.source}:{self.line}: {self.message}"


class PolicyError(ValueError):
    """A policy that cannot be used; `issues` lists every problem found, in line order."""

    def __init__(self, issues: Iterable[PolicyIssue]) -> None:
        self.issues: tuple[PolicyIssue, ...] = tuple(issues)
        super().__init__(str(self))

    def __reduce__(self) -> tuple[type[PolicyError], tuple[tuple[PolicyIssue, ...]]]:
        # Rebuild from the issues, not from the message (pickling across processes).
        return (PolicyError, (self.issues,))

    def __str__(self) -> str:
        sources = sorted({i.source for i in self.issues})
        where = sources[0] if len(sources) == 1 else ", ".join(sources)
        n = len(self.issues)
        head = f"policy {where} has {n} error{'s' if n != 1 else ''}:"
        return "\n".join([head, *(f"  {i}" for i in self.issues)])


# A file with more problems than this is reported with the first ones and a note: the
# pass stops there (a hostile file must not cost more than a useful report).
MAX_ISSUES = 100


class TooManyIssues(Exception):
    """Raised by `Issues.add` once the list is full: the reading pass ends at once and
    `raise_if_any` reports what was found."""


class Issues:
    """Collects issues for one source; `raise_if_any` ends the pass."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._issues: list[PolicyIssue] = []
        self._seen: set[PolicyIssue] = set()
        self.truncated = False

    def add(self, at: Node | int, key: str, message: str) -> None:
        line = at.start_mark.line + 1 if isinstance(at, Node) else at
        issue = PolicyIssue(self.source, line, key, message)
        if issue in self._seen:  # the same problem reached twice: report it once
            return
        if len(self._issues) >= MAX_ISSUES:
            self.truncated = True
            raise TooManyIssues
        self._seen.add(issue)
        self._issues.append(issue)

    def __bool__(self) -> bool:
        return bool(self._issues)

    def keys(self) -> set[str]:
        """The keys that have an issue so far."""
        return {i.key for i in self._issues}

    def raise_if_any(self) -> None:
        if self._issues:
            # Line order reads like the file; the sort is stable, so walk order breaks ties.
            issues = sorted(self._issues, key=lambda i: i.line)
            if self.truncated:
                note = f"more errors not listed: fix these {len(issues)} first"
                issues.append(PolicyIssue(self.source, 0, "", note))
            raise PolicyError(issues)
