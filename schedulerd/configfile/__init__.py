"""A TOML config file under an argparse command line: defaults < the file < flags.

The file is flat, one `KEY = VALUE` line per option, the key spelled like the long flag
without its dashes (`tls-cert = "/etc/schedulerd/tls.pem"`, `admin = ["alice"]`,
`keep-jobs-on-exit = true`). Values keep their TOML types (an integer option takes an
integer, a path takes a string) and then go through the option's own `type` function and
`choices`, so a file cannot hold what the command line would refuse. Every problem of a
file is reported, each as `FILE:LINE: KEY: REASON`, before anything changes.

Settable: options with a long flag whose action is store, store_true/store_false,
BooleanOptionalAction or append (one value each); others (count, store_const, nargs="+")
are command-line only, as are --config, --no-config, --print-config, --help, --version.
Options that are `required` must still be given on the command line.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schedulerd.configfile.options import (
    BARE_KEY,
    OWN_DESTS,
    RESERVED,
    Refused,
    convert,
    options,
    toml_scalar,
    toml_string,
)
from schedulerd.configfile.scan import key_lines
from schedulerd.filetrust import UntrustedFile, read_trusted

__all__ = [
    "MAX_BYTES",
    "ConfigError",
    "Source",
    "parse_args_with_config",
    "read_config",
    "render_config",
]

MAX_BYTES = 1 << 20  # a config file is a few dozen lines; a bigger one is a mistake
_PATH, _NONE, _PRINT = OWN_DESTS


class ConfigError(Exception):
    """A config file that cannot be used; `problems` holds one `FILE:LINE: ...` per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Source:
    """Where an option's value came from: "default", "command line" or "FILE:LINE"."""

    where: str


def _at(path: Path, line: int) -> str:
    return f"{path}:{line}" if line else str(path)


def _show(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else repr(key)


def _syntax_problem(path: Path, text: str, error: tomllib.TOMLDecodeError) -> str:
    message = str(error)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if m:
        line, reason = int(m[1]), f"{message[: m.start()]} (column {m[2]})"
    else:  # "(at end of document)": the last line
        line = max(1, text.count("\n") + (not text.endswith("\n")))
        reason = message.replace("(at end of document)", "(at the end of the file)")
    reason = reason[:1].lower() + reason[1:]
    if reason.startswith("cannot overwrite a value"):  # name the key set twice
        keys = key_lines(text)
        for key, at in keys:
            first = next(n for k, n in keys if k == key)
            if at == line and first < line:
                return f"{_at(path, line)}: {_show(key)}: set twice (first on line {first})"
    return f"{_at(path, line)}: {reason}"


def _read_text(path: Path) -> str:
    try:
        # Bounded (never a huge file read to refuse it), non-blocking (a FIFO), and only
        # what no one but root or this user could have written (schedulerd/filetrust.py).
        data = read_trusted(path, MAX_BYTES)
    except UntrustedFile as e:
        raise ConfigError([f"{path}: {e}"]) from None
    if len(data) > MAX_BYTES:
        raise ConfigError([f"{path}: too large (over {MAX_BYTES} bytes)"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text"]) from None


def read_config(path: Path, parser: argparse.ArgumentParser) -> dict[str, tuple[Any, int]]:
    """The options that the file at `path` sets, converted: dest -> (value, line).

    Reads the file alone (no command line), so the daemon's SIGHUP can re-read it.
    Raises ConfigError listing every problem of the file, in line order.
    """
    text = _read_text(path)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_syntax_problem(path, text, e)]) from None
    except RecursionError:  # tomllib recurses per nested array: a hostile file ends here
        raise ConfigError([f"{path}: values nested too deeply"]) from None
    lines: dict[str, int] = {}
    for key, line in key_lines(text):
        lines.setdefault(key, line)
    known = options(parser)
    problems: list[tuple[int, str]] = []
    values: dict[str, tuple[Any, int]] = {}
    for key, raw in table.items():
        line = lines.get(key, 0)
        reason = None
        if isinstance(raw, dict):
            reason = "tables are not allowed: the file is flat, KEY = VALUE lines only"
        elif key in known:
            try:
                values[known[key].action.dest] = (convert(known[key], raw), line)
            except Refused as e:
                reason = str(e)
        elif key in RESERVED:
            reason = "cannot be set in a config file"
        else:
            near = difflib.get_close_matches(key.strip("-").replace("_", "-"), known, n=1)
            reason = "unknown key" + (f"; did you mean {near[0]!r}?" if near else "")
        if reason is not None:
            problems.append((line, f"{_at(path, line)}: {_show(key)}: {reason}"))
    for group in parser._mutually_exclusive_groups:
        keys = [o.key for o in known.values() if o.action in group._group_actions]
        present = sorted((lines.get(k, 0), k) for k in keys if k in table)
        for line, key in present[1:]:
            first_line, first = present[0]
            problems.append(
                (line, f"{_at(path, line)}: {key}: not allowed with {first!r} (line {first_line})")
            )
    if problems:
        raise ConfigError([p for _, p in sorted(problems, key=lambda p: p[0])])
    return values


def _add_config_options(parser: argparse.ArgumentParser, default_path: Path | None) -> None:
    existing = parser._option_string_actions.get("--config")
    if existing is not None:
        if existing.dest != _PATH:
            raise ValueError(f"{parser.prog}: the parser has its own --config")
        return  # added by an earlier call
    which = parser.add_mutually_exclusive_group()
    default = f"{default_path}, if it exists" if default_path else "none"
    which.add_argument(
        "--config",
        dest=_PATH,
        metavar="PATH",
        help=f"a TOML file of these options, KEY = VALUE for --KEY (default: {default})",
    )
    which.add_argument("--no-config", dest=_NONE, action="store_true", help="read no config file")
    parser.add_argument(
        "--print-config",
        dest=_PRINT,
        action="store_true",
        help="print the effective configuration as TOML, with where each value comes from, "
        "and exit",
    )


def _given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests set on the command line: a copy of the parser without defaults leaves the
    others out of its namespace (a value equal to its default still counts as given)."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    quiet._defaults.clear()
    return set(vars(quiet.parse_args(argv)))


def parse_args_with_config(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    default_path: Path | None = None,
) -> tuple[argparse.Namespace, dict[str, Source]]:
    """Parse `argv` (default: sys.argv[1:]) with the config file under it.

    Adds --config PATH, --no-config and --print-config to `parser`. The file is --config's,
    else `default_path` if it exists. Returns the namespace, with `config_path` (the file
    read, or None), and the source of each settable option by dest. A file with problems
    exits 2 listing them; --print-config exits 0.
    """
    _add_config_options(parser, default_path)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)  # first: --help, --version and errors as the parser has them
    given = _given(parser, argv)
    path: Path | None = None
    if getattr(args, _PATH) is not None:
        path = Path(getattr(args, _PATH))
    elif (
        not getattr(args, _NONE)
        and default_path is not None
        # Absent is fine (a default is only read if there); a dangling link is an error.
        and (default_path.exists() or default_path.is_symlink())
    ):
        path = default_path
    from_file: dict[str, tuple[Any, int]] = {}
    if path is not None:
        try:
            from_file = read_config(path, parser)
        except ConfigError as e:
            parser.exit(2, "".join(f"{parser.prog}: {p}\n" for p in e.problems))
    # In an exclusive group, a member on the command line replaces the file's members.
    for group in parser._mutually_exclusive_groups:
        dests = {a.dest for a in group._group_actions}
        if dests & given:
            for dest in dests:
                from_file.pop(dest, None)
    sources: dict[str, Source] = {}
    for opt in options(parser).values():
        dest = opt.action.dest
        if dest in given:
            sources[dest] = Source("command line")
        elif dest in from_file:
            value, line = from_file[dest]
            setattr(args, dest, value)
            sources[dest] = Source(_at(path, line) if path else "default")
        else:
            sources[dest] = Source("default")
    show = getattr(args, _PRINT)
    for own in (_PATH, _NONE, _PRINT):
        delattr(args, own)
    # Absolute: a SIGHUP re-reads it, whatever the working directory is by then.
    args.config_path = None if path is None else Path(path).absolute()
    if show:
        sys.stdout.write(render_config(parser, args, sources))
        parser.exit(0)
    return args, sources


def render_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, sources: dict[str, Source]
) -> str:
    """The settable options of `args` as a config file, each line saying where its value
    came from; unset (None) values are commented out."""
    lines = [f"# {parser.prog}: the effective configuration"]
    for opt in options(parser).values():
        dest = opt.action.dest
        where = sources.get(dest, Source("default")).where
        value = getattr(args, dest, None)
        key = opt.key if BARE_KEY.fullmatch(opt.key) else toml_string(opt.key)
        if value is None:
            lines.append(f"# {key} = (not set)  # {where}")
            continue
        if opt.many:
            shown = "[" + ", ".join(toml_scalar(opt.kind, v) for v in value) + "]"
        else:
            shown = toml_scalar(opt.kind, (not value) if opt.inverted else value)
        lines.append(f"{key} = {shown}  # {where}")
    return "\n".join(lines) + "\n"
