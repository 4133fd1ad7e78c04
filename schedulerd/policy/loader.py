"""The admin's policy file → a validated core `Policy`, or every problem at once.

Two passes over the composed YAML: here `_read_*` turn nodes into drafts, checking each
value on its own (fields.py); then tree.py checks what spans several consumers (owned sums,
limits) and applies inheritance. Problems are collected, never raised one by one (errors.py).
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from schedulerd.bounds import (
    CONSUMER_NAME,
    CONSUMER_NAME_RULE,
    MAX_CONSUMER_NAME,
    MAX_CONSUMER_PATH,
    MAX_POLICY_BYTES,
    NODE_NAME,
    NODE_NAME_RULE,
)
from schedulerd.core.model import ROOT, ConsumerPath, ConsumerPolicy, Policy
from schedulerd.filetrust import UntrustedFile, read_trusted
from schedulerd.policy import fields
from schedulerd.policy.errors import Issues, PolicyError, PolicyIssue, TooManyIssues
from schedulerd.policy.nodes import (
    INT,
    POLICY_LIMITS,
    compose,
    describe,
    entries,
    is_null,
    join,
    unknown_key,
)
from schedulerd.policy.tree import Draft, Inherited, PoolDraft, WindowDraft, or_, resolve

VERSION = 1
TOP_KEYS = (
    *("version", "users", "admins", "run_as_root", "usage_half_life", "usage_weight"),
    *("timezone", "defaults"),
    "consumers",
)
DEFAULT_KEYS = ("grace", "min_runtime", "max_preemptions", "reclaim_patience", "order")
CONSUMER_KEYS = (
    *("owned", "share", "limit", "lend", "borrow"),
    *(
        "grace",
        "min_runtime",
        "max_preemptions",
        "reclaim_patience",
        "order",
        "priority_preemption",
    ),
    *("users", "admins"),
    *("run_as_root", "pools", "windows", "consumers"),
)
POOL_KEYS = ("owned", "share", "limit")
WINDOW_KEYS = ("when", "owned", "share", "limit")
# The most time windows one consumer, and one policy, may have: the loader checks the
# tree in every window state, and there are at most two per window and day.
MAX_WINDOWS = 16
MAX_POLICY_WINDOWS = 256
# Lowercase so that paths are unambiguous in CLIs, logs and URLs; no "/" since it separates.
NAME = CONSUMER_NAME
NAME_RULE = CONSUMER_NAME_RULE
# The most consumers one policy may have (the tree is walked at every scheduling cycle).
MAX_CONSUMERS = 10_000


def load_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy text; raise PolicyError listing every problem."""
    issues = Issues(source)
    policy = None
    try:
        doc = compose(text, issues, POLICY_LIMITS)
        policy = _read_document(doc, issues) if not issues else None
    except TooManyIssues:  # reported by raise_if_any, with a note that there are more
        pass
    issues.raise_if_any()
    if policy is None:  # unreachable: no issues means the document was read in full
        raise AssertionError("policy not read, yet no issue was reported")
    return policy


def load_policy_file(path: str | Path, *, trusted: bool = False) -> Policy:
    return load_policy(read_policy_file(path, trusted=trusted), str(path))


def read_policy_file(path: str | Path, *, trusted: bool = False) -> str:
    """A policy file's text, bounded and decoded; PolicyError naming the file if not.
    `trusted`: the daemon's own policy, which names the admins and who runs as root,
    is read only if no one but root or the daemon's user could have written it
    (schedulerd/filetrust.py)."""
    source = str(path)
    try:
        data = read_trusted(Path(path), MAX_POLICY_BYTES, check_writers=trusted)
        if len(data) > MAX_POLICY_BYTES:
            message = f"the file is too large for a policy (at most {MAX_POLICY_BYTES:,} bytes)"
            raise PolicyError([PolicyIssue(source, 0, "", message)])
        return data.decode("utf-8")
    except UntrustedFile as e:
        message = f"cannot read the policy file: {e}"
        raise PolicyError([PolicyIssue(source, 0, "", message)]) from None
    except UnicodeDecodeError as e:
        message = f"not UTF-8 text (bad byte at offset {e.start})"
        raise PolicyError([PolicyIssue(source, 0, "", message)]) from None


def default_policy_text() -> str:
    """The embedded default policy: one consumer, /default, for a single workstation."""
    return resources.files("schedulerd.policy").joinpath("default.yaml").read_text("utf-8")


def _read_document(doc: Node | None, issues: Issues) -> Policy | None:
    if doc is None:
        issues.add(1, "", "the policy is empty; it needs 'version: 1' and 'consumers'")
        return None
    if not isinstance(doc, MappingNode):
        want = "the policy must be a mapping with 'version' and 'consumers'"
        issues.add(doc, "", f"{want}, got {describe(doc)}")
        return None
    seen: set[str] = set()
    root_users: frozenset[str] | None = None
    root_admins: frozenset[str] | None = None
    run_as_root: bool | None = None
    half_life: float | None = None
    usage_weight: float | None = None
    timezone: str | None = None
    inherited = Inherited()
    tops: list[Draft] = []
    count = _Count()
    for name, k, v in entries(doc, "", issues):  # a repeated key: reported, the last wins
        seen.add(name)
        if name == "version":
            _check_version(v, issues)
        elif name == "users":
            root_users = fields.users(v, "users", issues)
        elif name == "admins":
            root_admins = fields.admins(v, "admins", issues)
        elif name == "run_as_root":
            run_as_root = fields.flag(v, "run_as_root", issues)
        elif name == "usage_half_life":
            half_life = fields.duration(v, "usage_half_life", issues)
            if half_life is not None and half_life < 1:
                issues.add(v, "usage_half_life", f"at least 1s, got {describe(v)}")
                half_life = None
        elif name == "usage_weight":
            usage_weight = fields.share(v, "usage_weight", issues)
        elif name == "timezone":
            timezone = fields.timezone(v, "timezone", issues)
        elif name == "defaults":
            inherited = _read_defaults(v, issues)
        elif name == "consumers":
            tops = _read_children(v, "consumers", ROOT, issues, count)
            if is_null(v) or (isinstance(v, MappingNode) and not v.value):
                issues.add(v, "consumers", "must name at least one consumer")
        else:
            issues.add(k, name, unknown_key(name, TOP_KEYS))
    for required in ("version", "consumers"):
        if required not in seen:
            issues.add(doc, required, "missing; a policy needs 'version: 1' and 'consumers'")
    everyone = frozenset({"*"})
    inherited.run_as_root = or_(run_as_root, False)
    root = ConsumerPolicy(
        path=ROOT,
        users=everyone if root_users is None else root_users,
        admins=or_(root_admins, frozenset()),
        run_as_root=inherited.run_as_root,
    )
    policy = resolve(root, tops, inherited, issues, timezone or "UTC")
    if half_life is not None:
        policy = replace(policy, usage_half_life_s=half_life)
    if usage_weight is not None:
        policy = replace(policy, usage_weight=usage_weight)
    return policy


class _Count:
    """Consumers read so far, against MAX_CONSUMERS."""

    def __init__(self) -> None:
        self.n = 0
        self.windows = 0


def _check_version(node: Node, issues: Issues) -> None:
    if isinstance(node, ScalarNode) and node.tag == INT and node.value.strip() == str(VERSION):
        return
    message = f"unsupported version {describe(node)}; this schedulerd reads version {VERSION}"
    issues.add(node, "version", message)


def _read_defaults(node: Node, issues: Issues) -> Inherited:
    d = Inherited()
    if is_null(node):
        return d
    if not isinstance(node, MappingNode):
        issues.add(node, "defaults", f"must be a mapping, got {describe(node)}")
        return d
    for name, k, v in entries(node, "defaults", issues):
        key = join("defaults", name)
        if name == "grace":
            d.grace_s = or_(fields.duration(v, key, issues), d.grace_s)
        elif name == "min_runtime":
            d.min_runtime_s = or_(fields.duration(v, key, issues), d.min_runtime_s)
        elif name == "reclaim_patience":
            d.reclaim_patience_s = or_(fields.duration(v, key, issues), d.reclaim_patience_s)
        elif name == "max_preemptions":
            d.max_preemptions = or_(fields.preemptions(v, key, issues), d.max_preemptions)
        elif name == "order":
            d.order = or_(fields.order(v, key, issues), d.order)
        elif name in CONSUMER_KEYS:
            allowed = ", ".join(DEFAULT_KEYS)
            message = f"'{name}' has no default; set it on each consumer (defaults: {allowed})"
            issues.add(k, key, message)
        else:
            issues.add(k, key, unknown_key(name, DEFAULT_KEYS))
    return d


def _read_children(
    node: Node, key: str, parent: ConsumerPath, issues: Issues, count: _Count
) -> list[Draft]:
    """The consumers under `key`. Null means none (a leaf); the caller decides if that is ok."""
    if is_null(node):
        return []
    if not isinstance(node, MappingNode):
        want = "must be a mapping of consumer names to their settings"
        issues.add(node, key, f"{want}, got {describe(node)}")
        return []
    drafts: list[Draft] = []
    for name, k, v in entries(node, key, issues):
        ckey = join(key, name)
        path = ConsumerPath(f"{parent.rstrip('/')}/{name}")
        count.n += 1
        if count.n > MAX_CONSUMERS:
            issues.add(k, ckey, f"more than {MAX_CONSUMERS:,} consumers in one policy")
            return drafts
        if not NAME.fullmatch(name):
            hint = f"; did you mean '{name.lower()}'?" if NAME.fullmatch(name.lower()) else ""
            shown = name if len(name) <= 64 else name[:64] + "..."
            message = f"consumer name '{shown}' is not allowed: names use {NAME_RULE}{hint}"
            issues.add(k, ckey, message)
        elif len(name) > MAX_CONSUMER_NAME:
            message = f"consumer name of {len(name)} characters, at most {MAX_CONSUMER_NAME}"
            issues.add(k, ckey, message)
        elif len(path) > MAX_CONSUMER_PATH:
            message = f"the path {path[:64]}... is longer than {MAX_CONSUMER_PATH} characters"
            issues.add(k, ckey, message)
        drafts.append(_read_consumer(v, ckey, path, issues, count))
    return drafts


def _read_consumer(
    node: Node, key: str, path: ConsumerPath, issues: Issues, count: _Count
) -> Draft:
    d = Draft(path=path)
    if is_null(node):  # `batch:` with nothing: a leaf with every default
        return d
    if not isinstance(node, MappingNode):
        issues.add(node, key, f"must be a mapping of settings, got {describe(node)}")
        return d
    for name, k, v in entries(node, key, issues):
        vkey = join(key, name)
        if name == "owned":
            d.owned, d.owned_node = fields.gpus(v, vkey, issues, minimum=0), v
        elif name == "share":
            d.share = or_(fields.share(v, vkey, issues), d.share)
        elif name == "limit":
            d.limit, d.limit_node = fields.limit(v, vkey, issues), v
        elif name == "lend":
            d.lend = or_(fields.flag(v, vkey, issues), d.lend)
        elif name == "borrow":
            d.borrow = or_(fields.flag(v, vkey, issues), d.borrow)
        elif name == "priority_preemption":
            d.priority_preemption = or_(fields.flag(v, vkey, issues), d.priority_preemption)
        elif name == "grace":
            d.grace_s = fields.duration(v, vkey, issues)
        elif name == "min_runtime":
            d.min_runtime_s = fields.duration(v, vkey, issues)
        elif name == "reclaim_patience":
            d.reclaim_patience_s = fields.duration(v, vkey, issues)
        elif name == "max_preemptions":
            d.max_preemptions = fields.preemptions(v, vkey, issues)
        elif name == "order":
            d.order = fields.order(v, vkey, issues)
        elif name == "users":
            d.users = fields.users(v, vkey, issues)
        elif name == "admins":
            d.admins = or_(fields.admins(v, vkey, issues), d.admins)
        elif name == "run_as_root":
            d.run_as_root = fields.flag(v, vkey, issues)
        elif name == "pools":
            d.pools = _read_pools(v, vkey, issues)
        elif name == "windows":
            d.windows = _read_windows(v, vkey, issues, count)
        elif name == "consumers":
            d.children = _read_children(v, vkey, path, issues, count)
        else:
            message = unknown_key(name, CONSUMER_KEYS)
            if isinstance(v, MappingNode) and "did you mean" not in message:
                message += f"; to make '{name}' a child consumer, put it under 'consumers:'"
            issues.add(k, vkey, message)
    return d


# The most pools one policy may name (each is a cycle of its own).
MAX_POOLS = 64


def _read_pools(node: Node, key: str, issues: Issues) -> dict[str, PoolDraft]:
    """`pools: {h100: {owned: 4, share: 2, limit: 8}}`: a consumer's terms per pool; a
    pool's name is what its agents say (`--pool`, else the GPU type: docs/pools.md)."""
    out: dict[str, PoolDraft] = {}
    if is_null(node):
        return out
    if not isinstance(node, MappingNode):
        want = "must be a mapping of pool names to owned/share/limit"
        issues.add(node, key, f"{want}, got {describe(node)}")
        return out
    for name, k, v in entries(node, key, issues):
        pkey = join(key, name)
        if not NODE_NAME.fullmatch(name):
            issues.add(k, pkey, f"pool name '{name[:64]}' is not allowed: use {NODE_NAME_RULE}")
            continue
        if len(out) >= MAX_POOLS:
            issues.add(k, pkey, f"more than {MAX_POOLS} pools")
            return out
        d = PoolDraft(name_node=k)
        out[name] = d
        if is_null(v):
            continue
        if not isinstance(v, MappingNode):
            issues.add(v, pkey, f"must be a mapping of owned/share/limit, got {describe(v)}")
            continue
        for term, tk, tv in entries(v, pkey, issues):
            tkey = join(pkey, term)
            if term == "owned":
                d.owned, d.owned_node = fields.gpus(tv, tkey, issues, minimum=0), tv
            elif term == "share":
                d.share = fields.share(tv, tkey, issues)
            elif term == "limit":
                d.limit, d.limit_node, d.limit_set = fields.limit(tv, tkey, issues), tv, True
            else:
                issues.add(tk, tkey, unknown_key(term, POOL_KEYS))
    return out


def _read_windows(node: Node, key: str, issues: Issues, count: _Count) -> list[WindowDraft]:
    """`windows: [{when: "Mon-Fri 09:00-18:00", owned: 8, share: 3, limit: 12}]`: the
    consumer's terms by time window, the first that holds winning (core/windows.py)."""
    out: list[WindowDraft] = []
    if is_null(node):
        return out
    if not isinstance(node, SequenceNode):
        want = "must be a list of windows, each with 'when' and owned/share/limit"
        issues.add(node, key, f"{want}, got {describe(node)}")
        return out
    for i, item in enumerate(node.value):
        wkey = f"{key}[{i}]"
        if i >= MAX_WINDOWS:
            issues.add(item, key, f"more than {MAX_WINDOWS} windows on one consumer")
            return out
        count.windows += 1
        if count.windows > MAX_POLICY_WINDOWS:
            issues.add(item, wkey, f"more than {MAX_POLICY_WINDOWS} windows in one policy")
            return out
        if not isinstance(item, MappingNode):
            want = "must be a mapping with 'when' and any of owned, share, limit"
            issues.add(item, wkey, f"{want}, got {describe(item)}")
            continue
        d = WindowDraft(node=item, key=wkey)
        seen: set[str] = set()
        ok = True
        for term, tk, tv in entries(item, wkey, issues):
            tkey = join(wkey, term)
            seen.add(term)
            if term == "when":
                parsed = fields.when(tv, tkey, issues)
                if parsed is None:
                    ok = False
                else:
                    d.when = str(tv.value)
                    d.days, d.start, d.end = parsed
            elif term == "owned":
                d.owned, d.owned_node = fields.gpus(tv, tkey, issues, minimum=0), tv
                ok = ok and d.owned is not None
            elif term == "share":
                d.share = fields.share(tv, tkey, issues)
                ok = ok and d.share is not None
            elif term == "limit":
                d.limit, d.limit_node, d.limit_set = fields.limit(tv, tkey, issues), tv, True
            else:
                issues.add(tk, tkey, unknown_key(term, WINDOW_KEYS))
        if "when" not in seen:
            issues.add(
                item, join(wkey, "when"), 'missing; say when it holds, e.g. "Mon-Fri 09:00-18:00"'
            )
            ok = False
        if not seen & {"owned", "share", "limit"}:
            issues.add(item, wkey, "sets none of owned, share, limit")
        if ok:
            out.append(d)
    return out
