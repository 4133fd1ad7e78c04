"""Reading PyYAML's composed node tree: the document, mappings and scalar values.

The loader works on nodes rather than on `yaml.safe_load`'s plain dicts because nodes keep
their line numbers (so every error can name its line) and keep repeated keys, which
`safe_load` silently collapses to the last one.

Composing is where hostile files are stopped, before any tree is walked: anchors, aliases
and merge keys are refused as they are read (an alias is one node reached from many places:
a 1 KB file of nested aliases reads as a million consumers), and the file's size, its
nesting, its number of values and the length of each value are bounded (`Limits`).
The policy loader and the experiment file loader (hpo/file.py) share this.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from schedulerd.bounds import MAX_POLICY_BYTES
from schedulerd.policy.errors import Issues

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
MERGE = "tag:yaml.org,2002:merge"

Entry = tuple[str, Node, Node]


@dataclass(frozen=True)
class Limits:
    """What one YAML file may hold. `what` names the kind of file in messages."""

    what: str
    max_bytes: int = 1024 * 1024  # the file's UTF-8 size
    max_depth: int = 32  # mappings and lists inside each other
    max_nodes: int = 200_000  # every key, value and list item
    max_text: int = 1024  # characters of one scalar (a key or a value)


POLICY_LIMITS = Limits("a policy", max_bytes=MAX_POLICY_BYTES)


class _Stop(Exception):
    """A limit was hit and reported: composing ends here."""


class _Composer(yaml.SafeLoader):
    """PyYAML's composer (pure Python, so each node passes through `compose_node`) that
    refuses anchors, aliases and merge keys, and bounds depth, size and text as it goes.
    It knows the dotted key of each node, so every refusal names it."""

    def __init__(self, text: str, issues: Issues, limits: Limits) -> None:
        super().__init__(text)
        self.issues = issues
        self.limits = limits
        self.keys: list[str] = []  # the dotted key of each node being composed
        self.count = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        # `index`: for a mapping's value, its key node; for a list item, its position.
        what = self.limits.what
        key = self._key_of(index)
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            self.get_event()  # type: ignore[no-untyped-call]
            self.issues.add(line, key, f"YAML aliases (*{event.anchor}) are not allowed in {what}")
            # Nothing is shared: the alias reads as nothing, and the pass reports it.
            start: Any = event.start_mark  # PyYAML's pure-Python Mark
            return ScalarNode(NULL, "", start, start)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self.issues.add(line, key, f"YAML anchors (&{anchor}) are not allowed in {what}")
            event.anchor = None
        self.count += 1
        if self.count > self.limits.max_nodes:
            most = self.limits.max_nodes
            self.issues.add(line, key, f"more than {most:,} YAML values: too large for {what}")
            raise _Stop
        if len(self.keys) >= self.limits.max_depth:
            most = self.limits.max_depth
            self.issues.add(line, key, f"nested more than {most} levels deep")
            raise _Stop
        self.keys.append(key)
        try:
            node = super().compose_node(parent, index)
        finally:
            self.keys.pop()
        if isinstance(node, ScalarNode):
            self._check_scalar(node, parent, index, key)
        return node

    def _check_scalar(self, node: ScalarNode, parent: Node | None, index: object, key: str) -> None:
        if len(node.value) > self.limits.max_text:
            most = self.limits.max_text
            message = f"text of {len(node.value):,} characters, at most {most:,}"
            self.issues.add(node, key, message)
        if "\0" in node.value:
            self.issues.add(node, key, "contains a NUL character (\\0)")
        if node.tag == MERGE and index is None and isinstance(parent, MappingNode):
            message = f"YAML merge keys (<<) are not allowed in {self.limits.what}"
            self.issues.add(node, key, message)

    def _key_of(self, index: object) -> str:
        """The dotted key of the node about to be composed: a mapping's key node is
        `index` for its value, None for the key itself; a list item's is its position."""
        up = self.keys[-1] if self.keys else ""
        if isinstance(index, ScalarNode):
            name = str(index.value)
            return join(up, name if len(name) <= 64 else name[:64] + "...")
        if isinstance(index, int):
            return f"{up}[{index}]"
        return up


def compose(text: str, issues: Issues, limits: Limits = POLICY_LIMITS) -> Node | None:
    """The document's root node, or None after reporting why there is none (a syntax
    error, a limit, an alias...). Other problems found while composing are reported
    too; the caller reads the tree only when there are none."""
    size = len(text)
    if size <= limits.max_bytes and not text.isascii():
        size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        most = limits.max_bytes
        issues.add(0, "", f"{size:,} bytes is too large for {limits.what} (at most {most:,})")
        return None
    loader: _Composer | None = None
    try:
        loader = _Composer(text, issues, limits)  # the reader checks every character here
        return loader.get_single_node()
    except _Stop:
        pass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if (plain := _in_words(e, text)) is not None:
            issues.add(plain[0], "", plain[1])
            return None
        # PyYAML phrases some problems as the second half of a sentence ("but found ...").
        message = (e.problem or "invalid YAML").removeprefix("but ")
        if e.context:
            ctx_line = f" at line {e.context_mark.line + 1}" if e.context_mark else ""
            message = f"{message} ({e.context}{ctx_line})"
        issues.add(mark.line + 1 if mark else 1, "", f"YAML syntax error: {message}")
    except yaml.reader.ReaderError as e:  # a control character; it knows only its offset
        line = text.count("\n", 0, e.position) + 1
        code = e.character if isinstance(e.character, int) else ord(e.character)
        issues.add(line, "", f"YAML syntax error: control character U+{code:04X} is not allowed")
    except yaml.YAMLError as e:
        issues.add(1, "", f"YAML error: {e}")
    finally:
        if loader is not None:
            loader.dispose()
    return None


def _in_words(e: yaml.MarkedYAMLError, text: str) -> tuple[int, str] | None:
    """PyYAML's parser and scanner messages for the mistakes people make by hand (most
    of them indentation), said plainly, with the 1-based line they concern; None:
    PyYAML's own words will do."""
    problem, context = e.problem or "", e.context or ""
    at, ctx = e.problem_mark, e.context_mark
    lines = text.splitlines()
    if at is None:
        return None

    def indent(line: int) -> int:
        row = lines[line] if line < len(lines) else ""
        return len(row) - len(row.lstrip(" "))

    def above(line: int) -> int:
        """The nearest line above with something on it (-1: none)."""
        line -= 1
        while line >= 0 and (line >= len(lines) or not lines[line].strip()):
            line -= 1
        return line

    if "'\\t'" in problem:
        return at.line + 1, "a tab: YAML indents with spaces only"
    if problem.startswith("expected <block end>") and ctx is not None:
        if "collection" in context:  # a list's items, then a key at their level
            return at.line + 1, (
                f"bad indentation: a key among the '- ' items of the list from line "
                f"{ctx.line + 1}; a list and a mapping cannot share one level"
            )
        prev = above(at.line)
        here, outer = indent(at.line), ctx.column
        inner = f" or {indent(prev)} (line {prev + 1})" if prev >= 0 else ""
        return at.line + 1, (
            f"bad indentation: {here} spaces, where the keys above are at {outer} "
            f"(from line {ctx.line + 1}){inner}; line it up with the keys it belongs with"
        )
    if problem == "mapping values are not allowed here":
        prev = above(at.line)
        if prev >= 0 and indent(at.line) > indent(prev):
            return at.line + 1, (
                f"bad indentation: indented more than line {prev + 1}, which already has "
                "its value; line it up with that line's key (or, for a value with ': ' "
                "in it, quote the value)"
            )
        return at.line + 1, "a ': ' inside a value: quote the value (\"a: b\")"
    if problem == "could not find expected ':'":
        line = ctx.line if ctx is not None else at.line
        return line + 1, (
            "not KEY: VALUE (a ':' missing?), or a continuation of the line above that is "
            "indented wrong"
        )
    return None


def value(node: ScalarNode) -> object:
    """A scalar's Python value, typed as YAML 1.1 resolves it (int, float, bool, str...)."""
    try:
        return SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError):
        # Text that resolves to a type but does not construct (a date like 2024-13-45).
        return node.value


def describe(node: Node) -> str:
    """How a value reads in an error message: "got ..." without the "got"."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == NULL:
        return "null" if node.value else "nothing"
    text = str(node.value)
    if len(text) > 64:
        text = text[:64] + "..."
    return repr(text) if node.tag == STR else text


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL


def entries(node: MappingNode, key: str, issues: Issues) -> list[Entry]:
    """A mapping's entries in file order, as (key text, key node, value node).

    Reports repeated keys (PyYAML would keep the last silently) but still returns every
    copy, so that the values of the first are checked too. Skips, with an error, keys that
    are not plain scalars. Merge keys (`<<`) never get here: compose refuses them.
    """
    own: list[Entry] = []
    first_line: dict[str, int] = {}
    for k, v in node.value:
        if not isinstance(k, ScalarNode) or k.tag == MERGE:
            issues.add(k, key, f"keys must be plain names, got {describe(k)}")
            continue
        name = str(k.value)
        if name in first_line:
            message = f"duplicate key '{name}' (first set at line {first_line[name]})"
            issues.add(k, join(key, name), message)
        else:
            first_line[name] = k.start_mark.line + 1
        own.append((name, k, v))
    return own


def unknown_key(name: str, allowed: Iterable[str]) -> str:
    """The message for a key the format does not know, with a spelling hint."""
    allowed = list(allowed)
    close = difflib.get_close_matches(name, allowed, n=1) or difflib.get_close_matches(
        name.lower(), allowed, n=1
    )
    hint = f"; did you mean '{close[0]}'?" if close else f" (allowed: {', '.join(allowed)})"
    return f"unknown key '{name}'{hint}"


def join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
