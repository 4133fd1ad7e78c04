"""schedulerd.configfile: a flat TOML file under an argparse command line. Every problem of
a file as `FILE:LINE: KEY: REASON`, in line order; defaults < file < flags; --print-config
writes a file that reads back to the same values."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from schedulerd.configfile import (
    MAX_BYTES,
    ConfigError,
    Source,
    parse_args_with_config,
    read_config,
    render_config,
)
from schedulerd.configfile.scan import key_lines

REPO = Path(__file__).resolve().parent.parent


# Like the daemon's and the agent's: their annotations are strings here too
# (`from __future__ import annotations`), which the loader must evaluate.
def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("--listen", default="127.0.0.1:50051")
    p.add_argument("--db", type=Path, default=Path("var/prog.db"))
    p.add_argument("--tick", type=float, default=1.0)
    p.add_argument("--node-timeout", type=_positive_float, default=120.0)
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--admin", action="append", default=[], metavar="USER")
    p.add_argument("--port", action="append", type=int, default=[])
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    fake = p.add_mutually_exclusive_group()
    fake.add_argument("--fake-gpus", type=_non_negative_int, metavar="N")
    fake.add_argument("--fake-gpus-fallback", type=_non_negative_int, metavar="N")
    p.add_argument("--version", action="version", version="%(prog)s 1.0")
    return p


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        read_config(path, make_parser())
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# (file text, its problems with {f} for the file's path)
BAD_FILES = [
    # unknown keys, with the closest known one
    ('tls-certs = "a.pem"\n', ["{f}:1: tls-certs: unknown key; did you mean 'tls-cert'?"]),
    ("\nnode_timeout = 3\n", ["{f}:2: node_timeout: unknown key; did you mean 'node-timeout'?"]),
    ("zzz = 1\n", ["{f}:1: zzz: unknown key"]),
    ("tick = 1\r\nzzz = 1\r\n", ["{f}:2: zzz: unknown key"]),
    ('"odd key" = 1\n', ["{f}:1: 'odd key': unknown key"]),
    ('config = "other.toml"\n', ["{f}:1: config: cannot be set in a config file"]),
    ("version = true\n", ["{f}:1: version: cannot be set in a config file"]),
    # a wrong TOML type, for each kind of option
    ("listen = 50051\n", ["{f}:1: listen: expected a string, got an integer"]),
    ("db = 3\n", ["{f}:1: db: expected a string, got an integer"]),
    ("count = 4.5\n", ["{f}:1: count: expected an integer, got a float"]),
    ('count = "4"\n', ["{f}:1: count: expected an integer, got a string"]),
    ("count = true\n", ["{f}:1: count: expected an integer, got a boolean"]),
    ('tick = "fast"\n', ["{f}:1: tick: expected a number, got a string"]),
    ("tick = false\n", ["{f}:1: tick: expected a number, got a boolean"]),
    ('insecure = "yes"\n', ["{f}:1: insecure: expected a boolean (true or false), got a string"]),
    ("insecure = 1\n", ["{f}:1: insecure: expected a boolean (true or false), got an integer"]),
    ('admin = "alice"\n', ["{f}:1: admin: expected an array of strings, got a string"]),
    ('admin = ["alice", 2]\n', ["{f}:1: admin: element 2: expected a string, got an integer"]),
    ('port = [1, "2"]\n', ["{f}:1: port: element 2: expected an integer, got a string"]),
    ('listen = ["a"]\n', ["{f}:1: listen: expected a string, got an array"]),
    ("listen = 1979-05-27\n", ["{f}:1: listen: expected a string, got a date or time"]),
    # a value the option's type function or choices refuse
    ("node-timeout = -1\n", ["{f}:1: node-timeout: must be a positive number of seconds, got -1"]),
    (
        "node-timeout = inf\n",
        ["{f}:1: node-timeout: must be a positive number of seconds, got inf"],
    ),
    ("fake-gpus = -2\n", ["{f}:1: fake-gpus: must be >= 0, got -2"]),
    (
        'log-level = "TRACE"\n',
        [
            "{f}:1: log-level: invalid choice: 'TRACE' "
            "(choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')"
        ],
    ),
    # tables: the file is flat
    (
        'listen = "a"\n\n[daemon]\ntick = 2\n',
        ["{f}:3: daemon: tables are not allowed: the file is flat, KEY = VALUE lines only"],
    ),
    (
        'tls.cert = "a"\n',
        ["{f}:1: tls: tables are not allowed: the file is flat, KEY = VALUE lines only"],
    ),
    (
        'listen = { host = "a" }\n',
        ["{f}:1: listen: tables are not allowed: the file is flat, KEY = VALUE lines only"],
    ),
    # what tomllib refuses, at its line
    ('listen = "a"\ntick = 2\nlisten = "b"\n', ["{f}:3: listen: set twice (first on line 1)"]),
    # two members of an exclusive group
    (
        "fake-gpus = 1\nfake-gpus-fallback = 2\n",
        ["{f}:2: fake-gpus-fallback: not allowed with 'fake-gpus' (line 1)"],
    ),
    # all of a file's problems, in line order, whatever found them
    (
        'fake-gpus-fallback = 1\nfake-gpus = 2\ntick = "fast"\n# admin = 1\n'
        'admin = [\n  "alice",  # a comment\n  2,\n]\nlisten = 1\n'
        '\'log-level\' = "TRACE"\n"zzz" = 1\n',
        [
            "{f}:2: fake-gpus: not allowed with 'fake-gpus-fallback' (line 1)",
            "{f}:3: tick: expected a number, got a string",
            "{f}:5: admin: element 2: expected a string, got an integer",
            "{f}:9: listen: expected a string, got an integer",
            "{f}:10: log-level: invalid choice: 'TRACE' (choose from 'DEBUG', 'INFO', 'WARNING', "
            "'ERROR')",
            "{f}:11: zzz: unknown key",
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_every_problem_is_reported_at_its_line(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    f = tmp_path / "prog.toml"
    f.write_text(text)
    assert problems_of(f) == [e.format(f=f) for e in expected]


# tomllib's own words (they may change with Python), at the line it names.
@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('listen = "a"\ntick = \n', 2),
        ('listen = "a"\n\ntick = 1 2\n', 3),
        ('tick = 1\nlisten = "a\n', 2),
        ('tick = 1\nadmin = ["a",\n', 2),  # "at end of document": its last line
        ('tick = 1\nadmin = ["a",', 2),
        ("= 1\n", 1),
    ],
)
def test_a_syntax_error_is_reported_at_its_line(tmp_path: Path, text: str, line: int) -> None:
    f = tmp_path / "prog.toml"
    f.write_text(text)
    [problem] = problems_of(f)
    assert problem.startswith(f"{f}:{line}: ")
    assert "(at line" not in problem and "(at end of document)" not in problem


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda f: None, "{f}: No such file or directory"),
        (lambda f: f.mkdir(), "{f}: not a regular file"),
        (lambda f: f.write_bytes(b'tick = 1\nlisten = "\xff"\n'), "{f}:2: not UTF-8 text"),
        (lambda f: f.write_bytes(b"#" * (MAX_BYTES + 1)), "{f}: too large (over 1048576 bytes)"),
    ],
)
def test_a_file_that_cannot_be_read(
    tmp_path: Path, make: Callable[[Path], object], expected: str
) -> None:
    f = tmp_path / "prog.toml"
    make(f)
    assert problems_of(f) == [expected.format(f=f)]


def test_a_file_of_max_bytes_is_read(tmp_path: Path) -> None:
    f = tmp_path / "prog.toml"
    f.write_bytes(b"#" * (MAX_BYTES - 9) + b"\ntick = 2")
    assert read_config(f, make_parser()) == {"tick": (2.0, 2)}


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n  # another\n"])
def test_a_file_without_keys_sets_nothing(tmp_path: Path, text: str) -> None:
    f = tmp_path / "prog.toml"
    f.write_text(text)
    assert read_config(f, make_parser()) == {}


def test_values_are_converted_by_their_options(tmp_path: Path) -> None:
    f = tmp_path / "prog.toml"
    f.write_text(
        "# the daemon\n"
        'listen = "0.0.0.0:50051"  # a comment\n'
        "db = '/var/lib/prog.db'\n"
        "tick = 2\n"
        "node-timeout = 30.5\n"
        "insecure = true\n"
        'admin = [\n  "alice",  # the first ] one\n  "bob",\n]\n'
        "port = [1, 2]\n"
        '"log-level" = "DEBUG"\n'
        "fake-gpus-fallback = 0\n"
        "count = 8\n"
    )
    assert read_config(f, make_parser()) == {
        "listen": ("0.0.0.0:50051", 2),
        "db": (Path("/var/lib/prog.db"), 3),
        "tick": (2.0, 4),
        "node_timeout": (30.5, 5),
        "insecure": (True, 6),
        "admin": (["alice", "bob"], 7),
        "port": ([1, 2], 11),
        "log_level": ("DEBUG", 12),
        "fake_gpus_fallback": (0, 13),
        "count": (8, 14),
    }


def test_store_false_and_boolean_optional(tmp_path: Path) -> None:
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("--no-color", dest="color", action="store_false")
    p.add_argument("--watch", action=argparse.BooleanOptionalAction, default=True)
    f = tmp_path / "prog.toml"
    f.write_text("no-color = true\nwatch = false\n")
    assert read_config(f, p) == {"color": (False, 1), "watch": (False, 2)}
    args, sources = parse_args_with_config(p, ["--config", str(f)])
    out = render_config(p, args, sources)
    assert "no-color = true  # " in out and "watch = false  # " in out


def test_key_lines_skip_comments_strings_and_arrays() -> None:
    text = (
        "# comment = 1\n"
        'a = """\n'
        "b = 2\n"
        '"""\n'
        "'c' = [ # comment ]\n"
        "  \"]\", 'x#',\n"
        "]\n"
        '"d.e" = 1\n'
        "f.g = 2\n"
        "h = { i = 1 }\n"
        "[t]\n"
        "j = 1\n"
        "[[u.v]]\n"
        "k = '''\n"
        "l = 1'''\n"
    )
    tomllib.loads(text)  # valid TOML
    assert key_lines(text) == [
        ("a", 2),
        ("c", 5),
        ("d.e", 8),
        ("f", 9),
        ("h", 10),
        ("t", 11),
        ("u", 13),
    ]


# --- the command line over the file ---------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "prog.toml"
    f.write_text(text)
    return f


def test_defaults_then_file_then_flags(tmp_path: Path) -> None:
    f = write(tmp_path, 'listen = "file:1"\ntick = 2.5\nadmin = ["alice"]\ninsecure = true\n')
    args, sources = parse_args_with_config(
        make_parser(), ["--config", str(f), "--listen", "flag:2", "--admin", "bob"]
    )
    assert args.listen == "flag:2"
    assert args.tick == 2.5
    assert args.admin == ["bob"]  # replaced, not added to
    assert args.insecure is True
    assert args.count == 4
    assert args.config_path == f
    assert sources["listen"] == Source("command line")
    assert sources["admin"] == Source("command line")
    assert sources["tick"] == Source(f"{f}:2")
    assert sources["insecure"] == Source(f"{f}:4")
    assert sources["count"] == Source("default")
    assert not any(name.startswith("_configfile") for name in vars(args))


def test_a_flag_equal_to_its_default_still_wins(tmp_path: Path) -> None:
    f = write(tmp_path, "tick = 2.5\n")
    args, sources = parse_args_with_config(make_parser(), ["--config", str(f), "--tick", "1.0"])
    assert args.tick == 1.0 and sources["tick"] == Source("command line")


def test_append_from_the_file_alone(tmp_path: Path) -> None:
    f = write(tmp_path, 'admin = ["alice", "carol"]\n')
    args, _ = parse_args_with_config(make_parser(), ["--config", str(f)])
    assert args.admin == ["alice", "carol"]


def test_an_exclusive_flag_replaces_the_files_other_member(tmp_path: Path) -> None:
    f = write(tmp_path, "fake-gpus = 2\n")
    args, sources = parse_args_with_config(make_parser(), ["--config", str(f)])
    assert (args.fake_gpus, args.fake_gpus_fallback) == (2, None)
    args, sources = parse_args_with_config(
        make_parser(), ["--config", str(f), "--fake-gpus-fallback", "3"]
    )
    assert (args.fake_gpus, args.fake_gpus_fallback) == (None, 3)
    assert sources["fake_gpus"] == Source("default")


def test_file_errors_exit_2_with_the_program_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, 'listen = 1\ntick = "x"\n')
    with pytest.raises(SystemExit) as caught:
        parse_args_with_config(make_parser(), ["--config", str(f)])
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        f"prog: {f}:1: listen: expected a string, got an integer\n"
        f"prog: {f}:2: tick: expected a number, got a string\n"
    )


def test_a_missing_config_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "absent.toml"
    with pytest.raises(SystemExit) as caught:
        parse_args_with_config(make_parser(), ["--config", str(f)], default_path=f)
    assert caught.value.code == 2
    assert capsys.readouterr().err == f"prog: {f}: No such file or directory\n"


def test_the_default_path_is_read_if_it_exists(tmp_path: Path) -> None:
    f = tmp_path / "prog.toml"
    args, sources = parse_args_with_config(make_parser(), [], default_path=f)
    assert args.config_path is None and args.tick == 1.0
    assert set(sources.values()) == {Source("default")}
    f.write_text("tick = 3\n")
    args, sources = parse_args_with_config(make_parser(), [], default_path=f)
    assert args.config_path == f and args.tick == 3.0
    assert sources["tick"] == Source(f"{f}:1")


def test_no_config_reads_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "this is not TOML\n")
    args, _ = parse_args_with_config(make_parser(), ["--no-config"], default_path=f)
    assert args.config_path is None and args.tick == 1.0
    with pytest.raises(SystemExit) as caught:  # argparse: one or the other
        parse_args_with_config(make_parser(), ["--no-config", "--config", str(f)])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_parser_can_be_used_twice(tmp_path: Path) -> None:
    p = make_parser()
    f = write(tmp_path, "count = 5\n")
    assert parse_args_with_config(p, ["--config", str(f)])[0].count == 5
    assert parse_args_with_config(p, ["--no-config"])[0].count == 4


def test_a_parser_with_its_own_config_flag_is_refused() -> None:
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("--config")
    with pytest.raises(ValueError, match="its own --config"):
        parse_args_with_config(p, [])


def test_print_config_reads_back_and_names_the_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(
        tmp_path,
        '# a comment\nlisten = "tab\\there \\"quoted\\" \\\\ \\u007f"\n'
        'admin = ["alice"]\nnode-timeout = 30\nfake-gpus = 0\n',
    )
    argv = ["--config", str(f), "--tick", "0.25", "--port", "7", "--insecure"]
    with pytest.raises(SystemExit) as caught:
        parse_args_with_config(make_parser(), [*argv, "--print-config"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert 'db = "var/prog.db"  # default' in lines
    assert "tick = 0.25  # command line" in lines
    assert f'admin = ["alice"]  # {f}:3' in lines
    assert f"node-timeout = 30.0  # {f}:4" in lines
    assert "# tls-cert = (not set)  # default" in lines
    assert "# fake-gpus-fallback = (not set)  # default" in lines
    assert not any("config" in line.split("=")[0] for line in lines[1:])

    # The output is a config file: read back, it gives the same values.
    args, _ = parse_args_with_config(make_parser(), argv)
    again = write(tmp_path, out)
    assert tomllib.loads(out)["listen"] == 'tab\there "quoted" \\ \x7f'
    for dest, (value, _line) in read_config(again, make_parser()).items():
        assert getattr(args, dest) == value, dest
    assert len(read_config(again, make_parser())) == 10  # the 12 options but the 2 unset


# --- the real parsers (skipped until their main.py has build_parser()) ----------------

# The sample files of deploy/config, read by the parsers they are for; then the commands
# themselves (python -m ...), once their main.py reads its file through this module.
REAL = [
    ("schedulerd.daemon.main", "deploy/config/schedulerd.toml", "schedulerd.daemon", "schedulerd"),
    ("agent.main", "deploy/config/agent.toml", "agent", "schedulerd-agent"),
]


def build_real_parser(module: str) -> argparse.ArgumentParser:
    build = getattr(importlib.import_module(module), "build_parser", None)
    if build is None:
        pytest.skip(f"{module} has no build_parser() yet")
    parser = build()
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


@pytest.mark.parametrize(("module", "sample"), [r[:2] for r in REAL])
def test_the_real_parsers_read_their_sample_files(tmp_path: Path, module: str, sample: str) -> None:
    parser = build_real_parser(module)
    f = REPO / sample
    values = read_config(f, parser)
    assert values
    args, sources = parse_args_with_config(parser, ["--config", str(f)], default_path=None)
    for dest, (value, line) in values.items():
        assert getattr(args, dest) == value
        assert sources[dest] == Source(f"{f}:{line}")
    # What --print-config writes reads back to the same values, for every kind of option.
    again = write(tmp_path, render_config(parser, args, sources))
    for dest, (value, _line) in read_config(again, parser).items():
        assert getattr(args, dest) == value, dest


@pytest.mark.parametrize(("module", "sample", "run", "prog"), REAL)
def test_the_real_commands_print_and_refuse(
    tmp_path: Path, module: str, sample: str, run: str, prog: str
) -> None:
    build_real_parser(module)
    f = REPO / sample

    def command(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", run, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=tmp_path,
        )

    done = command("--config", str(f), "--print-config")
    assert done.returncode == 0, done.stderr
    assert f'log-level = "INFO"  # {f}:' in done.stdout
    tomllib.loads(done.stdout)
    bad = write(tmp_path, "log-level = 3\nlisten-on = 1\n")
    done = command("--config", str(bad))
    assert done.returncode == 2
    assert f"{prog}: {bad}:1: log-level: expected a string, got an integer\n" in done.stderr
    assert f"{prog}: {bad}:2: listen-on: unknown key" in done.stderr


# --- who may write the file ------------------------------------------------------------


def test_a_file_others_may_write_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('listen = "x"\n')
    f.chmod(0o666)
    with pytest.raises(ConfigError) as e:
        read_config(f, make_parser())
    assert e.value.problems == [f"{f}: writable by others (mode 0666); chmod go-w {f}"]


def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('listen = "x"\n')
    os.chown(f, 4242, 4242)  # nobody this process trusts
    with pytest.raises(ConfigError) as e:
        read_config(f, make_parser())
    assert e.value.problems == [f"{f}: owned by uid 4242, who could change it; chown root {f}"]


def test_a_file_in_a_folder_others_may_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    f = folder / "c.toml"
    f.write_text('listen = "x"\n')
    folder.chmod(0o777)
    with pytest.raises(ConfigError) as e:
        read_config(f, make_parser())
    assert e.value.problems == [
        f"{f}: the folder {folder} is writable by others (mode 0777): "
        "others could replace what is in it"
    ]
    folder.chmod(0o1777)  # as /tmp: others cannot replace what is not theirs
    assert read_config(f, make_parser())["listen"] == ("x", 1)


def test_a_fifo_in_place_of_the_file_is_refused_without_waiting_for_a_writer(
    tmp_path: Path,
) -> None:
    f = tmp_path / "c.toml"
    os.mkfifo(f, 0o644)
    with pytest.raises(ConfigError) as e:
        read_config(f, make_parser())  # a blocking open would hang here for good
    assert e.value.problems == [f"{f}: not a regular file"]


def test_a_symlink_through_a_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "c.toml"
    real.write_text('listen = "x"\n')
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    (open_folder / "c.toml").symlink_to(real)
    with pytest.raises(ConfigError) as e:
        read_config(open_folder / "c.toml", make_parser())
    assert f"the folder {open_folder} is writable by others" in str(e.value)
    # ...and a link in a safe folder to a file in an unsafe one.
    safe = tmp_path / "safe"
    safe.mkdir()
    (safe / "c.toml").symlink_to(open_folder / "real.toml")
    (open_folder / "real.toml").write_text('listen = "x"\n')
    with pytest.raises(ConfigError) as e:
        read_config(safe / "c.toml", make_parser())
    assert f"the folder {open_folder} is writable by others" in str(e.value)


def test_values_nested_too_deeply_are_an_error_not_a_crash(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("listen = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as e:
        read_config(f, make_parser())
    assert e.value.problems == [f"{f}: values nested too deeply"]


def _daemon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "schedulerd.daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_heartbeat_that_does_not_fit_twice_in_the_agents_lease_is_refused(
    tmp_path: Path,
) -> None:
    f = tmp_path / "s.toml"
    f.write_text("node-timeout = 8\nheartbeat = 5\n")
    done = _daemon("--config", str(f))
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"schedulerd: {f}:2: heartbeat: 5 s is too long for node-timeout 8 s"
    ), done.stderr
    assert _daemon("--no-config", "--tick", "0").returncode == 2


def test_group_write_is_fine_when_the_owner_is_alone_in_the_group(tmp_path: Path) -> None:
    # root:root 0664, as a clone or a cp under umask 002 makes: root's own group adds
    # no writer. A group with another member does (tests/unix_users makes none here).
    f = tmp_path / "c.toml"
    f.write_text('listen = "x"\n')
    os.chown(f, 0, 0)
    f.chmod(0o664)
    assert read_config(f, make_parser())["listen"] == ("x", 1)


def test_group_write_with_another_user_in_the_group_is_refused(tmp_path: Path) -> None:
    from unix_users import throwaway_user

    f = tmp_path / "c.toml"
    f.write_text('listen = "x"\n')
    with throwaway_user() as other:
        os.chown(f, 0, other.pw_gid)  # root's file, in the group of another user
        f.chmod(0o664)
        with pytest.raises(ConfigError) as e:
            read_config(f, make_parser())
    assert e.value.problems == [f"{f}: writable by others (mode 0664); chmod go-w {f}"]


def test_a_symlink_met_on_the_way_in_a_folder_of_another_user_is_refused(
    tmp_path: Path,
) -> None:
    # chain.toml -> eve/link -> real.toml: the file and the first link are in safe
    # folders, but eve could point her link at any file at all.
    safe = tmp_path / "etc"
    safe.mkdir()
    (safe / "real.toml").write_text('listen = "x"\n')
    eve = tmp_path / "eve"
    eve.mkdir()
    (eve / "link").symlink_to(safe / "real.toml")
    (safe / "chain.toml").symlink_to(eve / "link")
    assert read_config(safe / "chain.toml", make_parser())["listen"] == ("x", 1)
    os.chown(eve, 4242, 4242)
    with pytest.raises(ConfigError) as e:
        read_config(safe / "chain.toml", make_parser())
    assert f"the folder {eve} is owned by uid 4242" in str(e.value)
    # A loop of links is an error, not a hang.
    os.chown(eve, 0, 0)
    (safe / "a.toml").symlink_to(safe / "b.toml")
    (safe / "b.toml").symlink_to(safe / "a.toml")
    with pytest.raises(ConfigError) as e:
        read_config(safe / "a.toml", make_parser())
    assert "symbolic links" in str(e.value)
