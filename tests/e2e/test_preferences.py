"""The preference centre end to end: a real sidecar, real gRPC calls, on memory and on Redis.

GetPreferences / UpdatePreferences, and what a person's stored choices do to the next message:
opted-out channels are never used, a mute defers all but required categories, personal quiet
hours defer like the rules' do, the channel order ranks channels; an UNSUBSCRIBED event writes
the opt-out; required categories cannot be opted out of.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from decide_builders import at, codes, decide_request
from google.protobuf import field_mask_pb2, timestamp_pb2
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App

from tests.support.redis_servers import RedisCluster, RedisServer
from tests.support.waiting import eventually

RULES = """
categories:
  - {name: otp, required: true}
  - marketing
  - news
  - nudge
rules:
  - name: otp
    when: {category: otp}
    then: {prefer: [sms, email], fallback: [email], bypass_quiet_hours: true}
  - name: marketing
    when: {category: marketing}
    then: {prefer: [sms, email, in_app], fallback: [email, in_app]}
  - name: news
    when: {category: news}
    then: {}
  - name: nudge
    when: {category: nudge}
    then: {prefer: [in_app, sms], fallback: [sms], escalate_after: 1s}
  - name: no_sms_fans
    when: {preferences.opted_out_of.sms: true}
    then: {lane: high}
"""
S = pb.DispatchState
ADDRESSES = {"sms": "+15550100", "email": "ada@example.com", "in_app": "inbox-ada"}


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def consent(category: str, channel: str, allowed: bool = False) -> pb.ChannelConsent:
    return pb.ChannelConsent(category=category, channel=channel, allowed=allowed)


def update(user: str, *paths: str, **preferences: Any) -> pb.UpdatePreferencesRequest:
    return pb.UpdatePreferencesRequest(
        user_id=user,
        preferences=pb.Preferences(**preferences),
        update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
    )


def marketing(user: str, **kwargs: Any) -> pb.DecideRequest:
    return decide_request("marketing", user=user, addresses=ADDRESSES, **kwargs)


async def status_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


@dataclass
class Sidecar:
    app: App
    stub: pb_grpc.SmartDispatchServiceStub


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "rules.yaml").write_text(RULES)
    return directory


@pytest.fixture
async def sidecar(make_app: Callable[..., App], rules_dir: Path) -> AsyncIterator[Sidecar]:
    async with (
        make_app(rules_dir=rules_dir, allow_request_clock=True) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        yield Sidecar(app, pb_grpc.SmartDispatchServiceStub(channel))


# --- the RPCs -----------------------------------------------------------------------------------


async def test_a_person_without_preferences_has_empty_ones(sidecar: Sidecar):
    got = await sidecar.stub.GetPreferences(pb.GetPreferencesRequest(user_id="stranger"))

    assert got.preferences == pb.Preferences()
    assert not got.HasField("updated_at")


async def test_preferences_are_stored_and_read_back(sidecar: Sidecar):
    mute = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    wanted = pb.Preferences(
        consents=[consent("marketing", "*"), consent("marketing", "email", True)],
        mute_until=ts(mute),
        quiet_hours=pb.LocalWindow(start="22:00", end="07:30"),
        channel_order=["in_app", "email"],
        locale="zh-CN",
    )
    before = datetime.now(UTC)

    updated = await sidecar.stub.UpdatePreferences(
        pb.UpdatePreferencesRequest(user_id="ada", preferences=wanted)
    )
    got = await sidecar.stub.GetPreferences(pb.GetPreferencesRequest(user_id="ada"))

    assert updated.preferences == got.preferences == wanted
    assert before - timedelta(seconds=1) <= at(got.updated_at) <= datetime.now(UTC)
    assert got.updated_at == updated.updated_at


async def test_the_update_mask_replaces_only_the_named_parts(sidecar: Sidecar):
    await sidecar.stub.UpdatePreferences(
        update("ada", consents=[consent("news", "sms")], locale="de-DE", channel_order=["email"])
    )

    changed = await sidecar.stub.UpdatePreferences(
        update("ada", "locale", "quiet_hours", locale="fr-FR", channel_order=["sms"])
    )

    assert changed.preferences.locale == "fr-FR"
    assert list(changed.preferences.channel_order) == ["email"]  # not in the mask: kept
    assert list(changed.preferences.consents) == [consent("news", "sms")]
    assert not changed.preferences.HasField("quiet_hours")  # in the mask, unset: cleared


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            update("ada", quiet_hours=pb.LocalWindow(start="25:00", end="07:00")),
            "preferences.quiet_hours.start: expected HH:MM (00:00 to 23:59), got '25:00'",
        ),
        (
            update("ada", quiet_hours=pb.LocalWindow(start="22:00", end="7:00")),
            "preferences.quiet_hours.end: expected HH:MM",
        ),
        (
            update("ada", quiet_hours=pb.LocalWindow(start="22:00", end="22:00")),
            "preferences.quiet_hours: start and end must differ",
        ),
        (
            update("ada", consents=[consent("news", "sms"), consent("news", "fax")]),
            "preferences.consents[1].channel: unknown channel 'fax'",
        ),
        (
            update("ada", consents=[consent("promo", "sms")]),
            "preferences.consents[0].category: unknown category 'promo'; the loaded rules cover: "
            "marketing, news, nudge, otp",
        ),
        (
            update("ada", consents=[consent("news", "sms"), consent("news", "sms", True)]),
            "preferences.consents[1]: a second entry for news/sms (first: [0])",
        ),
        (
            update("ada", consents=[consent("", "sms")]),
            "preferences.consents[0].category: is required",
        ),
        (
            update("ada", channel_order=["sms", "pigeon"]),
            "preferences.channel_order: unknown channel 'pigeon'",
        ),
        (update("ada", channel_order=["sms", "sms"]), "preferences.channel_order: 'sms' appears twice"),
        (update("ada", locale="not a tag!"), "preferences.locale: 'not a tag!' is not a BCP 47 language tag"),
        (
            update("ada", "consents.category"),
            "update_mask: unknown path 'consents.category'; known: consents",
        ),
        (update("", locale="de"), "user_id: is required"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(sidecar: Sidecar, request_, message: str):
    error = await status_of(sidecar.stub.UpdatePreferences(request_))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(message), error.details()
    got = await sidecar.stub.GetPreferences(pb.GetPreferencesRequest(user_id="ada"))
    assert got.preferences == pb.Preferences()  # nothing was stored


async def test_opting_out_of_a_required_category_is_failed_precondition(sidecar: Sidecar):
    for consents in ([consent("otp", "sms")], [consent("news", "sms"), consent("otp", "*")]):
        error = await status_of(sidecar.stub.UpdatePreferences(update("ada", consents=consents)))

        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "category 'otp' is required by the rules: it cannot be opted out of" in error.details()
    assert (await sidecar.stub.GetPreferences(pb.GetPreferencesRequest(user_id="ada"))).preferences == (
        pb.Preferences()
    )

    # An opt-out of everything is allowed, and login codes still go
    await sidecar.stub.UpdatePreferences(update("ada", consents=[consent("*", "*")]))
    otp = await sidecar.stub.Decide(decide_request("otp", user="ada", addresses=ADDRESSES))
    assert (otp.verdict, otp.steps[0].channel) == (pb.VERDICT_SEND, "sms")
    promo = await sidecar.stub.Decide(marketing("ada"))
    assert promo.verdict == pb.VERDICT_SUPPRESS
    assert codes(promo) == ["opted_out"]
    assert promo.reasons[0].detail == "the person opted out of marketing on sms, email, in_app"


# --- what the decision does with them ----------------------------------------------------------


async def test_after_unsubscribed_on_sms_the_next_marketing_message_does_not_go_by_sms(sidecar: Sidecar):
    # Given a marketing message that went by SMS
    first = await sidecar.stub.Decide(marketing("ada", message_id="promo-1"))
    assert [s.channel for s in first.steps] == ["sms", "email", "in_app"]

    # When the person unsubscribes from it
    await sidecar.stub.ReportEvent(
        pb.ReportEventRequest(
            user_id="ada", message_id="promo-1", channel="sms", kind=pb.EVENT_KIND_UNSUBSCRIBED
        )
    )

    # Then their preferences say so, and the next marketing message goes by e-mail, with no
    # SMS fallback; login codes still go by SMS
    got = await sidecar.stub.GetPreferences(pb.GetPreferencesRequest(user_id="ada"))
    assert list(got.preferences.consents) == [consent("marketing", "sms")]
    second = await sidecar.stub.Decide(marketing("ada", message_id="promo-2"))
    assert second.verdict == pb.VERDICT_SEND
    assert [s.channel for s in second.steps] == ["email", "in_app"]
    otp = await sidecar.stub.Decide(decide_request("otp", user="ada", addresses=ADDRESSES))
    assert otp.steps[0].channel == "sms"


async def test_unsubscribes_from_a_dispatched_message_opt_out_of_each_channel_named(sidecar: Sidecar):
    # A dispatch whose UNSUBSCRIBED event comes twice (the engagement model counts it once; the
    # second finds the category through the dispatch), then once more for another channel
    accepted = await sidecar.stub.Dispatch(
        pb.DispatchRequest(
            message=pb.Message(id="news-1", category="news"), recipient=marketing("bo").recipient
        )
    )
    channel = accepted.decision.steps[0].channel
    event = pb.ReportEventRequest(
        user_id="bo", message_id="news-1", channel="email", kind=pb.EVENT_KIND_UNSUBSCRIBED
    )
    for _ in range(2):
        await sidecar.stub.ReportEvent(event)
    await sidecar.app.operations.update_preferences(
        update("bo", "locale", locale="en")
    )  # an unrelated change
    event.channel = channel
    await sidecar.stub.ReportEvent(event)

    got = await sidecar.stub.GetPreferences(pb.GetPreferencesRequest(user_id="bo"))
    assert {(c.category, c.channel, c.allowed) for c in got.preferences.consents} == {
        ("news", "email", False),
        ("news", channel, False),
    }
    assert got.preferences.locale == "en"


async def test_an_unsubscribe_from_a_required_category_writes_nothing(sidecar: Sidecar):
    await sidecar.stub.Decide(decide_request("otp", user="cy", message_id="otp-1", addresses=ADDRESSES))

    await sidecar.stub.ReportEvent(
        pb.ReportEventRequest(
            user_id="cy", message_id="otp-1", channel="sms", kind=pb.EVENT_KIND_UNSUBSCRIBED
        )
    )

    assert (await sidecar.stub.GetPreferences(pb.GetPreferencesRequest(user_id="cy"))).preferences == (
        pb.Preferences()
    )


async def test_an_explicit_opt_in_overrides_a_broader_opt_out(sidecar: Sidecar):
    await sidecar.stub.UpdatePreferences(
        update("ada", consents=[consent("marketing", "*"), consent("marketing", "in_app", True)])
    )

    decided = await sidecar.stub.Decide(marketing("ada"))

    assert [s.channel for s in decided.steps] == ["in_app"]


async def test_a_dispatch_to_a_person_who_opted_out_of_everything_is_suppressed(sidecar: Sidecar):
    await sidecar.stub.UpdatePreferences(update("ada", consents=[consent("marketing", "*")]))

    accepted = await sidecar.stub.Dispatch(
        pb.DispatchRequest(
            message=pb.Message(id="promo-x", category="marketing"), recipient=marketing("ada").recipient
        )
    )

    assert accepted.status.state == S.DISPATCH_STATE_SUPPRESSED
    assert codes(accepted.decision) == ["opted_out"]


async def test_an_escalation_to_a_channel_opted_out_meanwhile_is_not_sent(sidecar: Sidecar):
    # Given a nudge delivered in-app, waiting a second for an open before it escalates to SMS
    request = decide_request("nudge", user="ada", addresses=ADDRESSES)
    accepted = await sidecar.stub.Dispatch(
        pb.DispatchRequest(message=request.message, recipient=request.recipient)
    )
    lookup = pb.GetDispatchRequest(dispatch_id=accepted.dispatch_id)

    async def state() -> int:
        return (await sidecar.stub.GetDispatch(lookup)).status.state

    await eventually(lambda: _is(state(), S.DISPATCH_STATE_WAITING_ENGAGEMENT), what="the in-app delivery")

    # When the person opts out of nudges by SMS meanwhile
    await sidecar.stub.UpdatePreferences(update("ada", consents=[consent("nudge", "sms")]))

    # Then the escalation is decided again when it goes, and not sent
    await eventually(lambda: _is(state(), S.DISPATCH_STATE_DELIVERED), what="the escalation's end")
    status = (await sidecar.stub.GetDispatch(lookup)).status
    assert [a.channel for a in status.attempts] == ["in_app"]
    assert "sms decided again: opted_out" in status.history[-1].detail


async def _is(state: Awaitable[int], wanted: int) -> bool:
    return await state == wanted


async def test_a_mute_defers_marketing_but_not_login_codes(sidecar: Sidecar):
    now = datetime.now(UTC).replace(microsecond=0)
    until = now + timedelta(hours=2)
    await sidecar.stub.UpdatePreferences(update("ada", "mute_until", mute_until=ts(until)))

    promo = await sidecar.stub.Decide(marketing("ada"))
    late = await sidecar.stub.Decide(marketing("ada", not_after=now + timedelta(hours=1)))
    otp = await sidecar.stub.Decide(decide_request("otp", user="ada", addresses=ADDRESSES))

    assert promo.verdict == pb.VERDICT_DEFER
    assert at(promo.send_at) == until
    assert "muted" in codes(promo)
    assert late.verdict == pb.VERDICT_SUPPRESS
    assert codes(late) == ["muted", "expired"]
    assert otp.verdict == pb.VERDICT_SEND
    assert "muted" not in codes(otp)


async def test_personal_quiet_hours_defer_in_the_recipients_timezone(sidecar: Sidecar):
    await sidecar.stub.UpdatePreferences(
        update("ada", "quiet_hours", quiet_hours=pb.LocalWindow(start="22:30", end="07:15"))
    )
    night = datetime(2026, 6, 1, 21, 0, tzinfo=UTC)  # 23:00 in Berlin

    def request(category: str, when: datetime) -> pb.DecideRequest:
        made = decide_request(category, user="ada", timezone="Europe/Berlin", addresses=ADDRESSES)
        made.at.CopyFrom(ts(when))
        return made

    promo = await sidecar.stub.Decide(request("marketing", night))
    otp = await sidecar.stub.Decide(request("otp", night))
    day = await sidecar.stub.Decide(request("marketing", night + timedelta(hours=10)))

    assert promo.verdict == pb.VERDICT_DEFER
    assert at(promo.send_at) == datetime(2026, 6, 2, 5, 15, tzinfo=UTC)  # 07:15 in Berlin
    assert codes(promo) == ["channel_selected", "personal_quiet_hours"]
    assert otp.verdict == pb.VERDICT_SEND  # its rule bypasses quiet hours
    assert day.verdict == pb.VERDICT_SEND


async def test_the_persons_channel_order_ranks_channels(sidecar: Sidecar):
    def news() -> pb.DecideRequest:
        return decide_request("news", user="ada", addresses=ADDRESSES, dry_run=True)

    before = await sidecar.stub.Decide(news())  # no order: the cheapest channel
    await sidecar.stub.UpdatePreferences(update("ada", "channel_order", channel_order=["email", "sms"]))
    after = await sidecar.stub.Decide(news())

    assert before.steps[0].channel == "in_app"
    assert after.steps[0].channel == "email"


async def test_rules_see_the_preferences_as_facts(sidecar: Sidecar):
    await sidecar.stub.UpdatePreferences(
        update("ada", consents=[consent("news", "sms")], locale="pt-BR", mute_until=ts(datetime(2099, 1, 1)))
    )
    request = decide_request("news", user="ada", addresses=ADDRESSES, dry_run=True)
    request.explain = True

    decided = await sidecar.stub.Decide(request)

    facts = decided.explanation.facts["preferences"]
    assert (facts["locale"], facts["muted"], list(facts["opted_out"])) == ("pt-BR", True, ["sms"])
    assert facts["opted_out_of"]["sms"] is True
    assert "no_sms_fans" in decided.matched_rules
    assert decided.lane == "high"


# --- shared by every sidecar on the store --------------------------------------------------------


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.redis)]
)
def store_url(request: pytest.FixtureRequest) -> str:
    servers: RedisServer | RedisCluster = request.getfixturevalue(
        "single_redis" if request.param == "redis" else "redis_cluster"
    )
    return servers.url


async def test_preferences_survive_on_redis_and_a_second_sidecar_sees_them(
    make_app: Callable[..., App], rules_dir: Path, store_url: str, request: pytest.FixtureRequest
):
    prefix = f"prefs-{request.node.callspec.id}-{datetime.now(UTC).timestamp():.0f}"
    settings = {"rules_dir": rules_dir, "store_url": store_url, "key_prefix": prefix}
    wanted = update("ada", consents=[consent("marketing", "sms")], channel_order=["in_app"], locale="sv-SE")

    # Given preferences stored through one sidecar, which then stops
    async with make_app(**settings) as first, grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stored = await pb_grpc.SmartDispatchServiceStub(channel).UpdatePreferences(wanted)

    # Then another sidecar on the same store reads them and decides by them
    async with (
        make_app(**settings) as second,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel,
    ):
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        got = await stub.GetPreferences(pb.GetPreferencesRequest(user_id="ada"))
        decided = await stub.Decide(marketing("ada", message_id="promo-r1"))
        # ... and an UNSUBSCRIBED event there adds to them
        await stub.ReportEvent(
            pb.ReportEventRequest(
                user_id="ada", message_id="promo-r1", channel="in_app", kind=pb.EVENT_KIND_UNSUBSCRIBED
            )
        )
        after = await stub.Decide(marketing("ada", message_id="promo-r2"))

    assert got.preferences == stored.preferences
    assert got.updated_at == stored.updated_at
    assert [s.channel for s in decided.steps] == ["email", "in_app"]  # no SMS
    assert [s.channel for s in after.steps] == ["email"]


# --- who may call ---------------------------------------------------------------------------------


async def test_reading_preferences_needs_read_and_changing_them_decide(
    make_app: Callable[..., App], rules_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("TOKEN_APP", "app-secret")
    monkeypatch.setenv("TOKEN_MON", "mon-secret")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        "  - {name: app, token_env: TOKEN_APP, scopes: [decide]}\n"
        "  - {name: monitor, token_env: TOKEN_MON, scopes: [read]}\n"
    )
    async with (
        make_app(rules_dir=rules_dir, auth_tokens_file=tokens) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        monitor = (("authorization", "Bearer mon-secret"),)
        service = (("authorization", "Bearer app-secret"),)

        await stub.GetPreferences(pb.GetPreferencesRequest(user_id="ada"), metadata=monitor)
        refused = await status_of(stub.UpdatePreferences(update("ada", locale="de"), metadata=monitor))
        await stub.UpdatePreferences(update("ada", locale="de"), metadata=service)

    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'monitor' lacks the 'decide' scope" in refused.details()
