"""`learning.segment_by` over gRPC: a new person starts from the rates of people who share their
attribute (their plan, say), not from everyone's, and learns from there as anyone does."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.config import Settings

RULES = """
categories: [promo]
channels: {email: {cost: 0.001}, in_app: {cost: 0}}
learning: {prior_weight: 4, segment_by: plan}
rules:
  - name: promo_learned
    when: {category: promo}
    then:
      prefer: [in_app, email]
      choose: {by: engagement, objective: value, explore: none}
"""
ADDRESSES = {"email": "a@example.com", "in_app": "inbox-1"}
_ids = itertools.count()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "rules.yaml").write_text(RULES)
    return Settings(port=0, rules_dir=tmp_path, watch_rules=False, learning_prior_refresh_s=0.0)


def promo(user: str, plan: str | None, **extra: object) -> pb.DecideRequest:
    recipient = pb.Recipient(user_id=user, timezone="UTC", addresses=ADDRESSES)
    if plan is not None:
        recipient.attributes.update({"plan": plan})
    return pb.DecideRequest(
        message=pb.Message(id=f"{user}-{next(_ids)}", category="promo"),
        recipient=recipient,
        **extra,  # type: ignore[arg-type]
    )


async def sent_and_opened(stub, user: str, plan: str, channel: str, opened: bool) -> None:
    """Three promos decided for `user` on `channel` (the other opted out), opened or not."""
    for _ in range(3):
        request = promo(user, plan)
        request.recipient.opted_out.extend(c for c in ADDRESSES if c != channel)
        assert (await stub.Decide(request)).steps[0].channel == channel
        if opened:
            kind = pb.EVENT_KIND_OPENED
            event = pb.ReportEventRequest(
                user_id=user, message_id=request.message.id, channel=channel, kind=kind
            )
            await stub.ReportEvent(event)


async def test_a_newcomer_starts_from_people_with_the_same_plan(stub):
    # Given "pro" people who read e-mail and ignore the app, and more "free" people who do the
    # opposite (so everyone together favours the app)
    for n in range(4):
        await sent_and_opened(stub, f"pro-{n}", "pro", "email", opened=True)
        await sent_and_opened(stub, f"pro-{n}", "pro", "in_app", opened=False)
    for n in range(8):
        await sent_and_opened(stub, f"free-{n}", "free", "in_app", opened=True)
        await sent_and_opened(stub, f"free-{n}", "free", "email", opened=False)
    await stub.Decide(promo("warm", None, dry_run=True))  # the prior cache refreshes in the background
    await asyncio.sleep(0.2)

    # When newcomers of each plan, and one without a plan, are decided
    pro = await stub.Decide(promo("new-pro", "pro", dry_run=True, explain=True))
    free = await stub.Decide(promo("new-free", "free", dry_run=True))
    unknown = await stub.Decide(promo("new-unknown", None, dry_run=True))

    # Then each starts from their own plan's rates; without a plan, from everyone's
    assert pro.steps[0].channel == "email"
    assert "own 0.0/0.0" in pro.explanation.learned_choice[0]
    assert free.steps[0].channel == "in_app"
    assert unknown.steps[0].channel == "in_app"
