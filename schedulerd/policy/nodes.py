"""Reading PyYAML's composed node tree: the document, mappings and scalar values.

The loader works on nodes rather than on `yaml.safe_load`'s plain dicts because nodes keep
their line numbers (so every error can name its line) and keep repeated keys, which
`safe_load` silently collapses to the last one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from schedulerd.policy.errors import Issues

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
MERGE = "tag:yaml.org,2002:merge"

Entry = tuple[str, Node, Node]


def compose(text: str, issues: Issues) -> Node | None:
    """The document's root node, or None after reporting a syntax error."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
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
    if node.tag == STR:
        return repr(node.value)
    return str(node.value)


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL


def entries(node: MappingNode, key: str, issues: Issues) -> list[Entry]:
    """A mapping's entries in file order, as (key text, key node, value node).

    Reports repeated keys (PyYAML would keep the last silently) but still returns every
    copy, so that the values of the first are checked too. Skips, with an error, keys that
    are not plain scalars. Applies YAML merge keys (`<<: *anchor`): the mapping's own keys
    win, and among several merged mappings the first wins, as the YAML merge spec says.
    """
    own: list[Entry] = []
    first_line: dict[str, int] = {}
    merged: list[Entry] = []
    for k, v in node.value:
        if not isinstance(k, ScalarNode):
            issues.add(k, key, f"keys must be plain names, got {describe(k)}")
            continue
        if k.tag == MERGE:
            merged.extend(_merge_sources(v, key, issues))
            continue
        name = str(k.value)
        if name in first_line:
            message = f"duplicate key '{name}' (first set at line {first_line[name]})"
            issues.add(k, join(key, name), message)
        else:
            first_line[name] = k.start_mark.line + 1
        own.append((name, k, v))
    for entry in merged:
        if entry[0] not in first_line:
            first_line[entry[0]] = 0
            own.append(entry)
    return own


def _merge_sources(node: Node, key: str, issues: Issues) -> Iterable[Entry]:
    sources = node.value if isinstance(node, SequenceNode) else [node]
    for s in sources:
        if isinstance(s, MappingNode):
            yield from entries(s, key, issues)
        else:
            issues.add(s, key, f"'<<' merges mappings only, got {describe(s)}")


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
