"""The policy loader: valid files become the expected core Policy; every problem is reported
with its file, line and dotted key, all of them in one pass."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from schedulerd.core.model import ROOT, ConsumerPath, ConsumerPolicy, Order, Policy
from schedulerd.policy import (
    PolicyError,
    PolicyIssue,
    default_policy_text,
    load_policy,
    load_policy_file,
)

POLICIES = Path(__file__).resolve().parent.parent / "policies"
EVERYONE = frozenset({"*"})


def cp(path: str, **kw: Any) -> ConsumerPolicy:
    kw.setdefault("run_as_root", False)  # the loader resolves it: the root's, else false
    return ConsumerPolicy(path=ConsumerPath(path), **kw)


def root(users: frozenset[str] = EVERYONE, **kw: Any) -> ConsumerPolicy:
    kw.setdefault("run_as_root", False)
    return ConsumerPolicy(path=ROOT, users=users, **kw)


def load(text: str) -> Policy:
    return load_policy(textwrap.dedent(text), "p.yaml")


def issues_of(text: str) -> tuple[PolicyIssue, ...]:
    with pytest.raises(PolicyError) as e:
        load(text)
    return e.value.issues


# --- valid files -----------------------------------------------------------------------------

VALID = [
    pytest.param(
        """
        version: 1
        consumers:
          a: {}
        """,
        [root(), cp("/a")],
        id="minimal-leaf-gets-consumerpolicy-defaults",
    ),
    pytest.param(
        """
        version: 1
        users: [alice, bob]
        consumers:
          a:
        """,
        [root(frozenset({"alice", "bob"})), cp("/a")],
        id="root-users-list-and-null-consumer-is-a-default-leaf",
    ),
    pytest.param(
        """
        version: 1
        users: []
        consumers:
          a: {users: [dana]}
        """,
        [root(frozenset()), cp("/a", users=frozenset({"dana"}))],
        id="root-users-empty-list-means-only-where-a-consumer-names-them",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a:
            owned: 4
            share: 2.5
            limit: 10
            lend: false
            borrow: no
            grace: 1h30m
            min_runtime: 90
            order: fifo
            users: [carol]
        """,
        [
            root(),
            cp(
                "/a",
                owned=4,
                share=2.5,
                limit=10,
                lend=False,
                borrow=False,
                grace_s=5400.0,
                min_runtime_s=90.0,
                order=Order.FIFO,
                users=frozenset({"carol"}),
            ),
        ],
        id="every-consumer-field-maps-to-consumerpolicy",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a: {limit: null, users: "*", share: 0}
          b: {limit: ~, users: []}
        """,
        [root(), cp("/a", share=0.0, users=EVERYONE), cp("/b", users=frozenset())],
        id="null-limit-is-no-limit-star-and-empty-users",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          r:
            consumers:
              v: {owned: 3}
              n: {owned: 2}
          p:
            owned: 9
            consumers:
              x: {owned: 4}
        """,
        [
            root(),
            cp("/r", owned=5),
            cp("/r/v", owned=3),
            cp("/r/n", owned=2),
            cp("/p", owned=9),
            cp("/p/x", owned=4),
        ],
        id="parent-owned-defaults-to-children-sum-explicit-may-exceed-it",
    ),
    pytest.param(
        """
        version: 1
        defaults: {order: fifo, grace: 10s}
        consumers:
          r:
            grace: 2m
            order: fairshare
            consumers:
              v: {}
              n: {grace: 5s, min_runtime: 1m}
              m:
                consumers:
                  deep: {}
          p: {}
        """,
        [
            root(),
            cp("/r", grace_s=120.0, order=Order.FAIRSHARE),
            cp("/r/v", grace_s=120.0, order=Order.FAIRSHARE),
            cp("/r/n", grace_s=5.0, min_runtime_s=60.0, order=Order.FAIRSHARE),
            cp("/r/m", grace_s=120.0, order=Order.FAIRSHARE),
            cp("/r/m/deep", grace_s=120.0, order=Order.FAIRSHARE),
            cp("/p", grace_s=10.0, order=Order.FIFO),
        ],
        id="inheritance-own-then-ancestor-then-defaults-then-model",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          zeta:
            consumers:
              b: {}
              a: {}
          alpha: {}
        """,
        [root(), cp("/zeta"), cp("/zeta/b"), cp("/zeta/a"), cp("/alpha")],
        id="consumers-top-down-in-file-order",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a:
            consumers:
          b:
            consumers: {}
        """,
        [root(), cp("/a"), cp("/b")],
        id="empty-nested-consumers-is-a-leaf",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a-1.b_2: {}
          "0ops": {}
        """,
        [root(), cp("/a-1.b_2"), cp("/0ops")],
        id="names-may-use-digits-dot-dash-underscore",
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_policy_loads_to_expected_consumers(
    text: str, expected: list[ConsumerPolicy]
) -> None:
    policy = load(text)
    # A list, so that the top-down order counts as well as the values.
    assert list(policy.consumers.values()) == expected
    assert list(policy.consumers) == [c.path for c in expected]


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        pytest.param("45s", 45.0, id="seconds"),
        pytest.param("10m", 600.0, id="minutes"),
        pytest.param("1h", 3600.0, id="hours"),
        pytest.param("1h30m", 5400.0, id="hours-and-minutes"),
        pytest.param("1d2h", 93600.0, id="days-and-hours"),
        pytest.param("2.5m", 150.0, id="fractional-unit"),
        pytest.param("0s", 0.0, id="zero"),
        pytest.param("75", 75.0, id="int-is-seconds"),
        pytest.param("0.5", 0.5, id="float-is-seconds"),
    ],
)
def test_duration_forms(written: str, seconds: float) -> None:
    policy = load(f"version: 1\nconsumers:\n  a: {{grace: {written}, min_runtime: {written}}}\n")
    a = policy.consumers[ConsumerPath("/a")]
    assert (a.grace_s, a.min_runtime_s) == (seconds, seconds)


# --- errors: (line, key, a fragment of the message) for every issue, in order ---------------

ERRORS = [
    pytest.param(
        "version: 1\nconsumers:\n  a: {share: 1\n  b: 2\n",
        [(4, "", "YAML syntax error: expected ',' or '}'")],
        id="yaml-syntax-error-has-line-and-pyyaml-problem",
    ),
    pytest.param(
        "version: 1\nconsumers: {a: {}}\n---\nversion: 1\n",
        [(3, "", "another document")],
        id="one-document-only",
    ),
    pytest.param(
        "version: 1\nconsumers:\n  a: {share: \x07}\n",
        [(3, "", "control character U+0007")],
        id="control-character-has-its-line",
    ),
    pytest.param("# only a comment\n", [(1, "", "empty")], id="empty-file"),
    pytest.param("- a\n- b\n", [(1, "", "must be a mapping")], id="top-level-not-a-mapping"),
    pytest.param(
        "users: '*'\n",
        [(1, "version", "missing"), (1, "consumers", "missing")],
        id="version-and-consumers-required",
    ),
    pytest.param(
        "version: 2\nconsumers: {a: {}}\n",
        [(1, "version", "unsupported version 2")],
        id="version-must-be-1",
    ),
    pytest.param(
        "version: '1'\nconsumers: {a: {}}\n",
        [(1, "version", "unsupported version '1'")],
        id="version-must-be-the-number-1",
    ),
    pytest.param(
        "version: 1\nconsumers: {}\n",
        [(2, "consumers", "at least one consumer")],
        id="consumers-must-not-be-empty",
    ),
    pytest.param(
        "version: 1\nconsumers:\n",
        [(2, "consumers", "at least one consumer")],
        id="consumers-must-not-be-null",
    ),
    pytest.param(
        "version: 1\nconsumers: [a, b]\n",
        [(2, "consumers", "must be a mapping of consumer names")],
        id="consumers-must-be-a-mapping",
    ),
    pytest.param(
        """
        version: 1
        verison: 1
        defaults: {grce: 1s, share: 2}
        consumers:
          a:
            shares: 2
            colour: red
            vision: {share: 1}
        """,
        [
            (3, "verison", "unknown key 'verison'; did you mean 'version'?"),
            (4, "defaults.grce", "did you mean 'grace'?"),
            (4, "defaults.share", "'share' has no default"),
            (7, "consumers.a.shares", "unknown key 'shares'; did you mean 'share'?"),
            (8, "consumers.a.colour", "allowed: owned, share"),
            (9, "consumers.a.vision", "put it under 'consumers:'"),
        ],
        id="unknown-keys-anywhere-with-did-you-mean",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          Research: {}
          _x: {}
          a b: {}
          ok:
            consumers:
              Bad/Name: {}
        """,
        [
            (4, "consumers.Research", "did you mean 'research'?"),
            (5, "consumers._x", "lowercase letters, digits"),
            (6, "consumers.a b", "is not allowed"),
            (9, "consumers.ok.consumers.Bad/Name", "is not allowed"),
        ],
        id="consumer-names-lowercase-rule",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a:
            owned: 2.5
            share: true
            limit: 0
            lend: maybe
            borrow: "true"
            grace: 10 minutes
            min_runtime: -5
            order: fair
            users: alice
          b:
            owned: -1
            share: -1
            limit: 1.5
            grace: .inf
            order: 3
            users: [alice, "", 3, "bo b", [x]]
          c:
            owned: true
            share: .nan
            users:
        """,
        [
            (5, "consumers.a.owned", "whole number of GPUs from 0 to 1,000,000, got 2.5"),
            (6, "consumers.a.share", "number from 0 to 1,000,000, got true"),
            (7, "consumers.a.limit", "from 1 to 1,000,000, or null for no limit; got 0"),
            (8, "consumers.a.lend", "true or false, got 'maybe'"),
            (9, "consumers.a.borrow", "true or false, got 'true'"),
            (10, "consumers.a.grace", "duration like 45s, 10m, 1h30m"),
            (11, "consumers.a.min_runtime", "got -5"),
            (12, "consumers.a.order", "one of priority, fifo, fairshare; got 'fair'"),
            (13, "consumers.a.users", "list of user names, got 'alice'"),
            (15, "consumers.b.owned", "got -1"),
            (16, "consumers.b.share", "got -1"),
            (17, "consumers.b.limit", "got 1.5"),
            (18, "consumers.b.grace", "got .inf"),
            (19, "consumers.b.order", "got 3"),
            (20, "consumers.b.users[1]", "user name"),
            (20, "consumers.b.users[2]", "got 3"),
            (20, "consumers.b.users[3]", "got 'bo b'"),
            (20, "consumers.b.users[4]", "got a list"),
            (22, "consumers.c.owned", "got true"),
            (23, "consumers.c.share", "got .nan"),
            (24, "consumers.c.users", "got nothing"),
        ],
        id="types-and-ranges-all-reported-in-one-pass",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          r:
            owned: 4
            consumers:
              v: {owned: 3}
              n: {owned: 2}
        """,
        [(5, "consumers.r.owned", "owned 4 is below the sum of its children's owned GPUs (5)")],
        id="parent-owned-below-children-sum",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a: {owned: 6, limit: 5}
          p:
            limit: 4
            consumers:
              x: {owned: 5}
        """,
        [
            (4, "consumers.a.limit", "limit 5 is below owned 6"),
            (6, "consumers.p.limit", "limit 4 is below owned 5 (the sum of its children's)"),
        ],
        id="limit-below-own-or-derived-owned",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a:
            share: 1
            share: 2
          a: {}
        version: 1
        """,
        [
            (6, "consumers.a.share", "duplicate key 'share' (first set at line 5)"),
            (7, "consumers.a", "duplicate key 'a' (first set at line 4)"),
            (8, "version", "duplicate key 'version' (first set at line 2)"),
        ],
        id="duplicate-keys-reported-at-the-second",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a: 3
          b: [x]
        """,
        [(4, "consumers.a", "mapping of settings, got 3"), (5, "consumers.b", "got a list")],
        id="consumer-settings-must-be-a-mapping",
    ),
    pytest.param(
        """
        version: 1
        defaults: {order: FIFO, grace: soon}
        consumers: {a: {}}
        """,
        [
            (3, "defaults.order", "did you mean 'fifo'?"),
            (3, "defaults.grace", "got 'soon'"),
        ],
        id="defaults-values-are-validated",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a: &loop
            consumers:
              b: *loop
        """,
        [
            (4, "consumers.a", "YAML anchors (&loop) are not allowed in a policy"),
            (6, "consumers.a.consumers.b", "YAML aliases (*loop) are not allowed in a policy"),
        ],
        id="recursive-alias-is-an-error-not-a-hang",
    ),
    pytest.param(
        """
        version: 1
        consumers:
          a: &team {share: 2, grace: 1m}
          b:
            <<: *team
            share: 3
        """,
        [
            (4, "consumers.a", "YAML anchors (&team) are not allowed"),
            (6, "consumers.b", "YAML merge keys (<<) are not allowed in a policy"),
            (6, "consumers.b.<<", "YAML aliases (*team) are not allowed"),
        ],
        id="merge-keys-anchors-and-aliases-are-refused",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_errors_name_line_and_key(text: str, expected: list[tuple[int, str, str]]) -> None:
    issues = issues_of(text)
    assert [(i.line, i.key) for i in issues] == [(line, key) for line, key, _ in expected]
    for issue, (_, _, fragment) in zip(issues, expected, strict=True):
        assert fragment in issue.message, str(issue)
        assert issue.source == "p.yaml"


def test_issue_and_error_text() -> None:
    issues = issues_of("version: 2\nconsumers:\n  a: {share: x}\n")
    assert [str(i) for i in issues] == [
        "p.yaml:1: version: unsupported version 2; this schedulerd reads version 1",
        "p.yaml:3: consumers.a.share: must be a number from 0 to 1,000,000, got 'x'",
    ]
    error = PolicyError(issues)
    assert isinstance(error, ValueError)
    assert str(error).splitlines() == [
        "policy p.yaml has 2 errors:",
        *(f"  {i}" for i in issues),
    ]
    one = PolicyError(issues[:1])
    assert str(one).splitlines()[0] == "policy p.yaml has 1 error:"
    # An issue about the whole document has no key, and reads without an empty field.
    assert str(PolicyIssue("f", 0, "", "policy file not found")) == "f:0: policy file not found"


def test_load_policy_default_source() -> None:
    with pytest.raises(PolicyError) as e:
        load_policy("version: 1\n")
    assert e.value.issues[0].source == "<policy>"


# --- files ---------------------------------------------------------------------------------


def test_missing_file_is_a_policy_error_on_line_0(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as e:
        load_policy_file(path)
    assert [(i.source, i.line) for i in e.value.issues] == [(str(path), 0)]
    assert e.value.issues[0].message == "cannot read the policy file: No such file or directory"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"version: 1\nconsumers: {a: {\xff}}\n", "not UTF-8", id="not-utf8"),
        pytest.param(None, "cannot read the policy file: not a regular file", id="a-directory"),
    ],
)
def test_unreadable_file_is_a_policy_error(
    tmp_path: Path, content: bytes | None, fragment: str
) -> None:
    path = tmp_path / "p.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(PolicyError) as e:
        load_policy_file(str(path))
    assert [(i.source, i.line) for i in e.value.issues] == [(str(path), 0)]
    assert fragment in e.value.issues[0].message


def test_file_errors_name_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nconsumers:\n  a: {limit: 0}\n")
    with pytest.raises(PolicyError) as e:
        load_policy_file(str(path))
    assert str(e.value.issues[0]).startswith(f"{path}:3: consumers.a.limit: ")


@pytest.mark.parametrize("name", ["default.yaml", "multi-team.yaml"])
def test_shipped_policies_load(name: str) -> None:
    policy = load_policy_file(POLICIES / name)
    assert ROOT in policy.consumers
    assert policy.leaves()


def test_default_policy_is_one_leaf_that_everyone_may_use() -> None:
    policy = load_policy(default_policy_text())
    assert policy.leaves() == (ConsumerPath("/default"),)
    leaf = policy.consumers[ConsumerPath("/default")]
    # Water-filling gives the only leaf the whole cluster: no limit, nothing to lend to.
    assert (leaf.limit, leaf.share, leaf.order) == (None, 1.0, Order.PRIORITY)
    assert policy.allowed_users(ConsumerPath("/default")) == EVERYONE
    # policies/default.yaml is the embedded file itself, not a copy that could drift.
    assert (POLICIES / "default.yaml").is_symlink()
    assert (POLICIES / "default.yaml").read_text() == default_policy_text()


def test_multi_team_example_shows_the_format() -> None:
    policy = load_policy_file(POLICIES / "multi-team.yaml")
    cs = policy.consumers
    by_name = {p.rsplit("/", 1)[1]: c for p, c in cs.items() if p != ROOT}
    # The features the example exists to show, so that it keeps showing them.
    assert any(c.share == 0 and c.owned == 0 and c.borrow for c in by_name.values())
    assert any(not c.lend and c.owned > 0 for c in by_name.values())
    assert any(c.order is Order.FAIRSHARE for c in by_name.values())
    assert any(c.limit is not None for c in by_name.values())
    assert any(c.users is not None and "*" not in c.users for c in by_name.values())
    for path in cs:
        kids = policy.children(path)
        if path != ROOT and kids:
            assert cs[path].owned >= sum(cs[k].owned for k in kids)


def test_priority_preemption_is_a_per_consumer_flag() -> None:
    text = "version: 1\nconsumers:\n  a: {priority_preemption: true}\n  b: {}\n"
    policy = load_policy(text, "p.yaml")
    assert policy.consumers[ConsumerPath("/a")].priority_preemption is True
    assert policy.consumers[ConsumerPath("/b")].priority_preemption is False
    with pytest.raises(PolicyError) as err:
        load_policy("version: 1\nconsumers:\n  a: {priority_preemption: 2}\n", "p.yaml")
    assert "p.yaml:3: consumers.a.priority_preemption" in str(err.value)


def test_admins_add_up_from_the_root_down() -> None:
    text = """
    version: 1
    admins: [ops]
    consumers:
      research:
        admins: [lead]
        consumers:
          nlp: {admins: [carol, lead]}
          vision: {}
      product: {}
    """
    policy = load(text)
    p = ConsumerPath
    assert policy.consumers[ROOT].admins == frozenset({"ops"})
    assert policy.consumers[p("/research/vision")].admins == frozenset()
    assert policy.admins_of(p("/research/nlp")) == frozenset({"ops", "lead", "carol"})
    assert policy.admins_of(p("/research/vision")) == frozenset({"ops", "lead"})
    assert policy.admins_of(p("/product")) == frozenset({"ops"})
    assert policy.admins_of(ROOT) == frozenset({"ops"})
    assert policy.admins_of(p("/nope/x")) == frozenset({"ops"})  # the root's, at least
    assert policy.admins_of(p("not-a-path")) == frozenset()


def test_run_as_root_is_inherited_and_false_by_default() -> None:
    text = """
    version: 1
    run_as_root: true
    consumers:
      ws:
        consumers: {a: {}, b: {run_as_root: false}}
      shared: {run_as_root: false, consumers: {c: {}, d: {run_as_root: true}}}
    """
    policy = load(text)
    got = {str(path): policy.runs_as_root(path) for path in policy.consumers}
    assert got == {
        "/": True,
        "/ws": True,
        "/ws/a": True,
        "/ws/b": False,
        "/shared": False,
        "/shared/c": False,
        "/shared/d": True,
    }
    plain = load("version: 1\nconsumers: {a: {}}\n")
    assert not plain.runs_as_root(ConsumerPath("/a")) and not plain.runs_as_root(ROOT)
    assert plain.consumers[ConsumerPath("/a")].run_as_root is False  # resolved by the loader
    issues = issues_of("version: 1\nrun_as_root: yes please\nconsumers: {a: {}}\n")
    assert [(i.line, i.key) for i in issues] == [(2, "run_as_root")]


def test_a_policy_built_by_hand_resolves_run_as_root_through_ancestors() -> None:
    policy = Policy(
        consumers={
            ROOT: ConsumerPolicy(path=ROOT, run_as_root=True),
            ConsumerPath("/a"): ConsumerPolicy(path=ConsumerPath("/a")),
        }
    )
    assert policy.runs_as_root(ConsumerPath("/a"))
    assert not Policy(consumers={ROOT: ConsumerPolicy(path=ROOT)}).runs_as_root(ROOT)


def test_only_the_single_workstation_default_runs_jobs_as_root() -> None:
    default = load_policy(default_policy_text())
    assert default.runs_as_root(ConsumerPath("/default"))
    assert "shared cluster must NOT" in default_policy_text()
    multi = load_policy_file(POLICIES / "multi-team.yaml")
    assert not any(multi.runs_as_root(p) for p in multi.consumers)
    assert "run_as_root:" not in (POLICIES / "multi-team.yaml").read_text()
    assert multi.consumers[ROOT].admins
    assert any(c.admins for p, c in multi.consumers.items() if p != ROOT)


def test_a_policy_file_others_could_change_is_refused(tmp_path: Path) -> None:
    # It names the admins and who may run as root: as sshd's StrictModes.
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nconsumers: {a: {}}\n")
    path.chmod(0o646)
    assert load_policy_file(path).consumers  # for oneself (schedctl, tests): any file
    with pytest.raises(PolicyError) as e:
        load_policy_file(path, trusted=True)  # the daemon's own
    assert e.value.issues[0].message == (
        f"cannot read the policy file: writable by others (mode 0646); chmod go-w {path}"
    )
    path.chmod(0o644)
    folder = tmp_path / "open"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    link = folder / "p.yaml"
    link.symlink_to(path)  # through a folder anyone may write: anyone may swap the link
    with pytest.raises(PolicyError) as e:
        load_policy_file(link, trusted=True)
    assert "the folder" in e.value.issues[0].message and "writable by others" in str(e.value)
    assert load_policy_file(path, trusted=True).consumers
