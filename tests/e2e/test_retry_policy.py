"""A channel's retry policy comes from the providers file: an SMS gateway that fails four times
is tried a fifth time when the file allows five attempts, though the sidecar's default is two."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import grpc
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

from tests.support.sinks import HttpSink

RULES = """
categories: [otp]
rules:
  - name: otp
    when: {category: otp}
    then: {prefer: [sms, email], fallback: [email], bypass_caps: true}
"""


async def settle(stub, dispatch_id: str) -> pb.DispatchStatus:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = (await stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=dispatch_id))).status
        if status.state in (pb.DISPATCH_STATE_DELIVERED, pb.DISPATCH_STATE_FAILED):
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"{dispatch_id} did not settle")


async def login_codes(
    make_app, tmp_path: Path, providers_yaml: str, count: int, **settings
) -> list[pb.DispatchStatus]:
    """`count` login codes dispatched at once through a sidecar with these providers (rules:
    SMS, e-mail as the fallback), each status once it is final."""
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    providers = tmp_path / "providers.yaml"
    providers.write_text(providers_yaml)
    app = make_app(rules_dir=tmp_path / "rules", providers_file=providers, retry_base_s=0.01, **settings)
    async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        requests = [decide_request("otp") for _ in range(count)]
        accepted = await asyncio.gather(
            *(stub.Dispatch(pb.DispatchRequest(message=r.message, recipient=r.recipient)) for r in requests)
        )
        return [await settle(stub, a.dispatch_id) for a in accepted]


async def test_the_providers_file_sets_how_often_a_channel_is_tried(make_app, tmp_path: Path):
    gateway = await HttpSink().start()
    gateway.script.extend([500, 500, 500, 500])
    providers = (
        f'sms: {{type: http_sms, url: "{gateway.url}/sms",\n'
        "      retry: {max_attempts: 5, base_s: 0.01, max_s: 0.02}}\n"
        "email: {type: stub}\n"
    )
    try:
        [status] = await login_codes(make_app, tmp_path, providers, 1, retry_attempts=2)
    finally:
        await gateway.stop()

    assert status.state == pb.DISPATCH_STATE_DELIVERED
    assert [(a.channel, a.outcome) for a in status.attempts] == [("sms", "retryable_error")] * 4 + [
        ("sms", "delivered")
    ]


async def test_a_failing_sms_gateway_hands_the_message_to_the_second_one_before_email(
    make_app, tmp_path: Path
):
    # Given two SMS gateways, the first answering 503 to everything, and e-mail as the fallback
    down, up = await HttpSink().start(), await HttpSink().start()
    down.script.extend([503] * 50)
    providers = (
        "sms:\n"
        f'  - {{name: gateway_a, type: http_sms, url: "{down.url}/sms"}}\n'
        f'  - {{name: gateway_b, type: http_sms, url: "{up.url}/sms"}}\n'
        "email: {type: stub}\n"
    )
    try:
        statuses = await login_codes(make_app, tmp_path, providers, 3, retry_attempts=2)
    finally:
        await down.stop()
        await up.stop()

    # Then each code goes by SMS through the second gateway, at the first attempt
    for status in statuses:
        assert status.state == pb.DISPATCH_STATE_DELIVERED
        assert [(a.channel, a.provider, a.outcome) for a in status.attempts] == [
            ("sms", "gateway_b", "delivered")
        ]
    assert len(up.requests) == 3 and len(down.requests) == 3


async def test_a_provider_over_its_rate_makes_messages_wait_their_turn_not_fail(make_app, tmp_path: Path):
    # Given an SMS gateway allowed 4 sends a second, one at a time, and 8 login codes at once
    gateway = await HttpSink().start()
    providers = (
        f'sms: {{type: http_sms, url: "{gateway.url}/sms", rate: 4/s, burst: 1}}\nemail: {{type: stub}}\n'
    )
    started = time.monotonic()
    try:
        statuses = await login_codes(make_app, tmp_path, providers, 8, senders=8, retry_attempts=1)
    finally:
        await gateway.stop()
    elapsed = time.monotonic() - started

    # Then all go by SMS, each at its first attempt (waiting is not failing), spread over ~2 s
    assert all(s.state == pb.DISPATCH_STATE_DELIVERED for s in statuses)
    assert all([(a.channel, a.outcome) for a in s.attempts] == [("sms", "delivered")] for s in statuses)
    arrivals = sorted(r.at for r in gateway.requests)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert elapsed >= 1.6 and min(gaps) >= 0.2
    assert any("waiting for its turn" in h.detail for s in statuses for h in s.history)
