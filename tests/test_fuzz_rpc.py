"""Every RPC's requests fuzzed over real gRPC against one real daemon.

Requests are drawn from each request message's protobuf descriptor (ints at their
boundaries and beyond any bound, floats with nan and inf, text with NUL and of every
length around the limits, repeated fields, nested messages, unknown enum numbers,
maps), mixed with values this daemon knows (its consumers, users, nodes, job and
experiment ids) so that many requests pass the door and the bounds and reach the
servicers. They are sent as the cluster admin (root over loopback), so that only
validation stands in their way.

For every call: never UNKNOWN, never INTERNAL, never DEADLINE_EXCEEDED (a hang), the
daemon still alive; a refused call changed nothing in the store (its digest: row
counts, largest ids, job states, nodes, the policy version, tokens), and a read
changed nothing whatever it answered. The agents' stream, the policy loader (dry runs
of YAML-ish text) and the experiment file loader (through CreateExperiment) are fuzzed
the same way. At the end, the daemon's log holds no traceback.

Reproducible: derandomized, no example database.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hpo_helpers
import pytest
import yaml
from google.protobuf.descriptor import FieldDescriptor
from harness import Cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_snapshot import digest, rss_kib

from schedulerd.api.v1 import (
    admin_pb2,
    agent_pb2,
    agent_pb2_grpc,
    experiments_pb2,
    jobs_pb2,
)
from schedulerd.hpo.codec import spec_to_pb
from schedulerd.hpo.file import PRUNER_KEYS, ExperimentFileError, load_experiment

Code = grpc.StatusCode
FD = Any  # a FieldDescriptor (upb's type is not importable for annotations)

POLICY = """\
version: 1
run_as_root: true
users: "*"
consumers:
  a:
    owned: 4
  b:
    share: 2
    consumers:
      c: {}
      d:
        users: [alice]
"""
# Node names live in this daemon only (no agent process runs here).
# NODE0: 8 GPUs, drained and disconnected (the cluster's shape, where nothing runs);
# SPARE: no GPUs, to be forgotten; NODE1: the agent stream fuzz's node.
NODE0, NODE1, SPARE = "fuzz-n0", "fuzz-n1", "fuzz-spare"

BAD = (Code.UNKNOWN, Code.INTERNAL, Code.DEADLINE_EXCEEDED)
CALL_TIMEOUT_S = 10.0
STREAM_WAIT_S = 0.25  # a stream that has said nothing by then waits for news: fine
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies from descriptors --------------------------------------------------------

_INT_RANGES = {
    getattr(FieldDescriptor, name): rng
    for names, rng in (
        (("TYPE_INT32", "TYPE_SINT32", "TYPE_SFIXED32"), (-(2**31), 2**31 - 1)),
        (("TYPE_UINT32", "TYPE_FIXED32"), (0, 2**32 - 1)),
        (("TYPE_INT64", "TYPE_SINT64", "TYPE_SFIXED64"), (-(2**63), 2**63 - 1)),
        (("TYPE_UINT64", "TYPE_FIXED64"), (0, 2**64 - 1)),
    )
    for name in names
}
_EDGES = (
    *(0, 1, 2, 3, 63, 64, 65, 1000, 1001, 1023, 1024, 4096, 65536, 1_000_000, 1_000_001),
    *(2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1),
    *(-1, -(2**31), -(2**63), -1_000_001),
)
_FLOAT_EDGES = (
    *(0.0, -0.0, 0.5, 1.0, -1.0, 60.0, 3600.0, 1e15, 1e16, 2.0**40, 2.0**63),
    *(1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf, 366 * 86400.0 + 1),
)
_TEXT_EDGES = (
    *("", " ", "\0", "a\0b", "-", ".", "..", "/", "*", "%", "_", "\n", "\t", "'", '"'),
    *("{x}", "{trial}", "{experiment}", "{", "}", "é", "\u202e", "\U0001f600", "abc"),
    *("Bearer x", "0", "-1", "1e308", "nan", "NaN", "inf", "9" * 21, "０", "١"),
)


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({e for e in _EDGES if lo <= e <= hi})
    return st.one_of(st.integers(0, 5), st.sampled_from(edges), st.integers(lo, hi))


def _floats() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(_FLOAT_EDGES), st.floats(), st.integers(-5, 5).map(float))


def _long_text() -> st.SearchStrategy[str]:
    return st.builds(
        lambda c, n: c * n,
        st.sampled_from(["x", "é", "\0", "/", "a{x}"]),
        st.sampled_from(
            [
                *(31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1024, 1025, 4096),
                *(4097, 32768, 32769, 65536, 65537, 2**20 + 1),
            ]
        ),
    )


def _texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(_TEXT_EDGES),
        st.text(max_size=12),
        st.text(st.characters(codec="utf-8"), max_size=40),
        _long_text(),
    )


def _bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=32),
        st.sampled_from([b"", b"\0", b"\xff" * 3, b"x" * (2**20 + 1)]),
    )


IDS = st.one_of(st.integers(0, 6), st.sampled_from([2**63 - 1, 2**63, 2**64 - 1]))
NAMES = ["", "alice", "bob", "root", "Alice", "-x", "a" * 33, "ab_c.d-e", "node:x"]
CONSUMERS = ["/a", "/b", "/b/c", "/b/d", "/", "", "/a/", "/nope", "a", "/A", "//", "/a/../b"]
NODES = [SPARE, NODE1, "", "no-such-node", "bad name", "-x", "a" * 64]
ENV_NAMES = st.one_of(
    st.sampled_from(["PATH", "X", "_", "A1", "1A", "", "A-B", "A B", "a" * 257]),
    st.text(max_size=6),
)


def _policy_texts() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([POLICY, "", "version: 1\n"]), _yamlish_policy())


# Values that this daemon knows, per field name and kind ("str", "int", "float"...): the
# fuzzer draws them often, so that requests get past the bounds to the servicers.
def _hints() -> dict[tuple[str, str], st.SearchStrategy[Any]]:
    strs = {
        "consumer": st.sampled_from(CONSUMERS),
        "user": st.sampled_from(NAMES),
        "identity": st.sampled_from(["", "alice", f"node:{NODE0}", "anonymous"]),
        "node": st.sampled_from(NODES),
        "pool": st.sampled_from(["", "default", "bad pool"]),
        "name": st.sampled_from(["", "x", "k", "lr", "job", "{x}"]),
        "page_token": st.sampled_from(["", "0", "1", "3", "abc", "-1", "9" * 20, "9" * 21]),
        "text": _policy_texts(),
        "working_dir": st.sampled_from(["", "/tmp", "tmp", "/nonexistent", "/" + "a" * 5000]),
        "metric": st.sampled_from(["", "loss"]),
        "source_name": st.sampled_from(["", "p.yaml"]),
    }
    ints = {
        "id": IDS,
        "job_id": IDS,
        "experiment_id": IDS,
        "request_id": IDS,
        "trial": st.integers(0, 3),
        "limit": st.sampled_from([0, 1, 2, 1000, 1001, 2**32 - 1]),
        "min": st.sampled_from([0, 1, 2, 4, 5, 1_000_001, 2**32 - 1]),
        "max": st.sampled_from([0, 1, 2, 4, 5, 1_000_001, 2**32 - 1]),
        "index": st.sampled_from([0, 1, 2, 1023, 1024]),
        "attempt": st.integers(0, 2),
        "priority": st.sampled_from([0, 1, -1, 1_000_000, 1_000_001, -(2**31)]),
    }
    floats = {
        "ttl_seconds": st.sampled_from([59.0, 60.0, 3600.0, 366 * 86400.0 + 1, math.nan]),
        "time": st.sampled_from([0.0, time.time(), -1.0, 2.0**41, math.nan]),
    }
    out: dict[tuple[str, str], st.SearchStrategy[Any]] = {}
    out.update({(k, "str"): v for k, v in strs.items()})
    out.update({(k, "int"): v for k, v in ints.items()})
    out.update({(k, "float"): v for k, v in floats.items()})
    out[("command", "repeated str")] = st.lists(
        st.sampled_from(["true", "/bin/true", "{x}", "--k={k}", "{trial}", "a\0b", ""]),
        min_size=1,
        max_size=4,
    )
    out[("scopes", "repeated str")] = st.lists(
        st.sampled_from(["submit", "read", "admin", "experiments", "x", ""]), max_size=3
    )
    out[("states", "repeated enum")] = st.lists(st.sampled_from([0, 1, 2, 5, 6, 7, 99, -1]))
    out[("ids", "repeated int")] = st.lists(IDS, max_size=4)
    return out


HINTS: dict[tuple[str, str], st.SearchStrategy[Any]] = {}
MAX_DEPTH = 4


def _kind(f: FD) -> str:
    t = f.type
    if t in (f.TYPE_STRING,):
        return "str"
    if t == f.TYPE_BYTES:
        return "bytes"
    if t == f.TYPE_BOOL:
        return "bool"
    if t in (f.TYPE_DOUBLE, f.TYPE_FLOAT):
        return "float"
    if t == f.TYPE_ENUM:
        return "enum"
    if t == f.TYPE_MESSAGE:
        return "message"
    return "int"


def _scalar(f: FD, small: bool = False) -> st.SearchStrategy[Any]:
    """Values for a scalar field; `small`: short text and bytes only (an element
    repeated a thousand times)."""
    kind = _kind(f)
    generic: st.SearchStrategy[Any]
    if kind == "str":
        generic = (
            st.one_of(st.sampled_from(_TEXT_EDGES), st.text(max_size=8)) if small else _texts()
        )
    elif kind == "bytes":
        generic = st.binary(max_size=8) if small else _bytes()
    elif kind == "bool":
        generic = st.booleans()
    elif kind == "float":
        generic = _floats() if f.type == f.TYPE_DOUBLE else st.floats(width=32)
    elif kind == "enum":
        known = [v.number for v in f.enum_type.values]
        generic = st.one_of(st.sampled_from(known), st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]))
    else:
        lo, hi = _INT_RANGES[f.type]
        generic = _ints(lo, hi)
    hint = HINTS.get((f.name, kind))
    return generic if hint is None else st.one_of(hint, generic)


def _field(f: FD, depth: int, small: bool) -> st.SearchStrategy[Any]:
    kind = _kind(f)
    if f.is_repeated and kind == "message" and f.message_type.GetOptions().map_entry:
        key_f = f.message_type.fields_by_name["key"]
        val_f = f.message_type.fields_by_name["value"]
        keys = ENV_NAMES if f.name == "env" else _scalar(key_f, small)
        values = (
            message_strategy(val_f.message_type, depth + 1, small)
            if _kind(val_f) == "message"
            else _scalar(val_f, small)
        )
        maps = st.dictionaries(keys, values, max_size=2 if small else 4)
        if f.name != "env" or small:
            return maps
        # Many entries: past MAX_ENV (256), with values that add up past the bounds.
        crowd = st.builds(
            lambda n, v: {f"V{i}": v for i in range(n)},
            st.sampled_from([257, 3]),
            st.sampled_from(["x", "y" * 32769]),
        )
        return st.one_of(maps, crowd)
    if kind == "message":
        element: st.SearchStrategy[Any] = message_strategy(f.message_type, depth + 1, small)
    else:
        element = _scalar(f, small)
    if not f.is_repeated:
        return element
    hint = HINTS.get((f.name, f"repeated {kind}"))
    lists = st.lists(element, max_size=2 if small else 3 if kind == "message" else 5)
    if not small:
        # The same (small) element many times: past the count bounds (64 GPUs, 1,000
        # jobs in a batch, 1,024 arguments, 10,000 ids...).
        tiny = (
            message_strategy(f.message_type, depth + 1, small=True)
            if kind == "message"
            else _scalar(f, small=True)
        )
        many: st.SearchStrategy[Any] = st.builds(
            _repeat, tiny, st.sampled_from([17, 65, 1001, 1025, 10_001])
        )
        lists = st.one_of(lists, many)
    return lists if hint is None else st.one_of(hint, lists)


def _deferred_field(f: FD, depth: int, small: bool) -> st.SearchStrategy[Any]:
    # Deferred: a message type may contain itself, and hints are known only later.
    return st.deferred(lambda: _field(f, depth, small))


def _repeat(x: Any, n: int) -> list[Any]:
    return [x] * n


_MESSAGES: dict[tuple[str, int, bool], st.SearchStrategy[Any]] = {}


def message_strategy(desc: Any, depth: int = 0, small: bool = False) -> st.SearchStrategy[Any]:
    """Messages of type `desc`: any subset of its fields set (one member of a oneof
    wins), nested messages down to MAX_DEPTH."""
    key = (desc.full_name, depth, small)
    if key in _MESSAGES:
        return _MESSAGES[key]
    cls = _message_class(desc)
    if depth > MAX_DEPTH:
        strategy: st.SearchStrategy[Any] = st.just(cls())
    else:
        optional: dict[str, st.SearchStrategy[Any]] = {
            f.name: _deferred_field(f, depth, small) for f in desc.fields
        }
        strategy = st.fixed_dictionaries({}, optional=optional).map(lambda d: _build(cls, d))
    _MESSAGES[key] = strategy
    return strategy


def _message_class(desc: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def _build(cls: Any, values: dict[str, Any]) -> Any:
    msg = cls()
    for name, value in values.items():
        _assign(msg, cls.DESCRIPTOR.fields_by_name[name], value)
    return msg


def _assign(msg: Any, f: FD, value: Any) -> None:
    target: Any = getattr(msg, f.name) if f.is_repeated or _kind(f) == "message" else None
    if f.is_repeated and _kind(f) == "message" and f.message_type.GetOptions().map_entry:
        if _kind(f.message_type.fields_by_name["value"]) == "message":
            for k, v in value.items():
                target[k].CopyFrom(v)
        else:
            target.update(value)
    elif f.is_repeated:
        target.extend(value)
    elif _kind(f) == "message":
        target.CopyFrom(value)
    else:
        setattr(msg, f.name, value)


def _paths(desc: Any, prefix: tuple[FD, ...] = ()) -> list[tuple[FD, ...]]:
    """Every field of `desc`, and those of its singular message fields, as paths."""
    out = []
    for f in desc.fields:
        out.append((*prefix, f))
        if _kind(f) == "message" and not f.is_repeated and len(prefix) < 3:
            out += _paths(f.message_type, (*prefix, f))
    return out


def mutated(base: Any) -> st.SearchStrategy[Any]:
    """`base` (a request that the daemon accepts) with 0 to 3 of its fields, at any
    depth, replaced by drawn values: requests that get past most checks."""
    paths = _paths(base.DESCRIPTOR)

    @st.composite
    def strategy(draw: st.DrawFn) -> Any:
        msg = type(base)()
        msg.CopyFrom(base)
        for _ in range(draw(st.integers(0, 3))):
            path = draw(st.sampled_from(paths))
            holder = msg
            for f in path[:-1]:
                holder = getattr(holder, f.name)
            leaf = path[-1]
            value = draw(_field(leaf, len(path), small=False))
            holder.ClearField(leaf.name)
            _assign(holder, leaf, value)
        return msg

    return strategy()


# -- YAML-ish text for the loaders -------------------------------------------------------

_POLICY_KEYS = [
    *("version", "users", "admins", "run_as_root", "defaults", "consumers", "owned"),
    *("share", "limit", "lend", "borrow", "grace", "min_runtime", "order", "a", "b", "<<"),
]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["*", "1h30m", ".inf", ".nan", "1e308", "0x10", "1:30", "-1", "alice"]),
)
_FRAGMENTS = [
    *("version: 1\n", "consumers:\n", "  a:\n", "    share: ", "    owned: ", "users: ", "\n"),
    *("&x ", "*x", "<<: *x\n", "!!python/object/apply:os.system ['true']\n", "!!binary ", "{"),
    *("}", "[", "]", "- ", "\t", ": ", "'", '"', "%YAML 1.1\n", "---\n", "...\n", "? ", "0x10"),
    *(".inf", "1e308", "-.nan", "fifo", "priority", "2m", "alice", "[alice, bob]", "*", "# c\n"),
    *("!!str ", "!!int ", "!!float ", "!!set {a}\n", "~", "\0", "\ufeff", "  " * 40, "a: " * 30),
]


def _trees(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        _SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.one_of(st.sampled_from(keys), st.text(max_size=6)), inner, max_size=5
            ),
        ),
        max_leaves=25,
    )


_USER_LISTS = st.one_of(
    st.just("*"), st.lists(st.sampled_from(["alice", "bob", "root", "carol"]), max_size=3)
)
_CONSUMER_FIELDS = {
    "owned": st.integers(0, 8),
    "share": st.one_of(st.integers(0, 3), st.floats(0, 5)),
    "limit": st.one_of(st.none(), st.integers(1, 8)),
    "lend": st.booleans(),
    "borrow": st.booleans(),
    "grace": st.sampled_from(["2m", "30s", "1h30m", 0, 10]),
    "min_runtime": st.sampled_from(["5m", "0s", 0]),
    "order": st.sampled_from(["priority", "fifo", "fairshare"]),
    "users": _USER_LISTS,
    "admins": _USER_LISTS,
}
_HOSTILE = st.one_of(
    _SCALARS,
    _trees(_POLICY_KEYS),
    st.sampled_from([1e308, -1, 2**64, "1e308", ".nan", "-.inf", "Bad Name", ["a b"], {}, []]),
)


def _policies() -> st.SearchStrategy[str]:
    """Good policies like this daemon's (/a, /b/c, /b/d), then up to two values (or
    keys) anywhere in them made hostile."""
    node = st.fixed_dictionaries({}, optional=_CONSUMER_FIELDS)

    @st.composite
    def strategy(draw: st.DrawFn) -> str:
        tree: dict[str, Any] = {
            "a": {**draw(node), "owned": 4},
            "b": {**draw(node), "consumers": {"c": draw(node), "d": draw(node)}},
        }
        tree["a"].pop("limit", None)  # /a's 4 owned GPUs must fit
        policy: dict[str, Any] = {"version": 1, "run_as_root": True, "users": "*"}
        if draw(st.booleans()):
            policy["defaults"] = draw(node)
        policy["consumers"] = tree
        places = [policy, tree["a"], tree["b"], tree["b"]["consumers"]["c"]]
        for _ in range(draw(st.integers(0, 2))):
            where = draw(st.sampled_from(places))
            known = st.sampled_from([*_CONSUMER_FIELDS, *_POLICY_KEYS])
            key = draw(st.one_of(known, known, known, _texts()))
            where[key] = draw(_HOSTILE)
        return yaml.safe_dump(policy, allow_unicode=True, sort_keys=False)

    return strategy()


def _yamlish_policy() -> st.SearchStrategy[str]:
    structured = st.fixed_dictionaries(
        {"version": st.sampled_from([1, 2, "1"]), "consumers": _trees(_POLICY_KEYS)},
        optional={"users": _trees(_POLICY_KEYS), "admins": _trees(_POLICY_KEYS)},
    ).map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    pieces = st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join)
    return st.one_of(_policies(), _policies(), structured, pieces, st.text(max_size=200))


_EXPERIMENT_KEYS = [
    *("name", "consumer", "user", "command", "env", "workdir", "gpus", "priority", "objective"),
    *("params", "sampler", "seed", "pruner", "max_trials", "max_parallel", "type", "low"),
    *("high", "log", "step", "choices", "min_resource", "reduction_factor", "metric"),
]


def _experiment_texts() -> st.SearchStrategy[str]:
    value = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=4))
    param = st.fixed_dictionaries(
        {"type": st.sampled_from(["float", "int", "categorical", "x"])},
        optional={k: value for k in ("low", "high", "step", "log", "choices")},
    )
    good_param = st.one_of(
        st.builds(lambda lo, hi: {"type": "float", "low": lo, "high": hi}, _floats(), _floats()),
        st.builds(
            lambda lo, hi, step: {"type": "int", "low": lo, "high": hi, "step": step},
            _ints(-(2**63), 2**63 - 1),
            _ints(-(2**63), 2**63 - 1),
            _ints(-(2**63), 2**63 - 1),
        ),
        st.builds(
            lambda cs: {"type": "categorical", "choices": cs}, st.lists(_SCALARS, max_size=5)
        ),
    )
    structured = st.fixed_dictionaries(
        {
            "consumer": st.sampled_from(["/a", "/b/c", "a", ""]),
            "command": st.one_of(
                st.just(["true", "{x}"]), st.lists(st.text(max_size=10), max_size=4), _SCALARS
            ),
            "params": st.dictionaries(
                st.sampled_from(["x", "k", "", "a b"]),
                st.one_of(good_param, param, _trees(_EXPERIMENT_KEYS)),
                min_size=1,
                max_size=3,
            ),
        },
        optional={
            **{k: value for k in ("max_trials", "max_parallel", "seed", "priority", "gpus")},
            "env": st.dictionaries(ENV_NAMES, value, max_size=3),
            "pruner": st.one_of(
                _SCALARS,
                st.dictionaries(st.sampled_from(_EXPERIMENT_KEYS), value, max_size=4),
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["median", "asha", "hyperband", "none", "x"])},
                    optional={
                        "min_resource": value,
                        "max_resource": value,
                        "reduction_factor": value,
                    },
                ),
            ),
            "objective": st.one_of(
                st.fixed_dictionaries(
                    {
                        "metric": st.text(max_size=5),
                        "direction": st.sampled_from(["minimize", "maximize", "x"]),
                    }
                ),
                _trees(_EXPERIMENT_KEYS),
            ),
            "sampler": st.sampled_from(["grid", "tpe", "random", 1]),
            "workdir": st.sampled_from(["", "/tmp", "rel", "/" + "a" * 5000]),
        },
    ).map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    pieces = st.lists(st.sampled_from([*_FRAGMENTS, "params:\n", "  x: "]), max_size=30)
    return st.one_of(
        _experiments(), _experiments(), structured, pieces.map("".join), st.text(max_size=200)
    )


def _experiments() -> st.SearchStrategy[str]:
    """Good experiment files, then up to two of their values (or keys) made hostile."""
    good = {
        "name": st.sampled_from(["s", "x" * 200]),
        "consumer": st.sampled_from(["/a", "/b/c"]),
        "env": st.dictionaries(st.sampled_from(["A", "B_1"]), st.sampled_from(["1", "é"])),
        "workdir": st.sampled_from([".", "/tmp"]),
        "gpus": st.sampled_from([1, 2, "1:2"]),
        "priority": st.sampled_from([0, 5, -5]),
        "objective": st.fixed_dictionaries(
            {"metric": st.just("loss"), "direction": st.sampled_from(["minimize", "maximize"])}
        ),
        "sampler": st.sampled_from(["tpe", "random"]),
        "seed": st.sampled_from([0, 1, 2**32 - 1]),
        "pruner": st.one_of(
            st.just("none"),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["median", "asha", "hyperband"])},
                optional={k: st.integers(1, 10) for k in PRUNER_KEYS if k != "type"},
            ),
        ),
        "max_trials": st.integers(1, 3),
        "max_parallel": st.integers(1, 2),
    }
    params = {
        "x": st.builds(
            lambda lo, width, log: {"type": "float", "low": lo, "high": lo + width, "log": log},
            st.floats(0.001, 10),
            st.floats(0.001, 10),
            st.booleans(),
        ),
        "k": st.builds(
            lambda lo, width: {"type": "int", "low": lo, "high": lo + width, "step": 1},
            st.integers(-10, 10),
            st.integers(1, 10),
        ),
        "c": st.builds(
            lambda cs: {"type": "categorical", "choices": cs},
            st.lists(st.one_of(st.integers(), st.text(max_size=5), st.booleans()), min_size=1),
        ),
    }
    hostile = st.one_of(
        _SCALARS,
        _trees(_EXPERIMENT_KEYS),
        st.sampled_from([1e308, 10**15 + 1, -1, 2**64, ".nan", "x" * 40000, "{nope}", [], {}]),
    )

    @st.composite
    def strategy(draw: st.DrawFn) -> str:
        doc: dict[str, Any] = {
            "consumer": "/a",
            "command": ["true", "{x}"],
            "max_trials": 2,
            "max_parallel": 1,
        }
        doc.update(draw(st.fixed_dictionaries({}, optional=good)))
        doc["params"] = {"x": draw(params["x"])}
        doc["params"].update(draw(st.fixed_dictionaries({}, optional=params)))
        places = [doc, *doc["params"].values()]
        if isinstance(doc.get("pruner"), dict):
            places.append(doc["pruner"])
        for _ in range(draw(st.integers(0, 2))):
            where = draw(st.sampled_from(places))
            known = st.sampled_from(_EXPERIMENT_KEYS)
            key = draw(st.one_of(known, known, known, _texts()))
            where[key] = draw(hostile)
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)

    return strategy()


# -- the daemon ------------------------------------------------------------------------


@dataclass
class Fuzzed:
    cluster: Cluster
    socket: str
    node_token: str
    channel: grpc.Channel
    templates: dict[str, Any] = field(default_factory=dict)
    user_channel: grpc.Channel | None = None  # the Unix socket: known by token only
    user_token: str = ""  # alice's (a user of /b/d and of everywhere "*" allows)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.cluster.daemon is not None
        return self.cluster.daemon.pid

    def alive(self) -> None:
        daemon = self.cluster.daemon
        assert daemon is not None and daemon.poll() is None, (
            "the daemon died:\n" + self.cluster.log_tail()
        )

    def count(self, rpc: str, outcome: str) -> None:
        self.stats.setdefault(rpc, {}).setdefault(outcome, 0)
        self.stats[rpc][outcome] += 1


def _register_node(channel: grpc.Channel, node: str, gpus: int, metadata: Any = ()) -> None:
    """Register `node` (as the admin, over loopback) and hang up: it stays known,
    unreachable. The stream is closed from this end and read to its end, so that the
    daemon has disconnected the node when this returns."""
    msg = agent_pb2.AgentMessage(
        register=agent_pb2.Register(
            node=node,
            pool="default",
            gpus=[agent_pb2.GpuInfo(index=i, uuid=f"GPU-{node}-{i}") for i in range(gpus)],
            fake_gpus=True,
        )
    )
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    replies = list(stub.Connect(iter([msg]), metadata=metadata, timeout=10))
    assert replies and replies[0].HasField("registered"), replies


@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    HINTS.clear()
    HINTS.update(_hints())
    root = tmp_path_factory.mktemp("fuzz")
    sock = f"unix:{root}/daemon.sock"
    cluster = Cluster(
        root,
        POLICY,
        tick_s=0.05,
        # A node that hung up stays UNREACHABLE (kept in memory), never DOWN (a write).
        daemon_args=("--also-listen", sock, "--node-timeout", "3600", "--log-level", "INFO"),
    )
    f: Fuzzed | None = None
    channel = grpc.insecure_channel(
        cluster.address,
        options=[
            ("grpc.max_send_message_length", 64 * 2**20),
            ("grpc.max_receive_message_length", 64 * 2**20),
        ],
    )
    try:
        cluster.start_daemon()
        _register_node(channel, NODE0, 8)
        cluster.client.drain(NODE0, "fuzz: nothing runs here")
        _register_node(channel, SPARE, 0)
        admin = cluster.client
        jobs = [admin.submit("/a", ["true"], gpus=1).id for _ in range(3)]
        experiment = hpo_helpers.spec(root, "/a", trials=2, parallel=1)
        watched = admin.create_experiment(experiment)
        stopped = admin.create_experiment(experiment)
        node_token = admin.create_token(NODE1, 3600, node=True).secret
        spare = admin.create_token("bob", 3600).token.id
        f = Fuzzed(cluster, sock, node_token, channel)
        f.templates = _templates(experiment, jobs, watched, stopped.id, spare)
        f.user_channel = grpc.insecure_channel(sock)
        f.user_token = admin.create_token("alice", 3600).secret
        _settle(f)
        yield f
    finally:
        channel.close()
        if f is not None and f.user_channel is not None:
            f.user_channel.close()
        cluster.stop()


def _settle(f: Fuzzed, quiet_s: float = 0.1, rounds: int = 1) -> None:
    """Until the store has not changed for `rounds` looks `quiet_s` apart (what an
    accepted change set off is done)."""
    deadline = time.monotonic() + 15
    last, calm = digest(f.cluster.db), 0
    while calm < rounds:
        time.sleep(quiet_s)
        now = digest(f.cluster.db)
        calm, last = (calm + 1 if now == last else 0), now
        assert time.monotonic() < deadline, "the store never settled"


def _templates(
    experiment: experiments_pb2.ExperimentSpec,
    jobs: list[int],
    watched: experiments_pb2.Experiment,
    stopped: int,
    spare_token: str,
) -> dict[str, Any]:
    """A request each RPC accepts, to be mutated: most fields stay good, so that the
    fuzzed ones reach the servicers."""
    spec = jobs_pb2.JobSpec(
        consumer="/a",
        command=["true", "--lr", "0.1"],
        env={"X": "1"},
        gpus=jobs_pb2.GpuRequest(min=1, max=1),
        name="fuzz",
    )
    trial = watched.trials[0]
    return {
        "SubmitJob": jobs_pb2.SubmitJobRequest(spec=spec),
        "GetJob": jobs_pb2.GetJobRequest(id=jobs[0]),
        "ListJobs": jobs_pb2.ListJobsRequest(consumer="/a", limit=2, states=[jobs_pb2.PENDING]),
        "CancelJob": jobs_pb2.CancelJobRequest(id=jobs[-1]),
        "WatchJobs": jobs_pb2.WatchJobsRequest(ids=jobs, include_current=True),
        "StreamLogs": jobs_pb2.StreamLogsRequest(id=jobs[0]),
        "ApplyPolicy": admin_pb2.ApplyPolicyRequest(text=POLICY, dry_run=True),
        "DrainNode": admin_pb2.DrainNodeRequest(node=NODE0, reason="fuzz"),
        "UndrainNode": admin_pb2.UndrainNodeRequest(node=NODE0),
        "ForgetNode": admin_pb2.ForgetNodeRequest(node=SPARE),
        "CreateToken": admin_pb2.CreateTokenRequest(
            user="alice", ttl_seconds=3600, scopes=["read"]
        ),
        "ListTokens": admin_pb2.ListTokensRequest(user="bob"),
        "RevokeToken": admin_pb2.RevokeTokenRequest(id=spare_token),
        "ListAudit": admin_pb2.ListAuditRequest(limit=5),
        "CreateExperiment": experiments_pb2.CreateExperimentRequest(spec=experiment),
        "GetExperiment": experiments_pb2.GetExperimentRequest(id=watched.id),
        "ListExperiments": experiments_pb2.ListExperimentsRequest(consumer="/a"),
        "StopExperiment": experiments_pb2.StopExperimentRequest(id=stopped),
        "WatchExperiment": experiments_pb2.WatchExperimentRequest(id=watched.id),
        "ReportTrial": experiments_pb2.ReportTrialRequest(
            experiment_id=watched.id, trial=trial.number, job_id=trial.job_id, step=1, value=0.5
        ),
    }


def requests_for(f: Fuzzed, method: Any) -> st.SearchStrategy[Any]:
    """Random requests, and mutations of the template (when the RPC has one)."""
    generic = message_strategy(method.input_type)
    if method.name == "SubmitJobs":
        one = mutated(f.templates["SubmitJob"])
        batches = st.lists(one, max_size=4).map(lambda js: jobs_pb2.SubmitJobsRequest(jobs=js))
        return st.one_of(batches, generic)
    base = f.templates.get(method.name)
    return generic if base is None else st.one_of(mutated(base), generic)


# -- calling -------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    replies: list[Any] = field(default_factory=list)
    waiting: bool = False  # a stream that had said nothing more when it was cut


def _path(method: Any) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def call(
    f: Fuzzed, method: Any, request: Any, metadata: Any = (), channel: grpc.Channel | None = None
) -> Outcome:
    """One call as the cluster admin (or with `metadata` on `channel`)."""
    channel = channel or f.channel
    out_cls = _message_class(method.output_type)
    if not method.server_streaming:
        unary = channel.unary_unary(
            _path(method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=out_cls.FromString,
        )
        try:
            return Outcome(
                Code.OK,
                replies=[unary(request, timeout=CALL_TIMEOUT_S, metadata=metadata)],
            )
        except grpc.RpcError as e:
            return Outcome(e.code(), e.details() or "")
    stream = channel.unary_stream(
        _path(method),
        request_serializer=type(request).SerializeToString,
        response_deserializer=out_cls.FromString,
    )
    it = stream(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
    cut = threading.Event()

    def cut_it() -> None:
        cut.set()
        it.cancel()

    timer = threading.Timer(STREAM_WAIT_S, cut_it)
    timer.start()
    replies: list[Any] = []
    try:
        for reply in it:
            replies.append(reply)
            if len(replies) >= 3:
                cut.set()
                it.cancel()
                break
    except grpc.RpcError as e:
        if e.code() is Code.CANCELLED and cut.is_set():
            return Outcome(Code.OK, replies=replies, waiting=True)
        return Outcome(e.code(), e.details() or "", replies)
    finally:
        timer.cancel()
    return Outcome(Code.OK, replies=replies, waiting=cut.is_set())


def check(f: Fuzzed, what: str, request: Any, out: Outcome) -> None:
    f.alive()
    shown = str(request)[:600]
    assert out.code not in BAD, f"{what}: {out.code.name} {out.details!r}\nrequest: {shown}"
    assert "Traceback" not in out.details, out.details
    if out.code is not Code.OK:
        assert out.details, f"{what}: {out.code.name} without a message\nrequest: {shown}"


# Calls that change nothing, whatever they answer.
READS = {
    *("GetJob", "ListJobs", "WatchJobs", "StreamLogs", "GetPolicy", "ListConsumers"),
    *("ListNodes", "WhoAmI", "ListTokens", "ListAudit", "GetExperiment", "ListExperiments"),
    "WatchExperiment",
}


def undo(f: Fuzzed, name: str, request: Any, out: Outcome, before: Any) -> None:
    """Take back what an accepted call changed that would get in the way of the rest;
    `before`: the store's digest before the call."""
    admin = f.cluster.client
    reply = out.replies[0] if out.replies else None
    if name == "SubmitJob" and reply is not None:
        admin.cancel(reply.job.id)
    elif name == "SubmitJobs" and reply is not None:
        for job in reply.jobs:
            admin.cancel(job.id)
    elif name == "ApplyPolicy" and not request.dry_run:
        admin.apply_policy(POLICY, "fuzz-restore")
    elif name == "DrainNode" and reply is not None and reply.name != NODE0:
        admin.undrain(reply.name)
    elif name == "CreateExperiment" and reply is not None:
        admin.stop_experiment(reply.id)
    elif name == "UndrainNode" and reply is not None and reply.name == NODE0:
        admin.drain(NODE0, "fuzz: nothing runs here")
    elif name == "ForgetNode":
        known = {n.name for n in admin.nodes()}
        assert NODE0 in known, "the fuzzer forgot the node it must not"
        if SPARE not in known:
            _register_node(f.channel, SPARE, 0)
    # Every change above is made before its call returns, except what the experiments'
    # controller does on its own time: it answers a trial's end (its job cancelled, a
    # final report) and may ask Optuna for the next trial. A stopped experiment asks for
    # none.
    trial = name == "CancelJob" and reply is not None and _is_trial(reply)
    experiments = name in ("ReportTrial", "StopExperiment", "CreateExperiment")
    if trial or experiments:
        changed = digest(f.cluster.db) != before
        if changed and (trial or name == "ReportTrial"):
            _settle(f, 0.2, rounds=3)
        elif changed or name == "ReportTrial":
            _settle(f)


def _is_trial(job: jobs_pb2.Job) -> bool:
    return "SCHEDULERD_EXPERIMENT_ID" in job.spec.env


# -- the tests ---------------------------------------------------------------------------


def _methods(module: Any, service: str) -> list[Any]:
    return list(module.DESCRIPTOR.services_by_name[service].methods)


METHODS = [
    *_methods(jobs_pb2, "Scheduler"),
    *_methods(admin_pb2, "Admin"),
    *_methods(experiments_pb2, "Experiments"),
]
# Streams cost up to STREAM_WAIT_S an example (a watch waits for news): fewer of them.
STREAMING_EXAMPLES = 50


@pytest.mark.parametrize("method", METHODS, ids=[_path(m)[1:] for m in METHODS])
def test_fuzz_every_rpc_as_the_cluster_admin(fz: Fuzzed, method: Any) -> None:
    requests = requests_for(fz, method)
    examples = STREAMING_EXAMPLES if method.server_streaming else FUZZ.max_examples
    rss0 = rss_kib(fz.pid)

    @settings(FUZZ, max_examples=examples)
    @given(request=requests)
    def one(request: Any) -> None:
        before = digest(fz.cluster.db)
        out = call(fz, method, request)
        check(fz, method.name, request, out)
        fz.count(method.name, out.code.name)
        if out.code is not Code.OK or method.name in READS or _dry(method, request):
            after = digest(fz.cluster.db)
            assert after == before, (
                f"{method.name} answered {out.code.name} ({out.details[:200]!r}) but the "
                f"store changed\nrequest: {str(request)[:600]}\nbefore: {before}\n"
                f"after: {after}"
            )
        else:
            undo(fz, method.name, request, out, before)

    one()
    grown = rss_kib(fz.pid) - rss0
    assert grown < 100 * 1024, f"the daemon's RSS grew by {grown // 1024} MiB"


USER_EXAMPLES = 40


@pytest.mark.parametrize("method", METHODS, ids=[_path(m)[1:] for m in METHODS])
def test_fuzz_every_rpc_as_a_user(fz: Fuzzed, method: Any) -> None:
    """The same requests from alice's token: her own rights, and refusals at the door
    for everything else; a refusal changes nothing."""
    requests = requests_for(fz, method)
    examples = min(USER_EXAMPLES, STREAMING_EXAMPLES)
    md = (("authorization", f"Bearer {fz.user_token}"),)

    @settings(FUZZ, max_examples=examples)
    @given(request=requests)
    def one(request: Any) -> None:
        before = digest(fz.cluster.db)
        out = call(fz, method, request, md, fz.user_channel)
        check(fz, f"{method.name} (alice)", request, out)
        fz.count(f"{method.name} (alice)", out.code.name)
        if out.code is not Code.OK or method.name in READS or _dry(method, request):
            after = digest(fz.cluster.db)
            assert after == before, (
                f"{method.name} (alice) answered {out.code.name} ({out.details[:200]!r}) but "
                f"the store changed\nrequest: {str(request)[:600]}"
            )
        else:
            undo(fz, method.name, request, out, before)

    one()


def _dry(method: Any, request: Any) -> bool:
    return bool(method.name == "ApplyPolicy" and request.dry_run)


@settings(FUZZ)
@given(text=_yamlish_policy())
def test_fuzz_policy_text_through_apply_policy_dry_runs(fz: Fuzzed, text: str) -> None:
    before = digest(fz.cluster.db)
    request = admin_pb2.ApplyPolicyRequest(text=text, source_name="fuzz.yaml", dry_run=True)
    started = time.monotonic()
    method = admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name["ApplyPolicy"]
    out = call(fz, method, request)
    elapsed = time.monotonic() - started
    check(fz, "ApplyPolicy(dry_run)", request, out)
    fz.count("ApplyPolicy(text)", out.code.name)
    assert out.code in (Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION), out
    if out.code is Code.INVALID_ARGUMENT:
        assert "fuzz.yaml" in out.details, out.details
    assert elapsed < 5.0, f"a dry run took {elapsed:.1f} s"
    assert digest(fz.cluster.db) == before


@settings(FUZZ)
@given(text=_experiment_texts())
def test_fuzz_experiment_files_through_create_experiment(fz: Fuzzed, text: str) -> None:
    try:
        spec = load_experiment(text, "exp.yaml", Path("/tmp"), "")
    except ExperimentFileError:
        fz.count("CreateExperiment(file)", "refused by the loader")
        return
    request = experiments_pb2.CreateExperimentRequest(spec=spec_to_pb(spec))
    before = digest(fz.cluster.db)
    method = experiments_pb2.DESCRIPTOR.services_by_name["Experiments"].methods_by_name[
        "CreateExperiment"
    ]
    out = call(fz, method, request)
    check(fz, "CreateExperiment(file)", request, out)
    fz.count("CreateExperiment(file)", out.code.name)
    if out.code is Code.OK:
        undo(fz, "CreateExperiment", request, out, before)
    else:
        assert digest(fz.cluster.db) == before


# -- the agents' stream ------------------------------------------------------------------


def _agent_messages() -> st.SearchStrategy[list[Any]]:
    any_message = message_strategy(agent_pb2.AgentMessage.DESCRIPTOR)
    registers = message_strategy(agent_pb2.Register.DESCRIPTOR).map(
        lambda r: agent_pb2.AgentMessage(register=r)
    )
    report = agent_pb2.JobReport(
        job_id=1, attempt=0, phase=agent_pb2.PHASE_RUNNING, pid=1234, time=time.time()
    )
    reports = mutated(report)
    # Often a good Register as this node (with a few GPUs and reports of jobs, good or
    # mutated): it is let in, and the rest of the stream is read.
    mine = st.builds(
        lambda n, jobs: agent_pb2.AgentMessage(
            register=agent_pb2.Register(
                node=NODE1,
                gpus=[agent_pb2.GpuInfo(index=i, uuid=f"G{i}") for i in range(n)],
                jobs=jobs,
            )
        ),
        st.integers(0, 3),
        st.lists(reports, max_size=3),
    )
    later = st.one_of(
        st.just(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())),
        reports.map(lambda r: agent_pb2.AgentMessage(report=r)),
        mutated(
            agent_pb2.AgentMessage(
                log_data=agent_pb2.LogData(request_id=1, data=b"x", found=True, next_offset=1)
            )
        ),
        any_message,
    )
    first = st.one_of(mine, mine, registers, any_message)
    return st.builds(lambda a, rest: [a, *rest], first, st.lists(later, max_size=6))


@settings(FUZZ, max_examples=120)
@given(messages=_agent_messages())
def test_fuzz_the_agent_stream_as_a_node(fz: Fuzzed, messages: list[Any]) -> None:
    """Runs last (it registers a node that jobs may be placed on, and reports on
    them): whatever a node sends, a proper status or the end of the stream."""
    stub = agent_pb2_grpc.AgentServiceStub(fz.channel)
    md = (("authorization", f"Bearer {fz.node_token}"),)
    replies = []
    try:
        for reply in stub.Connect(iter(messages), metadata=md, timeout=CALL_TIMEOUT_S):
            replies.append(reply)
            if len(replies) > 20:
                break
        code, details = Code.OK, ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
    fz.alive()
    fz.count("AgentService.Connect", code.name)
    assert code not in BAD, f"{code.name} {details!r}\nmessages: {str(messages)[:800]}"
    assert "Traceback" not in details


def log_records(text: str) -> list[str]:
    """The daemon's log, one record (with its traceback) per item."""
    records: list[str] = []
    for line in text.splitlines():
        if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    return records


def test_zz_the_daemon_logged_no_traceback(fz: Fuzzed) -> None:
    fz.alive()
    print("outcomes:", {k: dict(sorted(v.items())) for k, v in sorted(fz.stats.items())})
    records = log_records((fz.cluster.root / "daemon.log").read_text(errors="replace"))
    problems = [r for r in records if "Traceback" in r or "internal error" in r or " ERROR " in r]
    assert not problems, "\n".join(problems[:10])
