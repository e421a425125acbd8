"""Memory stays bounded under large requests: nothing keeps a request after its answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

from tests.hostile.conftest import Live, _live, rules_copy


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def large_request(index: int, labels: int, value_chars: int) -> pb.DecideRequest:
    request = pb.DecideRequest(
        message=pb.Message(
            id=f"big-{index}",
            category="otp",
            labels={f"k{n}": "v" * value_chars for n in range(labels)},
        ),
        recipient=pb.Recipient(user_id=f"u{index}", addresses={"sms": "+15550001111"}),
    )
    request.message.data.update({f"d{n}": "x" * 60_000 for n in range(8)})
    request.recipient.attributes.update({f"a{n}": "y" * 60_000 for n in range(4)})
    return request


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """The decision log keeps what it is allowed to (its bound, here 100 decisions of a few KB
    each); beyond that, nothing of a request may stay."""
    yield from _live(rules_copy(tmp_path), SD_DECISION_LOG_MAX_ENTRIES="100")


def test_rss_stays_flat_over_hundreds_of_near_limit_and_oversized_requests(live: Live):
    # Given a warmed-up server
    for index in range(50):
        live.stub.Decide(large_request(index, labels=64, value_chars=1024), timeout=5)
    before = rss_mb(live.server.process.pid)
    # When 200 requests of ~0.8 MB each are decided (every label and Struct near its limit) ...
    for index in range(200):
        live.stub.Decide(large_request(1000 + index, labels=64, value_chars=1024), timeout=5)
    # ... and 100 more are refused for a 3 MB label value
    refused = 0
    for index in range(100):
        request = large_request(5000 + index, labels=1, value_chars=1024)
        request.message.labels["k0"] = "z" * 3_000_000
        try:
            live.stub.Decide(request, timeout=5)
        except grpc.RpcError as exc:
            refused += exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    after = rss_mb(live.server.process.pid)
    # Then the oversized ones were refused, and RSS grew by a few MB at most, not by what was sent
    assert refused == 100
    print(f"\nRSS before {before:.0f} MB, after 300 large requests {after:.0f} MB")
    assert after - before < 40, (before, after)
    live.health()
