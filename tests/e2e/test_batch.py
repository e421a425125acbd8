"""DecideBatch and DispatchBatch over gRPC: a result per item, in order; a bad item is an error
for that item only; more than 1,000 is refused naming the field; bulk sends go in the bulk lane
unless urgent."""

from __future__ import annotations

import grpc
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb


async def test_decide_batch_answers_every_item_in_order_and_a_bad_one_alone(stub):
    requests = [decide_request("transactional", user=f"u{i}", message_id=f"b-{i}") for i in range(5)]
    requests[2].recipient.timezone = "Mars/Olympus"  # wrong: that item only

    response = await stub.DecideBatch(pb.DecideBatchRequest(requests=requests))

    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["decision", "decision", "error", "decision", "decision"]
    assert response.results[2].error.code == "INVALID_ARGUMENT"
    assert "timezone" in response.results[2].error.message
    assert [r.decision.verdict for i, r in enumerate(response.results) if i != 2] == [pb.VERDICT_SEND] * 4
    # each a decision of its own, findable like any other
    ids = [r.decision.decision_id for i, r in enumerate(response.results) if i != 2]
    assert len(set(ids)) == 4
    found = await stub.GetDecision(pb.GetDecisionRequest(message_id="b-4"))
    assert found.decision.decision_id == ids[3]


async def test_a_batch_over_a_thousand_is_refused_naming_the_field(stub):
    requests = [decide_request("otp", message_id=f"big-{i}") for i in range(1001)]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.DecideBatch(pb.DecideBatchRequest(requests=requests))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests: at most 1000 per call, got 1001" in (raised.value.details() or "")


async def test_dispatch_batch_queues_bulk_marketing_in_the_bulk_lane_and_login_codes_as_critical(stub):
    requests = []
    for i, category in enumerate(["marketing", "otp", "marketing"]):
        decide = decide_request(category, user=f"d{i}", message_id=f"bulk-{i}")
        requests.append(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))
    bad = decide_request("marketing", user="", message_id="bulk-bad")
    requests.append(pb.DispatchRequest(message=bad.message, recipient=bad.recipient))

    response = await stub.DispatchBatch(pb.DispatchBatchRequest(requests=requests))

    assert [r.WhichOneof("result") for r in response.results] == ["dispatch", "dispatch", "dispatch", "error"]
    lanes = [r.dispatch.decision.lane for r in response.results[:3]]
    assert lanes == ["bulk", "critical", "bulk"]
    assert "user_id" in response.results[3].error.message
    # and a repeat of the batch is a duplicate per item, never a second send
    again = await stub.DispatchBatch(pb.DispatchBatchRequest(requests=requests[:3]))
    assert [r.dispatch.duplicate for r in again.results] == [True, True, True]
