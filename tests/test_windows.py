"""Time-based plans (docs/policy.md, "Time-based plans"): the policy's `timezone` and
`windows:`, their checks with line and key, and the pure core functions that read them
(core/windows.py: policy_at, next_boundary)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from schedulerd.core import ConsumerPath, Job, JobId, JobPhase, Node, NodeName, Snapshot
from schedulerd.core.decide import decide
from schedulerd.core.windows import next_boundary, policy_at, switches
from schedulerd.policy import PolicyError, load_policy
from schedulerd.policy.fields import parse_when

POLICY = """\
version: 1
timezone: Europe/Berlin
consumers:
  research:
    consumers:
      vision:
        owned: 4
        share: 1
        windows:
          - when: "Mon-Fri 09:00-18:00"
            owned: 8
            share: 3
            limit: 12
          - when: "daily 22:00-06:00"
            share: 5
      nlp:
        owned: 2
  batch:
    owned: 2
    limit: 10
    windows:
      - when: "Sat-Sun 00:00-24:00"
        limit: null
"""

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: ZoneInfo = BERLIN) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def terms(text: str, when: str) -> dict[str, tuple[int, float, int | None, str]]:
    pol = policy_at(load_policy(text), at(when))
    return {p: (c.owned, c.share, c.limit, c.window) for p, c in pol.consumers.items()}


# --- parsing `when` -----------------------------------------------------------------

ALL = 0b1111111


@pytest.mark.parametrize(
    ("text", "days", "start", "end"),
    [
        ("Mon-Fri 09:00-18:00", 0b0011111, 9 * 3600, 18 * 3600),
        ("mon,wed 08:30-12:00", 0b0000101, 8 * 3600 + 1800, 12 * 3600),
        ("Sat-Sun 00:00-24:00", 0b1100000, 0, 86400),
        ("Fri-Mon 10:00-11:00", 0b1110001, 36000, 39600),  # a range over the week's end
        ("daily 22:00-06:00", ALL, 22 * 3600, 6 * 3600),  # crosses midnight
        ("Mon,Wed-Fri 00:00-00:30", 0b0011101, 0, 1800),
        ("daily 10:00:05-10:00:30", ALL, 36005, 36030),  # seconds, for short windows
    ],
)
def test_when_parses(text: str, days: int, start: int, end: int) -> None:
    assert parse_when(text) == (days, start, end)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Mon-Fry 09:00-18:00", "days 'Mon-Fry'"),
        ("Mon 9:00-18:00", "time '9:00'"),
        ("Mon 09:00-25:00", "time '25:00'"),
        ("Mon 24:00-06:00", "time '24:00'"),  # 24:00 ends only
        ("Mon 09:60-10:00", "time '09:60'"),
        ("Mon 09:00:60-10:00", "time '09:00:60'"),
        ("Mon 09:00-24:00:01", "time '24:00:01'"),
        ("Mon 09:00", "HH:MM-HH:MM"),
        ("09:00-18:00", "give the days"),
        ("Mon 10:00-10:00", "the same"),
        ("daily 00:00-24:00 extra", "give the days"),
    ],
)
def test_when_refused(text: str, says: str) -> None:
    result = parse_when(text)
    assert isinstance(result, str) and says in result


# --- the loader -------------------------------------------------------------------


def test_a_policy_with_windows_loads() -> None:
    pol = load_policy(POLICY)
    assert pol.timezone == "Europe/Berlin"
    assert pol.windowed == ("/research/vision", "/batch")
    vision = pol.consumers[ConsumerPath("/research/vision")]
    assert [w.when for w in vision.windows] == ["Mon-Fri 09:00-18:00", "daily 22:00-06:00"]
    # Outside every window the consumer's own values: the loaded policy's.
    assert (vision.owned, vision.share, vision.limit) == (4, 1.0, None)


def test_timezone_defaults_to_utc_and_a_policy_without_windows_is_unchanged() -> None:
    text = "version: 1\nconsumers:\n  a:\n    owned: 2\n"
    pol = load_policy(text)
    assert pol.timezone == "UTC" and pol.windowed == ()
    assert policy_at(pol, 1e9) is pol
    assert next_boundary(pol, 1e9) is None


WINDOWED = """\
version: 1
consumers:
  research:
    owned: 6
    consumers:
      vision:
        owned: 4
        limit: 6
        windows:
          - when: "Mon-Fri 09:00-18:00"
            owned: 5
      nlp:
        owned: 2
"""


@pytest.mark.parametrize(
    ("edit", "line", "key", "says"),
    [
        (
            ("version: 1\n", "version: 1\ntimezone: Mars/Olympus\n"),
            2,
            "timezone",
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            ("version: 1\n", "version: 1\ntimezone: 5\n"),
            2,
            "timezone",
            "IANA time zone name",
        ),
        (
            ('"Mon-Fri 09:00-18:00"', '"Mon-Fri 09:00-18:61"'),
            10,
            "consumers.research.consumers.vision.windows[0].when",
            "time '18:61'",
        ),
        (
            ("            owned: 5\n", "            owned: 5\n            colour: red\n"),
            12,
            "consumers.research.consumers.vision.windows[0].colour",
            "unknown key 'colour' (allowed: when, owned, share, limit)",
        ),
        (
            ("            owned: 5\n", "            owned: 1.5\n"),
            11,
            "consumers.research.consumers.vision.windows[0].owned",
            "whole number of GPUs",
        ),
        (
            ('          - when: "Mon-Fri 09:00-18:00"\n', "          - owned: 3\n"),
            10,
            "consumers.research.consumers.vision.windows[0].when",
            "missing",
        ),
        (
            ("            owned: 5\n", ""),
            10,
            "consumers.research.consumers.vision.windows[0]",
            "sets none of owned, share, limit",
        ),
        (
            ("        windows:\n", "        windows: 3\n        w:\n"),
            9,
            "consumers.research.consumers.vision.windows",
            "must be a list of windows",
        ),
        # Checks that span consumers, in the window state that breaks them.
        (
            ("            owned: 5\n", "            owned: 7\n"),
            4,
            "consumers.research.owned",
            "owned 6 is below the sum of its children's owned GPUs (9) while the window "
            "/research/vision 'Mon-Fri 09:00-18:00' holds",
        ),
        (
            ("            owned: 5\n", "            owned: 5\n            limit: 3\n"),
            12,
            "consumers.research.consumers.vision.windows[0].limit",
            "limit 3 is below owned 5 while the window /research/vision",
        ),
        (
            ("        limit: 6\n", "        limit: 4\n"),
            8,
            "consumers.research.consumers.vision.limit",
            "limit 4 is below owned 5 while the window /research/vision",
        ),
    ],
)
def test_window_problems_name_line_and_key(
    edit: tuple[str, str], line: int, key: str, says: str
) -> None:
    text = WINDOWED.replace(*edit, 1)
    assert text != WINDOWED
    with pytest.raises(PolicyError) as e:
        load_policy(text, "p.yaml")
    found = [i for i in e.value.issues if i.key == key]
    assert found, str(e.value)
    assert found[0].line == line and says in found[0].message, str(e.value)


def test_a_window_in_a_parent_without_owned_raises_its_sum() -> None:
    # /research leaves owned out: it owns its children's sum in force, 6 then 10.
    t = terms(POLICY, "2026-12-01T10:00")  # a Tuesday
    assert t["/research"][0] == 10
    assert terms(POLICY, "2026-12-01T20:00")["/research"][0] == 6


def test_every_window_state_is_checked_not_just_one_window() -> None:
    # Each window alone fits under the parent's owned 7; only the two together
    # (Wednesdays 10:00-12:00) do not.
    text = """\
version: 1
consumers:
  p:
    owned: 7
    consumers:
      a:
        owned: 2
        windows: [{when: "Mon-Wed 10:00-12:00", owned: 4}]
      b:
        owned: 2
        windows: [{when: "Wed-Fri 09:00-11:00", owned: 4}]
"""
    with pytest.raises(PolicyError) as e:
        load_policy(text, "p.yaml")
    (issue,) = e.value.issues
    assert issue.key == "consumers.p.owned" and "(8)" in issue.message
    assert "/p/a 'Mon-Wed 10:00-12:00', /p/b 'Wed-Fri 09:00-11:00' hold" in issue.message


def test_window_count_is_bounded() -> None:
    many = "".join(
        f'          - {{when: "daily 00:{i:02d}-00:{i + 1:02d}", share: 2}}\n' for i in range(17)
    )
    text = "version: 1\nconsumers:\n  a:\n    consumers:\n      b:\n        windows:\n" + many
    with pytest.raises(PolicyError) as e:
        load_policy(text.replace("    consumers:\n      b:\n        windows", "    windows"))
    assert "more than 16 windows on one consumer" in str(e.value)


# --- policy_at ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "vision", "batch"),
    [
        # Tuesday 10:00 in Berlin: the weekday window, its owned, share and limit.
        ("2026-12-01T10:00", (8, 3.0, 12, "Mon-Fri 09:00-18:00"), (2, 1.0, 10, "")),
        # 09:00 is in, 18:00 is out (the end is not included).
        ("2026-12-01T09:00", (8, 3.0, 12, "Mon-Fri 09:00-18:00"), (2, 1.0, 10, "")),
        ("2026-12-01T18:00", (4, 1.0, None, ""), (2, 1.0, 10, "")),
        # The night window crosses midnight: in at 23:00 and at 05:59 the next day.
        ("2026-12-01T23:00", (4, 5.0, None, "daily 22:00-06:00"), (2, 1.0, 10, "")),
        ("2026-12-02T05:59", (4, 5.0, None, "daily 22:00-06:00"), (2, 1.0, 10, "")),
        ("2026-12-02T06:00", (4, 1.0, None, ""), (2, 1.0, 10, "")),
        # Saturday: the weekend window (00:00-24:00) lifts /batch's limit (`limit: null`).
        ("2026-12-05T12:00", (4, 1.0, None, ""), (2, 1.0, None, "Sat-Sun 00:00-24:00")),
        (
            "2026-12-06T23:59",
            (4, 5.0, None, "daily 22:00-06:00"),
            (2, 1.0, None, "Sat-Sun 00:00-24:00"),
        ),
        # Monday 00:00: the weekend is over, the Sunday night window still holds.
        ("2026-12-07T00:00", (4, 5.0, None, "daily 22:00-06:00"), (2, 1.0, 10, "")),
        # Friday 23:00 → Saturday 01:00: a window that starts on a day holds past midnight
        # into the next day, whichever days that one names.
        (
            "2026-12-05T01:00",
            (4, 5.0, None, "daily 22:00-06:00"),
            (2, 1.0, None, "Sat-Sun 00:00-24:00"),
        ),
    ],
)
def test_policy_at(
    when: str, vision: tuple[int, float, int | None, str], batch: tuple[int, float, int | None, str]
) -> None:
    t = terms(POLICY, when)
    assert t["/research/vision"] == vision
    assert t["/batch"] == batch


def test_the_first_window_that_holds_wins() -> None:
    text = POLICY.replace('"daily 22:00-06:00"', '"daily 08:00-20:00"')
    # Tuesday 10:00: both hold; the first (Mon-Fri) wins. Saturday 10:00: the second.
    assert terms(text, "2026-12-01T10:00")["/research/vision"][3] == "Mon-Fri 09:00-18:00"
    assert terms(text, "2026-12-05T10:00")["/research/vision"] == (
        4,
        5.0,
        None,
        "daily 08:00-20:00",
    )


def test_windows_are_read_in_the_policys_time_zone() -> None:
    # 08:30 UTC on a Tuesday in December is 09:30 in Berlin: in the window; in UTC not.
    t = dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.UTC).timestamp()
    berlin = load_policy(POLICY)
    utc = load_policy(POLICY.replace("timezone: Europe/Berlin\n", ""))
    assert policy_at(berlin, t).consumers[ConsumerPath("/research/vision")].owned == 8
    assert policy_at(utc, t).consumers[ConsumerPath("/research/vision")].owned == 4


def test_policy_at_is_cached_per_window_state() -> None:
    pol = load_policy(POLICY)
    a = policy_at(pol, at("2026-12-01T10:00"))
    assert policy_at(pol, at("2026-12-01T11:00")) is a  # the same state
    assert policy_at(pol, at("2026-12-08T10:00")) is a  # a week later
    assert policy_at(a, at("2026-12-01T20:00")) is a  # resolved: no windows left


# --- next_boundary ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "boundary"),
    [
        ("2026-12-01T10:00", "2026-12-01T18:00"),  # the weekday window ends
        ("2026-12-01T18:00", "2026-12-01T22:00"),  # the night window starts
        ("2026-12-01T23:00", "2026-12-02T06:00"),  # ... and ends after midnight
        ("2026-12-04T18:30", "2026-12-04T22:00"),
        ("2026-12-05T07:00", "2026-12-05T22:00"),  # Saturday: no weekday window
        ("2026-12-06T22:30", "2026-12-07T00:00"),  # the weekend ends at Sunday 24:00
        ("2026-12-01T09:59:59", "2026-12-01T18:00"),
        ("2026-12-01T17:59:59.5", "2026-12-01T18:00"),
    ],
)
def test_next_boundary(now: str, boundary: str) -> None:
    assert next_boundary(load_policy(POLICY), at(now)) == at(boundary)


def test_next_boundary_across_dst() -> None:
    # Berlin leaves summer time on Sunday 2026-10-25 (03:00 CEST → 02:00 CET): the
    # weekday window still starts at 09:00 local on Monday, 08:00 UTC instead of 07:00.
    pol = load_policy(POLICY)
    b = next_boundary(pol, at("2026-10-26T06:30"))
    assert b == dt.datetime(2026, 10, 26, 8, 0, tzinfo=dt.UTC).timestamp()
    b = next_boundary(pol, at("2026-10-23T06:30"))  # the Friday before: CEST
    assert b == dt.datetime(2026, 10, 23, 7, 0, tzinfo=dt.UTC).timestamp()
    # And policy_at reads the local clock: Monday 09:30 CET is in the window.
    t = dt.datetime(2026, 10, 26, 8, 30, tzinfo=dt.UTC).timestamp()
    assert policy_at(pol, t).consumers[ConsumerPath("/research/vision")].owned == 8


def test_switches_say_what_changed() -> None:
    pol = load_policy(POLICY)
    day = policy_at(pol, at("2026-12-01T10:00"))
    evening = policy_at(pol, at("2026-12-01T19:00"))
    assert switches(evening, day) == [
        "policy window: /research/vision now owned 8 share 3 limit 12 (Mon-Fri 09:00-18:00)"
    ]
    assert switches(day, evening) == [
        "policy window: /research/vision now owned 4 share 1 (outside its windows)"
    ]
    assert switches(day, day) == []


# --- decide applies the windows -----------------------------------------------------


def test_decide_uses_the_terms_in_force_at_now() -> None:
    text = """\
version: 1
timezone: UTC
consumers:
  a:
    owned: 4
    windows: [{when: "Mon-Fri 09:00-18:00", owned: 12}]
  b:
    owned: 4
"""
    pol = load_policy(text)
    nodes = (Node(name=NodeName("n1"), gpus=tuple(range(8))), Node(NodeName("n2"), tuple(range(8))))
    jobs = []
    for i in range(32):
        consumer = ConsumerPath("/a" if i % 2 == 0 else "/b")
        jobs.append(
            Job(
                id=JobId(i + 1),
                consumer=consumer,
                user="u",
                gpus_min=1,
                gpus_max=1,
                priority=0,
                submit_seq=i + 1,
                phase=JobPhase.PENDING,
            )
        )
    snap = Snapshot(nodes=nodes, jobs=tuple(jobs))
    night = decide(snap, pol, at("2026-12-01T20:00", ZoneInfo("UTC")))
    day = decide(snap, pol, at("2026-12-01T10:00", ZoneInfo("UTC")))
    assert night.consumers[ConsumerPath("/a")].entitlement == pytest.approx(8)
    assert day.consumers[ConsumerPath("/a")].entitlement == pytest.approx(12)
    assert day.consumers[ConsumerPath("/b")].entitlement == pytest.approx(4)


def test_schedctl_consumers_shows_the_window_in_force() -> None:
    from schedulerd.api.v1 import admin_pb2
    from schedulerd.cli.format import consumers_table

    resp = admin_pb2.ListConsumersResponse(
        consumers=[
            admin_pb2.ConsumerStatus(path="/a", owned=8, share=3, window="Mon-Fri 09:00-18:00"),
            admin_pb2.ConsumerStatus(path="/b", owned=2, share=1),
        ],
        total_gpus=10,
    )
    lines = consumers_table(resp).splitlines()
    assert lines[1].split()[-1] == "WINDOW"
    assert lines[2].endswith("Mon-Fri 09:00-18:00") and lines[3].endswith("-")
    plain = admin_pb2.ListConsumersResponse(consumers=[admin_pb2.ConsumerStatus(path="/b")])
    assert "WINDOW" not in consumers_table(plain)


def test_schedctl_at_reads_naive_times_in_the_policys_zone() -> None:
    from schedulerd.cli.main import _at

    assert _at("2026-12-01T10:00", POLICY, "p.yaml") == at("2026-12-01T10:00")
    utc = POLICY.replace("timezone: Europe/Berlin\n", "")
    assert _at("2026-12-01T10:00", utc, "p.yaml") == at("2026-12-01T10:00", ZoneInfo("UTC"))
    assert _at("2026-12-01T10:00+01:00", utc, "p.yaml") == at("2026-12-01T10:00")
    with pytest.raises(SystemExit, match="ISO 8601"):
        _at("tomorrow", POLICY, "p.yaml")
