"""Where each top-level key of a TOML text is: tomllib gives values, not positions."""

from __future__ import annotations

import re
import tomllib

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _first_key_part(raw: str) -> str:
    """The top-level key of a (possibly quoted, possibly dotted) raw TOML key."""
    if _BARE.fullmatch(raw.strip()):  # the usual case, without a parse
        return raw.strip()
    try:
        return next(iter(tomllib.loads(raw.strip() + " = 0")))
    except (tomllib.TOMLDecodeError, StopIteration):
        return raw.strip()


def _string_end(text: str, pos: int) -> int:
    """Just past the string that starts at `pos` (any of TOML's four kinds)."""
    quote = text[pos]
    if text.startswith(quote * 3, pos):
        pos += 3
        while pos < len(text) and not text.startswith(quote * 3, pos):
            pos += 2 if quote == '"' and text[pos] == "\\" else 1
        pos += 3
        while pos < len(text) and text[pos] == quote:  # `"""a""""`: quotes end the content
            pos += 1
        return min(pos, len(text))
    pos += 1
    while pos < len(text) and text[pos] not in (quote, "\n"):
        pos += 2 if quote == '"' and text[pos] == "\\" else 1
    return min(pos + 1, len(text))


def _skip_to(text: str, pos: int, stops: str) -> int:
    """The first of `stops` from `pos` outside strings, brackets and comments (or the end)."""
    depth = 0
    while pos < len(text):
        c = text[pos]
        if c in "\"'":
            pos = _string_end(text, pos)
            continue
        if c == "#":
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
            continue
        if depth <= 0 and c in stops:
            return pos
        depth += (c in "[{") - (c in "]}")
        pos += 1
    return pos


_GAP = re.compile(r"(?:[ \t\r\n]|#[^\n]*)*")


def key_lines(text: str) -> list[tuple[str, int]]:
    """Each top-level key and table of `text` with its line, in order (tomllib gives no
    positions). A small scanner: it skips comments, strings and multi-line arrays, and
    returns what it can of text that tomllib refuses."""
    found: list[tuple[str, int]] = []
    pos, line, counted = 0, 1, 0
    in_table = False
    while True:
        gap = _GAP.match(text, pos)
        pos = gap.end() if gap else pos
        if pos >= len(text):
            return found
        line += text.count("\n", counted, pos)
        counted = pos
        if text[pos] == "[":  # [table] or [[array of tables]]: its first key is top-level
            start = pos + 2 if text.startswith("[[", pos) else pos + 1
            found.append((_first_key_part(text[start : _skip_to(text, start, "]\n")]), line))
            in_table = True
            pos = _skip_to(text, pos, "\n")
            continue
        end = _skip_to(text, pos, "=\n")
        if end >= len(text) or text[end] != "=":  # no `=`: not a key (tomllib says so)
            pos = end
            continue
        if not in_table:  # keys under a [table] belong to it: its own line was recorded
            found.append((_first_key_part(text[pos:end]), line))
        pos = _skip_to(text, end + 1, "\n")
