"""The preference centre's pure parts: which consent applies, what preferences impose on one
message, the timing of a muted person or one in their own quiet hours, and required categories
in the rules file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

import pytest
from smart_dispatch.decide import reasons as R
from smart_dispatch.decide.draft import PlanDraft
from smart_dispatch.decide.personal import personal_terms
from smart_dispatch.decide.schedule import after_quiet_hours
from smart_dispatch.decide.trace import Trace
from smart_dispatch.errors import RuleFileError
from smart_dispatch.preferences.base import Consent, LocalWindow, Preferences
from smart_dispatch.rules.loader import parse_ruleset
from smart_dispatch.rules.model import QuietHours

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 6, 1, 20, 0, tzinfo=UTC)  # 22:00 in Berlin (summer time)


def consents(*entries: tuple[str, str, bool]) -> Preferences:
    return Preferences(consents=tuple(Consent(*entry) for entry in entries))


# --- which consent applies ----------------------------------------------------------------------


def test_without_consents_everything_is_allowed():
    assert Preferences().allows("marketing", "sms")
    assert Preferences().opted_out("marketing") == ()


def test_the_most_specific_consent_wins():
    prefs = consents(("*", "*", False), ("marketing", "*", True), ("marketing", "sms", False))

    assert prefs.opted_out("marketing") == ("sms",)  # both named beats the category-wide opt-in
    assert prefs.opted_out("news") == ("sms", "email", "in_app", "wechat", "push", "webhook")


def test_an_explicit_opt_in_overrides_a_broader_opt_out():
    prefs = consents(("marketing", "*", False), ("marketing", "email", True))

    assert prefs.allows("marketing", "email")
    assert prefs.opted_out("marketing") == ("sms", "in_app", "wechat", "push", "webhook")
    assert prefs.opted_out("otp") == ()


def test_between_a_category_wide_and_a_channel_wide_entry_the_opt_out_stands():
    prefs = consents(("marketing", "*", True), ("*", "sms", False))

    assert not prefs.allows("marketing", "sms")
    assert prefs.allows("marketing", "email")
    assert not consents(("marketing", "*", False), ("*", "sms", True)).allows("marketing", "sms")


def test_a_mute_holds_until_its_instant():
    prefs = Preferences(mute_until=NOW + timedelta(hours=1))

    assert prefs.muted(NOW)
    assert not prefs.muted(NOW + timedelta(hours=1))


# --- what preferences impose on one message -----------------------------------------------------


def test_a_required_category_ignores_opt_outs_and_the_mute():
    prefs = Preferences(
        consents=(Consent("*", "*", False),),
        mute_until=NOW + timedelta(hours=1),
        quiet_hours=LocalWindow(clock_time(22), clock_time(7)),
        channel_order=("email",),
    )

    required = personal_terms(prefs, "otp", True, NOW)
    other = personal_terms(prefs, "marketing", False, NOW)

    assert (required.opted_out, required.mute_until) == ((), None)
    assert required.quiet_hours == other.quiet_hours == QuietHours(clock_time(22), clock_time(7))
    assert other.opted_out == ("sms", "email", "in_app", "wechat", "push", "webhook")
    assert other.mute_until == NOW + timedelta(hours=1)
    assert personal_terms(prefs, "marketing", False, NOW + timedelta(hours=2)).mute_until is None


def test_the_persons_channel_order_comes_before_the_requests():
    terms = personal_terms(Preferences(channel_order=("email", "in_app")), "news", False, NOW)

    assert terms.preferred(("sms", "email")) == ("email", "in_app", "sms")


def test_preference_facts_describe_the_message():
    prefs = Preferences(
        consents=(Consent("marketing", "sms", False),),
        mute_until=NOW + timedelta(hours=1),
        quiet_hours=LocalWindow(clock_time(21, 30), clock_time(7)),
        locale="de-DE",
    )

    facts = personal_terms(prefs, "marketing", False, NOW).facts(NOW, BERLIN)

    assert facts["opted_out"] == ["sms"]
    assert facts["opted_out_of"]["sms"] is True and facts["opted_out_of"]["email"] is False
    assert (facts["muted"], facts["in_quiet_hours"], facts["locale"]) == (True, True, "de-DE")
    assert personal_terms(prefs, "otp", True, NOW).facts(NOW, BERLIN)["muted"] is False


# --- timing ---------------------------------------------------------------------------------------


def draft(**changes: object) -> PlanDraft:
    made = PlanDraft()
    for name, value in changes.items():
        setattr(made, name, value)
    return made


def test_a_mute_defers_to_its_end():
    trace = Trace()
    until = NOW + timedelta(hours=3)

    assert after_quiet_hours(NOW, BERLIN, draft(mute_until=until), trace) == until
    assert [r.code for r in trace.reasons] == [R.MUTED]


def test_personal_quiet_hours_defer_to_their_local_end():
    trace = Trace()
    window = QuietHours(clock_time(21, 30), clock_time(6, 45))

    at = after_quiet_hours(NOW, BERLIN, draft(personal_quiet_hours=window), trace)

    assert at == datetime(2026, 6, 2, 6, 45, tzinfo=BERLIN)
    assert [r.code for r in trace.reasons] == [R.PERSONAL_QUIET_HOURS]


def test_windows_and_the_mute_chain_until_none_holds_the_message():
    # The mute ends at 23:00 Berlin, inside the rules' night; that ends at 07:00, inside the
    # person's own window (06:00-08:30): the message goes at 08:30.
    trace = Trace()
    made = draft(
        mute_until=NOW + timedelta(hours=1),
        quiet_hours=QuietHours(clock_time(22, 30), clock_time(7)),
        personal_quiet_hours=QuietHours(clock_time(6), clock_time(8, 30)),
    )

    at = after_quiet_hours(NOW, BERLIN, made, trace)

    assert at == datetime(2026, 6, 2, 8, 30, tzinfo=BERLIN)
    assert [r.code for r in trace.reasons] == [R.MUTED, R.QUIET_HOURS, R.PERSONAL_QUIET_HOURS]


def test_bypassing_quiet_hours_bypasses_the_persons_too_but_not_the_mute():
    window = QuietHours(clock_time(21), clock_time(7))
    assert (
        after_quiet_hours(NOW, BERLIN, draft(personal_quiet_hours=window, bypass_quiet_hours=True), Trace())
        == NOW
    )
    until = NOW + timedelta(minutes=5)
    assert after_quiet_hours(NOW, BERLIN, draft(mute_until=until, bypass_quiet_hours=True), Trace()) == until


# --- required categories in the rules file --------------------------------------------------------

RULE = "rules:\n  - {name: r, when: {category: otp}, then: {}}\n"


def test_categories_may_be_marked_required_in_any_file():
    ruleset = parse_ruleset(
        {
            "a.yaml": "categories:\n  - {name: otp, required: true}\n  - marketing\n" + RULE,
            "b.yaml": "categories: [alert, otp]\n",
            "c.yaml": "categories:\n  - name: alert\n    required: true\n    description: pages\n",
        }
    )

    assert ruleset.categories == frozenset({"otp", "marketing", "alert"})
    assert ruleset.required_categories == frozenset({"otp", "alert"})


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("{name: otp, required: yes please}", "a.yaml:2: category 'otp': required must be true or false"),
        ("{name: otp, mandatory: true}", "unknown key 'mandatory' in category"),
        ("{required: true}", "missing required key 'name'"),
    ],
)
def test_a_bad_category_entry_names_file_and_line(entry: str, problem: str):
    with pytest.raises(RuleFileError, match=problem):
        parse_ruleset({"a.yaml": f"categories:\n  - {entry}\n" + RULE})
