"""The policy's `pools:` key (docs/pools.md): terms per pool, inheritance from the
consumer's own terms, owned sums and limits checked per pool, errors with line and key."""

from __future__ import annotations

import pytest

from schedulerd.core import ClusterShape, check_submission
from schedulerd.policy import PolicyError, load_policy

POLICY = """\
version: 1
consumers:
  research:
    owned: 6
    pools:
      h100: {limit: 12}
    consumers:
      vision:
        owned: 4
        share: 2
        pools:
          h100: {owned: 3, share: 5}
      nlp:
        owned: 2
        pools:
          h100: {owned: 1}
  batch:
    share: 1
    limit: 20
"""


def terms(policy_text: str, pool: str) -> dict[str, tuple[int, float, int | None]]:
    pol = load_policy(policy_text).in_pool(pool)
    return {p: (c.owned, c.share, c.limit) for p, c in pol.consumers.items()}


def test_a_pool_takes_its_own_terms_and_the_consumers_own_for_the_rest() -> None:
    h100 = terms(POLICY, "h100")
    assert h100["/research/vision"] == (3, 5.0, None)
    assert h100["/research/nlp"] == (1, 1.0, None)
    # Its own owned (6) holds in every pool; its limit is set for h100 only.
    assert h100["/research"] == (6, 1.0, 12)
    assert h100["/batch"] == (0, 1.0, 20)
    # A pool the policy does not name: every consumer's own terms.
    other = terms(POLICY, "a100")
    assert other["/research/vision"] == (4, 2.0, None)
    assert other["/research"] == (6, 1.0, None)


def test_a_parent_without_owned_owns_the_sum_of_its_children_in_each_pool() -> None:
    text = POLICY.replace("    owned: 6\n", "", 1)
    assert terms(text, "h100")["/research"][0] == 4
    assert terms(text, "a100")["/research"][0] == 6


@pytest.mark.parametrize(
    ("edit", "line", "key", "says"),
    [
        pytest.param(
            ("h100: {owned: 3, share: 5}", "h100: {owned: 9, share: 5}"),
            4,
            "consumers.research.owned",
            "below the sum of its children's owned GPUs in pool h100 (10)",
            id="children-own-more-in-a-pool",
        ),
        pytest.param(
            ("h100: {limit: 12}", "h100: {limit: 3}"),
            6,
            "consumers.research.pools.h100.limit",
            "limit 3 is below owned 6 in pool h100",
            id="limit-below-owned-in-a-pool",
        ),
        pytest.param(
            ("h100: {owned: 1}", "h100: {owned: 1, weight: 2}"),
            16,
            "consumers.research.consumers.nlp.pools.h100.weight",
            "unknown key 'weight'",
            id="unknown-key",
        ),
        pytest.param(
            ("h100: {owned: 1}", "h100: {owned: 1.5}"),
            16,
            "consumers.research.consumers.nlp.pools.h100.owned",
            "whole number of GPUs",
            id="half-a-gpu",
        ),
        pytest.param(
            ("h100: {owned: 1}", "'h 100': {owned: 1}"),
            16,
            "consumers.research.consumers.nlp.pools.h 100",
            "pool name 'h 100' is not allowed",
            id="bad-pool-name",
        ),
        pytest.param(
            ("      h100: {limit: 12}", "      - h100"),
            6,
            "consumers.research.pools",
            "must be a mapping of pool names",
            id="a-list",
        ),
    ],
)
def test_pool_errors_name_the_line_and_the_key(
    edit: tuple[str, str], line: int, key: str, says: str
) -> None:
    text = POLICY.replace(*edit, 1)
    assert text != POLICY
    with pytest.raises(PolicyError) as e:
        load_policy(text, "p.yaml")
    shown = str(e.value)
    assert f"p.yaml:{line}: {key}: " in shown, shown
    assert says in shown, shown


SHAPE = ClusterShape((8, 8, 4), (("a100", "a100"), ("a100", "a100"), ("h100", "h100")))


@pytest.mark.parametrize(
    ("pool", "gpus", "refused"),
    [
        pytest.param("h100", 4, None, id="fits-its-pool"),
        pytest.param("h100", 8, "can never fit: the cluster has 4 GPUs", id="too-big-for-h100"),
        pytest.param("", 8, None, id="any-pool-that-fits"),
        pytest.param("a100", 16, None, id="spans-a100"),
        pytest.param("b200", 1, "no node has pool or GPU type 'b200'", id="unknown-pool"),
    ],
)
def test_submission_checks_the_pools_a_job_may_use(
    pool: str, gpus: int, refused: str | None
) -> None:
    pol = load_policy("version: 1\nconsumers:\n  a: {}\n")
    error = check_submission(pol, SHAPE, "/a", "u", gpus, gpus, pool)
    if refused is None:
        assert error is None
    else:
        assert error is not None and refused in error, error


def test_a_limit_in_every_pool_refuses_a_job_too_large_for_all() -> None:
    pol = load_policy("version: 1\nconsumers:\n  a: {limit: 8, pools: {h100: {limit: 2}}}\n")
    assert check_submission(pol, SHAPE, "/a", "u", 4, 4, "") is None  # a100 takes it
    error = check_submission(pol, SHAPE, "/a", "u", 4, 4, "h100")
    assert error is not None and "limit of 2" in error


def test_a_job_that_fits_only_while_a_window_holds_is_queued() -> None:
    text = (
        "version: 1\nconsumers:\n  a:\n    limit: 2\n    windows:\n"
        "      - {when: 'Sat-Sun 00:00-24:00', limit: 8}\n"
    )
    pol = load_policy(text)
    assert check_submission(pol, SHAPE, "/a", "u", 6, 6, "a100") is None
    error = check_submission(pol, SHAPE, "/a", "u", 9, 9, "a100")
    assert error is not None and "limit of 8" in error
