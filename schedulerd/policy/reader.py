"""What the YAML files of experiments (hpo/file.py) and services (serve/file.py) read the
same way: typed scalars, mappings, argv lists, and the line each key came from, with
every problem added to `Issues` as KEY: REASON at its line (nothing raised midway)."""

from __future__ import annotations

import math

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from schedulerd.policy.errors import Issues
from schedulerd.policy.nodes import BOOL, FLOAT, INT, STR, describe, entries


class FileReader:
    def __init__(self, issues: Issues) -> None:
        self.issues = issues
        self.lines: dict[str, int] = {}

    def line_of(self, key: str) -> int:
        """The line of a key, or of the nearest enclosing one."""
        while key:
            if key in self.lines:
                return self.lines[key]
            if key.endswith("]"):
                key = key[: key.rindex("[")]
            elif "." in key:
                key = key.rsplit(".", 1)[0]
            else:
                break
        return 1

    def _note(self, key: str, node: Node) -> Node:
        self.lines[key] = node.start_mark.line + 1
        return node

    def _mapping(self, node: Node, key: str) -> list[tuple[str, Node, Node]]:
        if not isinstance(node, MappingNode):
            self.issues.add(node, key, f"must be a mapping, got {describe(node)}")
            return []
        return entries(node, key, self.issues)

    def _strings(self, node: Node, key: str) -> list[str]:
        if not isinstance(node, SequenceNode):
            self.issues.add(node, key, f"must be a list (argv), got {describe(node)}")
            return []
        out = []
        for i, item in enumerate(node.value):
            self._note(f"{key}[{i}]", item)
            if isinstance(item, ScalarNode) and item.tag in (STR, INT, FLOAT):
                out.append(str(item.value))
            else:
                self.issues.add(item, f"{key}[{i}]", f"must be text, got {describe(item)}")
        return out

    def _str(self, node: Node, key: str) -> str:
        if isinstance(node, ScalarNode) and node.tag == STR:
            return str(node.value)
        self.issues.add(node, key, f"must be text, got {describe(node)}")
        return ""

    def _int(self, node: Node, key: str) -> int:
        if isinstance(node, ScalarNode) and node.tag == INT:
            try:
                return int(node.value.replace("_", ""), 0)
            except ValueError:  # 0b2, 1:30, more than 4,300 digits...
                pass
        self.issues.add(node, key, f"must be a whole number, got {describe(node)}")
        return 0

    def _float(self, node: Node, key: str) -> float:
        # PyYAML (YAML 1.1) reads 1e-4 as text: a number written so is still a number.
        if isinstance(node, ScalarNode) and node.tag in (INT, FLOAT, STR):
            try:
                number = float(node.value.replace("_", ""))
                if math.isfinite(number):
                    return number
            except ValueError:
                pass
        self.issues.add(node, key, f"must be a number, got {describe(node)}")
        return 0.0

    def _bool(self, node: Node, key: str) -> bool:
        if isinstance(node, ScalarNode) and node.tag == BOOL:
            return str(node.value).lower() in ("true", "yes", "on")
        self.issues.add(node, key, f"must be true or false, got {describe(node)}")
        return False
