"""`DecideRequest.at`: a sidecar started with --allow-request-clock decides as of the request's
instant (caps, quiet hours, activity, send times), on memory and on Redis alike; without the
flag the field is refused. A simulated week months in the past runs through plain RPCs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

from tests.support.sidecar import ROOT, sidecar

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, months before the wall clock


def at(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def marketing(message_id: str, when: datetime, user: str = "u1") -> pb.DecideRequest:
    return pb.DecideRequest(
        message=pb.Message(id=message_id, category="marketing"),
        recipient=pb.Recipient(user_id=user, timezone="UTC", addresses={"sms": "+15550001111"}),
        at=at(when),
    )


@pytest.fixture(params=["memory", "redis"])
def stub(request: pytest.FixtureRequest) -> Iterator[pb_grpc.SmartDispatchServiceStub]:
    args = ["--rules", str(ROOT / "rules"), "--allow-request-clock"]
    if request.param == "redis":
        args += ["--store", request.getfixturevalue("single_redis").url.replace("/0", "/3")]
        request.getfixturevalue("single_redis").client().flushdb()
    with sidecar(*args) as server, grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.SmartDispatchServiceStub(channel)


def test_caps_quiet_hours_and_send_times_follow_the_request_clock(stub):
    # A SEND goes at the request's instant
    first = stub.Decide(marketing("m1", START))
    assert first.verdict == pb.VERDICT_SEND
    assert first.steps[0].send_at.ToDatetime(tzinfo=UTC) == START
    # Ten simulated minutes later the hourly cap holds (the reservation outlived the months
    # between the request clock and the wall clock): deferred to an hour after the first
    second = stub.Decide(marketing("m2", START + timedelta(minutes=10)))
    assert second.verdict == pb.VERDICT_DEFER
    assert second.send_at.ToDatetime(tzinfo=UTC) == START + timedelta(hours=1)
    # Two simulated hours later there is room again
    third = stub.Decide(marketing("m3", START + timedelta(hours=2)))
    assert third.verdict == pb.VERDICT_SEND
    assert third.steps[0].send_at.ToDatetime(tzinfo=UTC) == START + timedelta(hours=2)
    # The daily cap (3 in 24 h) is full now: the next goes when the first leaves the window
    fourth = stub.Decide(marketing("m4", START + timedelta(hours=4)))
    assert fourth.send_at.ToDatetime(tzinfo=UTC) == START + timedelta(days=1)
    # At 22:00 (quiet hours 21:00-08:00 in the recipient's zone) another person's waits for 08:00
    night = stub.Decide(marketing("n1", START.replace(hour=22), user="u2"))
    assert night.verdict == pb.VERDICT_DEFER
    assert night.send_at.ToDatetime(tzinfo=UTC) == START.replace(hour=8) + timedelta(days=1)


def test_a_simulated_week_runs_through_decide_and_report_event(stub):
    # Activity reported at simulated instants makes a person "active" as of the request clock
    user = "week-user"
    stub.ReportEvent(
        pb.ReportEventRequest(user_id=user, kind=pb.EVENT_KIND_ACTIVE, occurred_at=at(START)), timeout=5
    )
    request = marketing("w1", START + timedelta(days=1), user=user)
    request.recipient.addresses["in_app"] = user
    explain = pb.DecideRequest()
    explain.CopyFrom(request)
    explain.explain = True
    explain.dry_run = True
    facts = stub.Decide(explain).explanation.facts
    assert facts["user"]["days_since_active"] == pytest.approx(1.0)
    # ... and 6 simulated days later the same person counts as inactive
    later = pb.DecideRequest()
    later.CopyFrom(explain)
    later.at.CopyFrom(at(START + timedelta(days=6)))
    assert stub.Decide(later).explanation.facts["user"]["days_since_active"] == pytest.approx(6.0)


def test_without_the_flag_the_request_clock_is_refused_naming_the_field():
    with (
        sidecar("--rules", str(ROOT / "rules")) as server,
        grpc.insecure_channel(server.address) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        pb_grpc.SmartDispatchServiceStub(channel).Decide(marketing("m1", START))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("at: the request clock is off")
