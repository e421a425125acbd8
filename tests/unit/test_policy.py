"""The pure policy functions: quiet hours, ranking, folding effects, the facts document, validation."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from smart_dispatch.decide.draft import PlanDraft, fold
from smart_dispatch.decide.facts import build_facts, days_since_active, reachable_channels
from smart_dispatch.decide.rank import fallback_channels, rank_channels
from smart_dispatch.decide.timing import quiet_hours_end
from smart_dispatch.decide.validate import validate_request
from smart_dispatch.domain import KNOWN_CHANNELS, DecideRequest, Message, Recipient
from smart_dispatch.errors import InvalidRequestError
from smart_dispatch.rules.model import Effects, QuietHours, Rule

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = QuietHours(time(21, 0), time(8, 0))
LUNCH = QuietHours(time(12, 0), time(14, 0))


def _berlin(*args: int) -> datetime:
    """A Berlin wall-clock instant, expressed in UTC (as the pipeline passes it)."""
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- quiet hours --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local_at", "local_end"),
    [
        # Wrapping window 21:00 -> 08:00, a winter week (CET, UTC+1)
        ((2026, 1, 14, 22, 30), (2026, 1, 15, 8, 0)),  # before midnight: ends tomorrow
        ((2026, 1, 14, 23, 59), (2026, 1, 15, 8, 0)),
        ((2026, 1, 15, 0, 0), (2026, 1, 15, 8, 0)),  # after midnight: ends today
        ((2026, 1, 15, 2, 0), (2026, 1, 15, 8, 0)),
        ((2026, 1, 15, 7, 59), (2026, 1, 15, 8, 0)),
        ((2026, 1, 14, 21, 0), (2026, 1, 15, 8, 0)),  # exactly at the start: inside
        ((2026, 1, 15, 8, 0), None),  # exactly at the end: outside
        ((2026, 1, 15, 12, 0), None),
        ((2026, 1, 14, 20, 59), None),
    ],
)
def test_quiet_hours_end_with_a_window_wrapping_midnight(local_at, local_end):
    end = quiet_hours_end(_berlin(*local_at), BERLIN, NIGHT)
    assert end == (_berlin(*local_end) if local_end else None)
    if end is not None:
        assert end.tzinfo is UTC


@pytest.mark.parametrize(
    ("local_at", "local_end"),
    [
        ((2026, 1, 15, 12, 0), (2026, 1, 15, 14, 0)),  # exactly at the start: inside
        ((2026, 1, 15, 13, 30), (2026, 1, 15, 14, 0)),
        ((2026, 1, 15, 14, 0), None),  # exactly at the end: outside
        ((2026, 1, 15, 11, 59), None),
        ((2026, 1, 15, 23, 0), None),
        ((2026, 1, 15, 3, 0), None),
    ],
)
def test_quiet_hours_end_with_a_daytime_window(local_at, local_end):
    end = quiet_hours_end(_berlin(*local_at), BERLIN, LUNCH)
    assert end == (_berlin(*local_end) if local_end else None)


@pytest.mark.parametrize(
    ("at", "expected_end"),
    [
        # Night of 2026-03-28 -> 29: clocks jump 02:00 CET -> 03:00 CEST; 08:00 CEST is 06:00 UTC
        (_utc(2026, 3, 28, 21, 0), _utc(2026, 3, 29, 6, 0)),  # 22:00 CET
        (_utc(2026, 3, 29, 0, 30), _utc(2026, 3, 29, 6, 0)),  # 01:30 CET, just before the jump
        (_utc(2026, 3, 29, 1, 0), _utc(2026, 3, 29, 6, 0)),  # 03:00 CEST, just after it
        (_utc(2026, 3, 29, 5, 59), _utc(2026, 3, 29, 6, 0)),  # 07:59 CEST
        (_utc(2026, 3, 29, 6, 0), None),  # 08:00 CEST
        # Night of 2026-10-24 -> 25: clocks fall back 03:00 CEST -> 02:00 CET; 08:00 CET is 07:00 UTC
        (_utc(2026, 10, 24, 20, 0), _utc(2026, 10, 25, 7, 0)),  # 22:00 CEST
        (_utc(2026, 10, 25, 0, 30), _utc(2026, 10, 25, 7, 0)),  # 02:30 CEST (first pass)
        (_utc(2026, 10, 25, 1, 30), _utc(2026, 10, 25, 7, 0)),  # 02:30 CET (second pass)
        (_utc(2026, 10, 25, 6, 59), _utc(2026, 10, 25, 7, 0)),  # 07:59 CET
        (_utc(2026, 10, 25, 7, 0), None),  # 08:00 CET
    ],
)
def test_quiet_hours_end_keeps_local_wall_clock_across_dst(at, expected_end):
    end = quiet_hours_end(at, BERLIN, NIGHT)
    assert end == expected_end
    if end is not None:
        assert end.astimezone(BERLIN).time() == time(8, 0)


def test_quiet_hours_end_in_a_half_hour_offset_zone():
    kolkata = ZoneInfo("Asia/Kolkata")  # UTC+05:30
    # 16:00 UTC is 21:30 local: inside, ends 08:00 local = 02:30 UTC the next day
    assert quiet_hours_end(_utc(2026, 1, 15, 16, 0), kolkata, NIGHT) == _utc(2026, 1, 16, 2, 30)
    assert quiet_hours_end(_utc(2026, 1, 15, 10, 0), kolkata, NIGHT) is None


def test_quiet_hours_ending_inside_the_dst_gap_end_when_the_clock_jumps():
    early_night = QuietHours(time(1, 0), time(2, 30))
    at = _utc(2026, 3, 29, 0, 30)  # 01:30 CET: inside

    end = quiet_hours_end(at, BERLIN, early_night)

    assert end is not None
    # The returned instant is the first one outside the window: a minute earlier is still inside
    assert quiet_hours_end(end - timedelta(minutes=1), BERLIN, early_night) is not None
    assert end == _utc(2026, 3, 29, 1, 0)


# --- ranking ------------------------------------------------------------------------------------


def test_rule_preference_beats_recipient_preference_beats_cost():
    reachable = ["sms", "email", "in_app", "push", "webhook"]

    # Only cost decides: in_app 0, push 0.1, e-mail/webhook 0.5 (ties keep reachable order), sms 5
    assert rank_channels(reachable, PlanDraft(), []) == ["in_app", "push", "email", "webhook", "sms"]

    # The recipient's own preference beats cost
    assert rank_channels(reachable, PlanDraft(), ["sms", "webhook"]) == [
        "sms",
        "webhook",
        "in_app",
        "push",
        "email",
    ]

    # A rule's preference beats the recipient's
    draft = PlanDraft(prefer=["email", "sms"])
    assert rank_channels(reachable, draft, ["sms", "webhook"]) == [
        "email",
        "sms",
        "webhook",
        "in_app",
        "push",
    ]


def test_rank_never_adds_an_unreachable_preferred_channel():
    draft = PlanDraft(prefer=["wechat", "sms"])
    assert rank_channels(["email", "sms"], draft, ["push"]) == ["sms", "email"]


def test_deny_and_only_filter_the_ranked_channels():
    reachable = ["sms", "email", "in_app", "push"]

    assert rank_channels(reachable, PlanDraft(deny={"in_app", "push"}), []) == ["email", "sms"]
    assert rank_channels(reachable, PlanDraft(only={"sms", "email", "wechat"}), []) == ["email", "sms"]
    assert rank_channels(reachable, PlanDraft(only={"sms", "email"}, deny={"email"}), []) == ["sms"]
    assert rank_channels(reachable, PlanDraft(only=set()), []) == []
    # A denied channel stays out even when a rule prefers it
    assert rank_channels(reachable, PlanDraft(prefer=["sms"], deny={"sms"}), []) == [
        "in_app",
        "push",
        "email",
    ]


def test_fallback_channels_follow_the_fallback_effect_and_skip_the_primary_and_unreachable():
    ranked = ["sms", "email", "in_app"]

    assert fallback_channels("sms", ranked, PlanDraft(fallback=("push", "in_app", "sms", "email"))) == [
        "in_app",
        "email",
    ]
    assert fallback_channels("sms", ranked, PlanDraft(fallback=None)) == []
    assert fallback_channels("sms", ranked, PlanDraft(fallback=())) == []
    assert fallback_channels("email", ranked, PlanDraft(fallback=("email",))) == []


# --- folding effects ----------------------------------------------------------------------------


def _rule(name: str, **effects: object) -> Rule:
    return Rule(name, 100, {}, Effects(**effects), "rules.yaml", 1)


def test_fold_without_rules_gives_the_defaults():
    draft = fold([])
    assert (draft.prefer, draft.deny, draft.only, draft.fallback, draft.caps) == ([], set(), None, None, [])
    assert (draft.on_cap, draft.quiet_hours, draft.bypass_caps, draft.bypass_quiet_hours) == (
        "defer",
        None,
        False,
        False,
    )
    assert draft.suppress is None and draft.source == {}


def test_fold_accumulates_list_effects():
    draft = fold(
        [
            _rule(
                "first", prefer=("sms", "email"), deny=("push",), only=("sms", "email", "in_app"), caps=("h",)
            ),
            _rule("second", prefer=("email", "in_app"), deny=("webhook",), caps=("d", "h")),
            _rule("third", only=("email", "in_app", "wechat"), deny=("push",)),
        ]
    )

    assert draft.prefer == ["sms", "email", "in_app"]  # concatenated, no duplicates
    assert draft.deny == {"push", "webhook"}  # union
    assert draft.only == {"email", "in_app"}  # intersection
    assert draft.caps == ["h", "d"]  # union, in order
    assert draft.source["prefer:email"] == "first"
    assert draft.source["prefer:in_app"] == "second"


def test_fold_first_setter_wins_for_scalar_effects():
    night = QuietHours(time(21), time(8))
    evening = QuietHours(time(19), time(7), "drop")
    draft = fold(
        [
            _rule("otp", bypass_caps=False, fallback=("email",)),
            _rule("vip", on_cap="next_channel", quiet_hours=night),
            _rule("blocked", suppress="account_closed", on_cap="drop", bypass_caps=True),
            _rule("late", quiet_hours=evening, suppress="later", fallback=("sms",), bypass_quiet_hours=True),
        ]
    )

    assert draft.on_cap == "next_channel"
    assert draft.quiet_hours == night
    assert draft.suppress == "account_closed"
    assert draft.bypass_caps is False  # an explicit false set first is kept
    assert draft.fallback == ("email",)
    assert draft.bypass_quiet_hours is True
    assert draft.source == {
        "bypass_caps": "otp",
        "fallback": "otp",
        "on_cap": "vip",
        "quiet_hours": "vip",
        "suppress": "blocked",
        "bypass_quiet_hours": "late",
    }


def test_fold_records_every_applied_effect_in_order():
    draft = fold(
        [_rule("a", prefer=("sms",), on_cap="drop"), _rule("b", prefer=("sms",), on_cap="defer")],
        explain=True,
    )
    assert [(e.rule, e.effect, e.value) for e in draft.applied] == [
        ("a", "prefer", "sms"),
        ("a", "on_cap", "drop"),
    ]


def test_fold_drops_duplicates_within_one_rule():
    draft = fold([_rule("a", prefer=("sms", "sms", "email"), caps=("h", "h"))])
    assert (draft.prefer, draft.caps) == (["sms", "email"], ["h"])


# --- facts --------------------------------------------------------------------------------------

NOW = _utc(2026, 1, 16, 23, 30)  # a Friday


def _request(
    *,
    category: str = "marketing",
    message_id: str = "m-1",
    user_id: str = "u-1",
    timezone: str = "UTC",
    channels: tuple[str, ...] = (),
    addresses: dict[str, str] | None = None,
    opted_out: frozenset[str] = frozenset(),
    preferred: tuple[str, ...] = (),
    attributes: dict[str, object] | None = None,
) -> DecideRequest:
    return DecideRequest(
        Message(
            id=message_id, category=category, labels={"kind": "promo"}, template="spring", channels=channels
        ),
        Recipient(
            user_id=user_id,
            timezone=timezone,
            locale="de-DE",
            addresses={"sms": "+4915112345678", "email": "a@example.com"} if addresses is None else addresses,
            opted_out=opted_out,
            preferred=preferred,
            attributes=attributes or {},
        ),
    )


def test_reachable_needs_an_address_no_opt_out_and_the_message_allowing_it():
    request = _request(
        addresses={
            "sms": "+4915112345678",
            "email": "",
            "push": "token",
            "in_app": "inbox-1",
            "wechat": "openid",
        },
        opted_out=frozenset({"push"}),
    )
    # email: empty address; push: opted out; webhook: no address
    assert reachable_channels(request.message, request.recipient) == ("sms", "in_app", "wechat")

    restricted = _request(
        addresses=request.recipient.addresses,
        opted_out=frozenset({"push"}),
        channels=("wechat", "push", "email"),
    )
    assert reachable_channels(restricted.message, restricted.recipient) == ("wechat",)


def test_facts_document_carries_the_request_and_derived_facts():
    request = _request(
        timezone="Asia/Tokyo",
        attributes={"vip": True, "tier": 2, "local_hour": 99, "tags": ["a"], "profile": {"x": 1}},
    )
    reachable = reachable_channels(request.message, request.recipient)

    facts = build_facts(request, NOW, ZoneInfo("Asia/Tokyo"), frozenset({"allow"}), reachable)

    assert facts["category"] == "marketing"
    assert facts["message"] == {"id": "m-1", "template": "spring", "has_deadline": False}
    assert facts["labels"] == {"kind": "promo"}
    assert facts["reachable"] == {channel: channel in ("sms", "email") for channel in KNOWN_CHANNELS}
    user = facts["user"]
    # Friday 23:30 UTC is Saturday 08:30 in Tokyo; derived names win over attributes
    assert (user["local_hour"], user["local_minute"], user["local_weekday"], user["is_weekend"]) == (
        8,
        30,
        "sat",
        True,
    )
    assert (user["id"], user["timezone"], user["locale"]) == ("u-1", "Asia/Tokyo", "de-DE")
    assert (user["vip"], user["tier"]) == (True, 2)
    assert "tags" not in user and "profile" not in user  # only scalar attributes
    assert (user["allow_listed"], user["deny_listed"]) == (True, False)
    assert "days_since_active" not in user


def test_local_time_facts_follow_the_recipients_timezone():
    request = _request(timezone="America/New_York")
    facts = build_facts(request, NOW, ZoneInfo("America/New_York"), frozenset(), ())
    user = facts["user"]
    # 23:30 UTC on Friday is 18:30 EST on Friday
    assert (user["local_hour"], user["local_weekday"], user["is_weekend"]) == (18, "fri", False)
    assert facts["reachable"] == dict.fromkeys(KNOWN_CHANNELS, False)


@pytest.mark.parametrize(
    ("last_active_at", "days"),
    [
        ("2026-01-15T11:30:00Z", 1.5),
        ("2026-01-16T23:30:00+02:00", 0.0833),  # 21:30 UTC: two hours ago
        ("2026-01-09T23:30:00.000Z", 7.0),
        ("2026-01-17T10:00:00Z", 0.0),  # in the future: clamped to 0
    ],
)
def test_days_since_active_from_last_active_at(last_active_at, days):
    assert days_since_active({"last_active_at": last_active_at}, NOW) == days
    facts = build_facts(
        _request(attributes={"last_active_at": last_active_at}), NOW, ZoneInfo("UTC"), frozenset(), ()
    )
    assert facts["user"]["days_since_active"] == days


@pytest.mark.parametrize("value", [None, ""])
def test_days_since_active_is_absent_when_unknown(value):
    assert days_since_active({"last_active_at": value}, NOW) is None
    assert days_since_active({}, NOW) is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("yesterday", "not an RFC 3339 timestamp"),
        ("2026-01-15T11:30:00", "needs a UTC offset or Z"),
        (1768563000, "must be an RFC 3339 timestamp string"),
    ],
)
def test_a_bad_last_active_at_names_the_field(value, fragment):
    with pytest.raises(InvalidRequestError) as info:
        build_facts(_request(attributes={"last_active_at": value}), NOW, ZoneInfo("UTC"), frozenset(), ())
    assert info.value.field == "recipient.attributes.last_active_at"
    assert fragment in info.value.problem


# --- request validation -------------------------------------------------------------------------

CATEGORIES = frozenset({"otp", "transactional", "alert", "marketing"})


def test_a_valid_request_returns_the_recipients_timezone():
    assert validate_request(_request(timezone="Europe/Berlin"), CATEGORIES) == BERLIN
    assert validate_request(_request(timezone=""), CATEGORIES) == ZoneInfo("UTC")


def test_any_category_is_accepted_when_the_rules_declare_none():
    assert validate_request(_request(category="newsletter"), frozenset()) == ZoneInfo("UTC")


@pytest.mark.parametrize(
    ("request_", "field", "fragment"),
    [
        (_request(message_id=""), "message.id", "is required"),
        (_request(message_id="   "), "message.id", "is required"),
        (_request(message_id="x" * 257), "message.id", "longer than 256 characters"),
        (_request(user_id=""), "recipient.user_id", "is required"),
        (_request(category=""), "message.category", "is required"),
        (
            _request(category="newsletter"),
            "message.category",
            "unknown category 'newsletter'; the loaded rules cover: alert, marketing, otp, transactional",
        ),
        (_request(channels=("sms", "fax")), "message.channels", "unknown channel 'fax'; known: sms, email"),
        (_request(addresses={"pigeon": "roof"}), "recipient.addresses['pigeon']", "unknown channel 'pigeon'"),
        (_request(opted_out=frozenset({"telex"})), "recipient.opted_out", "unknown channel 'telex'"),
        (_request(preferred=("email", "fax")), "recipient.preferred", "unknown channel 'fax'"),
        (
            _request(timezone="Mars/Olympus_Mons"),
            "recipient.timezone",
            "unknown IANA timezone 'Mars/Olympus_Mons'",
        ),
        (_request(timezone="../etc/passwd"), "recipient.timezone", "unknown IANA timezone"),
    ],
    ids=[
        "no-message-id",
        "blank-message-id",
        "long-message-id",
        "no-user-id",
        "no-category",
        "unknown-category",
        "unknown-message-channel",
        "unknown-address-channel",
        "unknown-opted-out",
        "unknown-preferred",
        "unknown-timezone",
        "path-as-timezone",
    ],
)
def test_invalid_requests_name_the_field(request_, field, fragment):
    with pytest.raises(InvalidRequestError) as info:
        validate_request(request_, CATEGORIES)
    assert info.value.field == field
    assert fragment in info.value.problem
    assert str(info.value) == f"{field}: {info.value.problem}"
