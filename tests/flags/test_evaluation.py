"""Evaluation as a pure function: the order of the four levels, expiry, and the rollout hash."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from taskloom.flags.evaluation import (
    CACHE_TTL_SECONDS,
    Decision,
    Evaluation,
    Flag,
    Override,
    cache_ttl,
    decide,
    in_rollout,
    rollout_bucket,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ORG, OTHER_ORG = uuid.uuid4(), uuid.uuid4()
USER, OTHER_USER = uuid.uuid4(), uuid.uuid4()


def _org_in_rollout(key: str, percentage: int, *, inside: bool) -> uuid.UUID:
    """An organization that is (or is not) within `percentage` for `key`."""
    while True:
        org = uuid.uuid4()
        if in_rollout(key, org, percentage) is inside:
            return org


def _decide(flag: Flag, *overrides: Override, org: uuid.UUID = ORG) -> Decision:
    return decide(flag=flag, overrides=list(overrides), org_id=org, user_id=USER, now=NOW)


def test_user_override_beats_org_override_beats_rollout_beats_default() -> None:
    org = _org_in_rollout("checkout.v2", 50, inside=True)
    flag = Flag("checkout.v2", default_enabled=False, rollout_percentage=50)
    user_off = Override(org_id=org, user_id=USER, enabled=False)
    org_on = Override(org_id=org, user_id=None, enabled=True)
    org_off = Override(org_id=org, user_id=None, enabled=False)

    assert _decide(flag, user_off, org_on, org=org) == Decision(False, "user_override")
    assert _decide(flag, org_off, org=org) == Decision(False, "org_override")
    assert _decide(flag, org=org) == Decision(True, "rollout")
    no_rollout = Flag("checkout.v2", default_enabled=True, rollout_percentage=None)
    assert _decide(no_rollout, org=org) == Decision(True, "default")


def test_the_rollout_replaces_the_default_for_organizations_outside_it() -> None:
    org = _org_in_rollout("beta", 30, inside=False)
    flag = Flag("beta", default_enabled=True, rollout_percentage=30)
    assert _decide(flag, org=org) == Decision(False, "rollout")


def test_expired_overrides_are_ignored_and_the_next_level_decides() -> None:
    flag = Flag("expiring", default_enabled=False, rollout_percentage=None)
    expired_user = Override(ORG, USER, True, expires_at=NOW)  # expires_at <= now: gone
    live_org = Override(ORG, None, True, expires_at=NOW + timedelta(seconds=1))
    assert _decide(flag, expired_user, live_org) == Decision(True, "org_override")
    expired_org = Override(ORG, None, True, expires_at=NOW - timedelta(days=1))
    assert _decide(flag, expired_user, expired_org) == Decision(False, "default")


def test_a_user_override_in_this_org_beats_the_same_users_override_everywhere() -> None:
    flag = Flag("f", default_enabled=False, rollout_percentage=None)
    everywhere_on = Override(None, USER, True)
    here_off = Override(ORG, USER, False)
    assert _decide(flag, everywhere_on, here_off) == Decision(False, "user_override")
    assert _decide(flag, everywhere_on) == Decision(True, "user_override")
    assert _decide(flag, everywhere_on, Override(ORG, None, False)) == Decision(
        True, "user_override"
    )


def test_overrides_of_other_users_and_other_organizations_do_not_apply() -> None:
    flag = Flag("f", default_enabled=False, rollout_percentage=None)
    others = [
        Override(ORG, OTHER_USER, True),
        Override(OTHER_ORG, USER, True),
        Override(OTHER_ORG, None, True),
        Override(None, OTHER_USER, True),
    ]
    assert _decide(flag, *others) == Decision(False, "default")


def test_if_two_overrides_share_a_scope_the_newer_one_counts() -> None:
    flag = Flag("f", default_enabled=False, rollout_percentage=None)
    older = Override(ORG, None, True, created_at=NOW - timedelta(minutes=5))
    newer = Override(ORG, None, False, created_at=NOW - timedelta(minutes=1))
    assert _decide(flag, newer, older) == Decision(False, "org_override")


def test_the_rollout_bucket_is_sha256_of_key_and_org_modulo_100() -> None:
    org = uuid.UUID("8f14e45f-ceea-467a-9575-6b1c4c6c2f10")
    digest = hashlib.sha256(f"new-editor:{org}".encode()).hexdigest()
    assert rollout_bucket("new-editor", org) == int(digest[:8], 16) % 100
    assert 0 <= rollout_bucket("new-editor", org) < 100


def test_rollout_gives_one_organization_the_same_answer_on_every_call() -> None:
    flag = Flag("sticky", default_enabled=False, rollout_percentage=50)
    for _ in range(50):
        org = uuid.uuid4()
        answers = {_decide(flag, org=org) for _ in range(20)}
        assert len(answers) == 1
        assert answers == {Decision(in_rollout("sticky", org, 50), "rollout")}


def test_rollout_does_not_pick_the_same_organizations_for_every_flag() -> None:
    orgs = [uuid.uuid4() for _ in range(2_000)]
    a = {o for o in orgs if in_rollout("flag-a", o, 50)}
    b = {o for o in orgs if in_rollout("flag-b", o, 50)}
    # Independent halves overlap in about a quarter of all organizations.
    assert 0.20 < len(a & b) / len(orgs) < 0.30


@pytest.mark.parametrize("percentage", [0, 1, 10, 25, 50, 75, 90, 100])
def test_rollout_enables_the_percentage_of_10000_organizations_within_5_points(
    percentage: int,
) -> None:
    orgs = [uuid.uuid4() for _ in range(10_000)]
    share = sum(in_rollout("gradual", org, percentage) for org in orgs) / len(orgs) * 100
    assert abs(share - percentage) <= 5
    if percentage in (0, 100):
        assert share == percentage


def test_a_cached_answer_never_outlives_the_next_override_expiry() -> None:
    decisions = {"f": Decision(True, "org_override")}
    assert cache_ttl(Evaluation(decisions), NOW) == CACHE_TTL_SECONDS
    soon = Evaluation(decisions, changes_at=NOW + timedelta(seconds=4.2))
    assert cache_ttl(soon, NOW) == 5
    later = Evaluation(decisions, changes_at=NOW + timedelta(hours=1))
    assert cache_ttl(later, NOW) == CACHE_TTL_SECONDS


def test_unknown_keys_are_off_with_source_unknown() -> None:
    evaluation = Evaluation({"known": Decision(True, "default")})
    assert evaluation.pick(["known", "missing"]) == {
        "known": Decision(True, "default"),
        "missing": Decision(False, "unknown"),
    }
    assert evaluation.pick(None) == {"known": Decision(True, "default")}
