"""Bad requests get INVALID_ARGUMENT naming the field, and consume nothing."""

from __future__ import annotations

import grpc
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb


async def _status(stub, request):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Decide(request)
    return info.value.code(), info.value.details()


def _without_message_id():
    request = decide_request()
    request.message.id = ""
    return request


def _deadline_out_of_range():
    request = decide_request()
    request.message.not_after.seconds = 10**13
    return request


def _without_user():
    request = decide_request()
    request.recipient.user_id = ""
    return request


@pytest.mark.parametrize(
    ("request_factory", "field", "fragment"),
    [
        (_without_message_id, "message.id", "required"),
        (_without_user, "recipient.user_id", "required"),
        (_deadline_out_of_range, "message.not_after", "out of range"),
        (lambda: decide_request("newsletter"), "message.category", "'newsletter'"),
        (lambda: decide_request(""), "message.category", "required"),
        (lambda: decide_request(timezone="Mars/Olympus_Mons"), "recipient.timezone", "Mars/Olympus_Mons"),
        (lambda: decide_request(channels=("fax",)), "message.channels", "'fax'"),
        (
            lambda: decide_request(addresses={"pigeon": "roof"}),
            "recipient.addresses['pigeon']",
            "unknown channel",
        ),
        (lambda: decide_request(opted_out=("telex",)), "recipient.opted_out", "'telex'"),
        (lambda: decide_request(preferred=("fax",)), "recipient.preferred", "'fax'"),
        (lambda: decide_request(attributes={"score": float("inf")}), "recipient.attributes.score", "finite"),
        (
            lambda: decide_request(attributes={"last_active_at": "yesterday"}),
            "recipient.attributes.last_active_at",
            "RFC 3339",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(stub, request_factory, field, fragment):
    code, details = await _status(stub, request_factory())

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: ")
    assert fragment in details


async def test_unknown_category_lists_the_known_ones(stub):
    _, details = await _status(stub, decide_request("newsletter"))

    assert "alert, marketing, otp, transactional" in details


async def test_a_rejected_request_consumes_no_cap(stub):
    bad = decide_request(user="u-bad", attributes={"last_active_at": "not a time"})
    await _status(stub, bad)
    good = await stub.Decide(decide_request(user="u-bad"))

    assert good.verdict == pb.VERDICT_SEND
    assert {c.name: c.used for c in good.caps} == {"marketing_hourly": 1, "marketing_daily": 1}


async def test_list_methods_validate_their_fields(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.AddListMember(pb.AddListMemberRequest(list=pb.LIST_KIND_UNSPECIFIED, user_id="u"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("list: ")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckListMember(pb.CheckListMemberRequest(user_id=" "))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("user_id: ")
