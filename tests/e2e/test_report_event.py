"""ReportEvent: behaviour fed back into decisions, and caps refunded for undelivered messages."""

from __future__ import annotations

import grpc
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc


def event(kind, *, user="u-ev", message_id="m", channel="sms"):
    return pb.ReportEventRequest(user_id=user, message_id=message_id, channel=channel, kind=kind)


async def test_a_bounced_message_gives_its_cap_slot_back(stub):
    first = await stub.Decide(decide_request(user="u-bounce", message_id="promo-1"))
    refund = await stub.ReportEvent(event(pb.EVENT_KIND_BOUNCED, user="u-bounce", message_id="promo-1"))
    second = await stub.Decide(decide_request(user="u-bounce", message_id="promo-2"))

    assert first.verdict == pb.VERDICT_SEND
    assert refund.refunded is True
    assert second.verdict == pb.VERDICT_SEND  # without the refund it would wait an hour
    assert {c.name: c.used for c in second.caps} == {"marketing_hourly": 1, "marketing_daily": 1}


async def test_an_open_is_not_a_refund(stub):
    await stub.Decide(decide_request(user="u-open", message_id="promo-1"))
    response = await stub.ReportEvent(event(pb.EVENT_KIND_OPENED, user="u-open", message_id="promo-1"))
    second = await stub.Decide(decide_request(user="u-open", message_id="promo-2"))

    assert response.refunded is False
    assert second.verdict == pb.VERDICT_DEFER


async def test_activity_reported_to_the_store_makes_marketing_go_in_app(stub):
    before = await stub.Decide(decide_request(user="u-act", dry_run=True))
    await stub.ReportEvent(pb.ReportEventRequest(user_id="u-act", kind=pb.EVENT_KIND_ACTIVE))
    after = await stub.Decide(decide_request(user="u-act", dry_run=True))

    assert before.steps[0].channel == "sms"  # activity unknown: treated as inactive
    assert after.steps[0].channel == "in_app"
    assert "marketing_active_in_app" in after.matched_rules


async def test_learned_engagement_ranks_channels_rules_do_not_order(make_app, tmp_path):
    # Given rules that say nothing about which channel a digest takes
    (tmp_path / "digest.yaml").write_text(
        "categories: [digest]\nrules:\n  - {name: digest, when: {category: digest}, then: {}}\n"
    )
    addresses = {"email": "ada@example.com", "in_app": "inbox-ada"}
    async with (
        make_app(rules_dir=tmp_path) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        # in-app is cheaper than e-mail...
        before = await stub.Decide(decide_request("digest", user="u-eng", addresses=addresses))
        # ...until the person is seen to open e-mails and ignore the inbox
        for i in range(5):
            for kind, channel_name in (
                (pb.EVENT_KIND_DELIVERED, "email"),
                (pb.EVENT_KIND_OPENED, "email"),
                (pb.EVENT_KIND_DELIVERED, "in_app"),
            ):
                await stub.ReportEvent(event(kind, user="u-eng", message_id=f"m{i}", channel=channel_name))
        after = await stub.Decide(decide_request("digest", user="u-eng", addresses=addresses))

    assert before.steps[0].channel == "in_app"
    assert after.steps[0].channel == "email"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ReportEventRequest(message_id="m", channel="sms", kind=pb.EVENT_KIND_OPENED), "user_id"),
        (pb.ReportEventRequest(user_id="u", channel="sms", kind=pb.EVENT_KIND_BOUNCED), "message_id"),
        (
            pb.ReportEventRequest(user_id="u", message_id="m", channel="fax", kind=pb.EVENT_KIND_OPENED),
            "channel",
        ),
        (pb.ReportEventRequest(user_id="u", message_id="m", channel="sms"), "kind"),
    ],
)
async def test_bad_events_are_invalid_argument_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ReportEvent(request_)

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ")
