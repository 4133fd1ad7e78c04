"""The settable options of a parser, and how a TOML value becomes an option's value
(and back, for --print-config)."""

from __future__ import annotations

import argparse
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

# Our own flags' dests, prefixed so that they cannot meet the caller's.
OWN_DESTS = ("_configfile_path", "_configfile_none", "_configfile_print")
# Keys that name a flag but cannot be set in a file (the file naming another file...).
RESERVED = frozenset({"config", "no-config", "print-config", "help", "version"})
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

Kind = Literal["bool", "int", "float", "str"]
_EXPECTED: dict[Kind, str] = {
    "bool": "a boolean (true or false)",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
}
_PLURAL: dict[Kind, str] = {
    "bool": "booleans",
    "int": "integers",
    "float": "numbers",
    "str": "strings",
}


@dataclass(frozen=True)
class Option:
    key: str
    action: argparse.Action
    kind: Kind
    many: bool = False  # append: a TOML array, one element per flag
    inverted: bool = False  # store_false: `key = true` stores False, as the flag would


def _kind_of(type_: Any) -> Kind:
    """The TOML type an option takes, from its `type`: a class, or a function's return
    annotation (evaluated: the callers' modules use `from __future__ import annotations`)."""
    if type_ is None:
        return "str"
    returns: Any = type_
    if not isinstance(type_, type):
        try:
            returns = typing.get_type_hints(type_).get("return")
        except Exception:  # an annotation that does not evaluate, or no hints at all
            returns = getattr(type_, "__annotations__", {}).get("return")
    if returns in (int, "int"):
        return "int"
    if returns in (float, "float"):
        return "float"
    return "str"  # str, Path, and anything else the type function builds from a string


def options(parser: argparse.ArgumentParser) -> dict[str, Option]:
    """The settable options of `parser`, by key, in the parser's order."""
    found: dict[str, Option] = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest in OWN_DESTS:
            continue
        key = longs[0][2:]
        if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction):
            found[key] = Option(key, action, "bool")
        elif isinstance(action, argparse._StoreFalseAction):
            found[key] = Option(key, action, "bool", inverted=True)
        elif isinstance(action, argparse._StoreAction) and action.nargs in (None, "?"):
            found[key] = Option(key, action, _kind_of(action.type))
        elif isinstance(action, argparse._AppendAction) and action.nargs is None:
            found[key] = Option(key, action, _kind_of(action.type), many=True)
    return found


class Refused(Exception):
    """One value refused; the message is the REASON."""


def _toml_type(value: object) -> str:
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, kind):
            return name
    return "a date or time"


def _fits(kind: Kind, value: object) -> bool:
    if isinstance(value, bool):  # bool is an int to Python, never to TOML
        return kind == "bool"
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, int | float)
    return isinstance(value, str) if kind == "str" else False


def _convert_one(opt: Option, value: object) -> Any:
    if not _fits(opt.kind, value):
        raise Refused(f"expected {_EXPECTED[opt.kind]}, got {_toml_type(value)}")
    if opt.kind == "bool":
        return value != opt.inverted
    action = opt.action
    if callable(action.type):  # (argparse also allows a registered name: not here)
        # Type functions take the command line's text; str() of a TOML number is that text.
        text = value if isinstance(value, str) else str(value)
        try:
            value = action.type(text)
        except argparse.ArgumentTypeError as e:
            raise Refused(str(e)) from None
        except (TypeError, ValueError) as e:
            raise Refused(str(e) or f"invalid value {text!r}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        raise Refused(f"invalid choice: {value!r} (choose from {choices})")
    return value


def convert(opt: Option, value: object) -> Any:
    if not opt.many:
        return _convert_one(opt, value)
    if not isinstance(value, list):
        raise Refused(f"expected an array of {_PLURAL[opt.kind]}, got {_toml_type(value)}")
    converted = []
    for i, item in enumerate(value, 1):
        try:
            converted.append(_convert_one(opt, item))
        except Refused as e:
            raise Refused(f"element {i}: {e}") from None
    return converted


def toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c < " " or c == "\x7f":  # TOML wants control characters escaped
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_scalar(kind: Kind, value: Any) -> str:
    if kind == "bool":
        return "true" if value else "false"
    if kind == "int" and isinstance(value, int):
        return str(value)
    if kind == "float" and isinstance(value, int | float):
        if math.isnan(value):
            return "nan"
        return repr(float(value)) if not math.isinf(value) else ("inf" if value > 0 else "-inf")
    return toml_string(str(value))  # strings and paths, and what a type function built
