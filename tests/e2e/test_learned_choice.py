"""The `choose` effect over gRPC: channels ranked by what each person engages with, within what
the rules allow, with the population as a new person's prior, and explain output."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import grpc
import pytest
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.config import Settings

RULES = """
categories: [promo, digest]
channels:
  sms: {cost: 0.05}
  email: {cost: 0.001}
  in_app: {cost: 0}
learning: {half_life: 30d, prior_weight: 4, values: {promo: 1.0}}
rules:
  - name: promo_learned
    when: {category: promo}
    then:
      prefer: [in_app, email, sms]
      choose: {by: engagement, objective: value, explore: none}
  - name: digest_worth_it
    when: {category: digest}
    then:
      prefer: [email]
      choose: {by: engagement, explore: none}
      min_expected_engagement: 0.3
"""
ADDRESSES = {"sms": "+15550001111", "email": "a@example.com", "in_app": "inbox-1"}
_ids = itertools.count()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "rules.yaml").write_text(RULES)
    return Settings(port=0, rules_dir=tmp_path, watch_rules=False, learning_prior_refresh_s=0.0)


def promo(user: str, category: str = "promo", **extra: object) -> pb.DecideRequest:
    return pb.DecideRequest(
        message=pb.Message(id=f"{user}-{next(_ids)}", category=category),
        recipient=pb.Recipient(user_id=user, timezone="UTC", addresses=ADDRESSES),
        **extra,  # type: ignore[arg-type]
    )


async def history(stub, user: str, channel: str, sends: int, opens: int, category: str = "promo") -> None:
    """`sends` messages decided for `user` on `channel` (forced by opting out of the others),
    `opens` of them opened."""
    others = [c for c in ADDRESSES if c != channel]
    for n in range(sends):
        request = promo(user, category)
        request.recipient.opted_out.extend(others)
        decided = await stub.Decide(request)
        assert decided.steps[0].channel == channel
        if n < opens:
            event = pb.ReportEventRequest(
                user_id=user, message_id=request.message.id, channel=channel, kind=pb.EVENT_KIND_OPENED
            )
            await stub.ReportEvent(event)


async def test_a_person_who_opens_email_gets_email_though_in_app_is_preferred_and_free(stub):
    # Given 20 opened e-mails and 10 unopened in-app messages
    await history(stub, "ada", "email", sends=20, opens=20)
    await history(stub, "ada", "in_app", sends=10, opens=0)
    # When a promo is decided with explain
    decided = await stub.Decide(promo("ada", explain=True, dry_run=True))
    # Then e-mail is chosen, and the reason and the explanation show the numbers
    assert decided.steps[0].channel == "email"
    learned = [r for r in decided.reasons if r.code == "learned_choice"]
    assert learned and learned[0].rule == "promo_learned" and learned[0].detail.startswith("email:")
    choice = decided.explanation.learned_choice
    # SMS, never tried, sits at the population's uninformed rate; in-app, never opened, is last
    assert [line.split(":")[0] for line in choice] == ["email", "sms", "in_app"]
    assert "own 20.0/20.0" in choice[0] and "cost 0.001" in choice[0]


async def test_three_unsubscribes_on_sms_move_the_person_off_sms(stub):
    for n in range(3):
        event = pb.ReportEventRequest(
            user_id="bob", message_id=f"old-{n}", channel="sms", kind=pb.EVENT_KIND_UNSUBSCRIBED
        )
        await stub.ReportEvent(event)
    request = promo("bob", dry_run=True)
    request.recipient.opted_out.append("in_app")
    assert (await stub.Decide(request)).steps[0].channel == "email"


async def test_a_new_person_starts_from_what_works_for_everyone(stub):
    # Given a population that opens in-app messages and ignores e-mail
    for n in range(6):
        await history(stub, f"crowd-{n}", "in_app", sends=3, opens=3)
        await history(stub, f"crowd-{n}", "email", sends=3, opens=0)
    await stub.Decide(promo("newcomer", dry_run=True))  # the prior cache refreshes in the background
    await asyncio.sleep(0.2)
    # Then a newcomer with no history of their own gets in-app
    decided = await stub.Decide(promo("newcomer", dry_run=True, explain=True))
    assert decided.steps[0].channel == "in_app"
    assert "own 0.0/0.0" in decided.explanation.learned_choice[0]


async def test_low_expected_engagement_is_suppressed_when_a_rule_asks(stub):
    # Given 12 e-mails delivered to cy (sent by the caller itself), none opened
    for n in range(12):
        delivered = pb.ReportEventRequest(
            user_id="cy", message_id=f"mail-{n}", channel="email", kind=pb.EVENT_KIND_DELIVERED
        )
        await stub.ReportEvent(delivered)
    decided = await stub.Decide(promo("cy", category="digest", dry_run=True))
    assert decided.verdict == pb.VERDICT_SUPPRESS
    low = [r for r in decided.reasons if r.code == "low_expected_engagement"]
    assert low and low[0].rule == "digest_worth_it" and low[0].detail.startswith("email: ")
    # while someone who reads digests gets one
    await history(stub, "dee", "email", sends=4, opens=4, category="digest")
    assert (await stub.Decide(promo("dee", category="digest", dry_run=True))).verdict == pb.VERDICT_SEND


async def test_a_converted_event_carries_its_value_and_other_kinds_refuse_one(stub):
    request = promo("eve")
    await stub.Decide(request)
    converted = pb.ReportEventRequest(
        user_id="eve",
        message_id=request.message.id,
        channel="in_app",
        kind=pb.EVENT_KIND_CONVERTED,
        value=9.5,
    )
    await stub.ReportEvent(converted)
    opened = pb.ReportEventRequest(
        user_id="eve", message_id=request.message.id, channel="in_app", kind=pb.EVENT_KIND_OPENED, value=1
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ReportEvent(opened)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("value:")
    facts = (await stub.Decide(promo("eve", dry_run=True, explain=True))).explanation.facts
    assert facts["behaviour"]["in_app"]["converted"] == pytest.approx(1.0)
