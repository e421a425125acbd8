"""Allow and deny lists: from settings at start-up, and changed over gRPC."""

from __future__ import annotations

import grpc
import pytest
from decide_builders import codes, decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc


async def test_deny_listed_user_is_suppressed_and_allow_listed_user_bypasses_caps(make_app):
    async with (
        make_app(deny_list=("u-denied",), allow_list=("u-vip",)) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        denied = await stub.Decide(decide_request("otp", user="u-denied"))
        vip = [await stub.Decide(decide_request(user="u-vip")) for _ in range(5)]

    assert denied.verdict == pb.VERDICT_SUPPRESS
    assert codes(denied) == ["deny_listed"]
    assert {r.verdict for r in vip} == {pb.VERDICT_SEND}
    assert "allow_listed" in codes(vip[-1])


async def test_list_changes_take_effect_on_the_next_decision(stub):
    added = await stub.AddListMember(pb.AddListMemberRequest(list=pb.LIST_KIND_DENY, user_id="u-x"))
    added_again = await stub.AddListMember(pb.AddListMemberRequest(list=pb.LIST_KIND_DENY, user_id="u-x"))
    check = await stub.CheckListMember(pb.CheckListMemberRequest(user_id="u-x"))
    suppressed = await stub.Decide(decide_request("otp", user="u-x"))
    removed = await stub.RemoveListMember(pb.RemoveListMemberRequest(list=pb.LIST_KIND_DENY, user_id="u-x"))
    sent = await stub.Decide(decide_request("otp", user="u-x"))
    check_after = await stub.CheckListMember(pb.CheckListMemberRequest(user_id="u-x"))

    assert (added.added, added_again.added, removed.removed) == (True, False, True)
    assert list(check.lists) == [pb.LIST_KIND_DENY]
    assert suppressed.verdict == pb.VERDICT_SUPPRESS
    assert sent.verdict == pb.VERDICT_SEND
    assert list(check_after.lists) == []


@pytest.mark.parametrize("kind", [pb.LIST_KIND_ALLOW, pb.LIST_KIND_DENY])
async def test_removing_a_non_member_says_so(stub, kind):
    response = await stub.RemoveListMember(pb.RemoveListMemberRequest(list=kind, user_id="nobody"))

    assert response.removed is False
