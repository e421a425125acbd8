"""Push and chat end to end: a real sidecar whose providers file has FCM with a service account
(against local fakes of Google's token endpoint and FCM v1), APNs over HTTP/2 (a local fake) and
a custom channel `ops_chat` through Apprise (a local json:// target), with rules that route
alerts to `ops_chat`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.domain import set_custom_channels

from tests.channels.push_fakes import ApnsFake, FakeClock, GoogleFake, fcm_error
from tests.support.sinks import HttpSink

RULES = """
categories: [alert, news]
rules:
  - name: alerts_to_the_ops_chat
    when: {category: alert}
    then: {prefer: [ops_chat], bypass_quiet_hours: true}
  - name: news_by_push
    when: {category: news}
    then: {prefer: [push, email], fallback: [email]}
"""
NEWS_RULE = RULES[RULES.index("  - name: news_by_push") :]
S = pb.DispatchState


@dataclass
class World:
    stub: pb_grpc.SmartDispatchServiceStub
    chat: HttpSink
    google: GoogleFake
    apns: ApnsFake

    async def settled(self, dispatch_id: str, timeout_s: float = 10.0) -> pb.DispatchStatus:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = (await self.stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=dispatch_id))).status
            if status.state not in (
                S.DISPATCH_STATE_QUEUED,
                S.DISPATCH_STATE_SCHEDULED,
                S.DISPATCH_STATE_SENDING,
            ):
                return status
            await asyncio.sleep(0.02)
        raise AssertionError(f"dispatch {dispatch_id} not settled")


@pytest.fixture
async def world(make_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    chat = await HttpSink().start()
    google = await GoogleFake(FakeClock(time.time())).start()
    apns = await ApnsFake(FakeClock(time.time())).start()
    (tmp_path / "sa.json").write_text(google.service_account_json())
    monkeypatch.setenv("OPS_CHAT_URLS", chat.url.replace("http://", "json://") + "/ops")
    monkeypatch.setenv("APNS_KEY", apns.p8)
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"""
push: {{type: fcm, service_account_file: "{tmp_path / "sa.json"}", api_base: "{google.url}", timeout_s: 2}}
ops_chat: {{type: apprise, url_env: OPS_CHAT_URLS, timeout_s: 5}}
email: {{type: stub}}
"""
    )
    app = make_app(rules_dir=tmp_path / "rules", providers_file=providers, senders=2, retry_base_s=0.01)
    try:
        async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield World(pb_grpc.SmartDispatchServiceStub(channel), chat, google, apns)
    finally:
        set_custom_channels(())
        await chat.stop()
        await google.stop()
        await apns.stop()


async def dispatch(world: World, category: str, addresses: dict[str, str], **kwargs) -> pb.DispatchResponse:
    decide = decide_request(category, addresses=addresses, **kwargs)
    return await world.stub.Dispatch(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))


async def test_an_alert_reaches_the_ops_chat_through_apprise(world: World) -> None:
    accepted = await dispatch(
        world, "alert", {"ops_chat": "ops"}, data={"title": "db-1 down", "text": "since 12:00"}
    )
    status = await world.settled(accepted.dispatch_id)

    assert status.state == S.DISPATCH_STATE_DELIVERED
    assert [(a.channel, a.provider) for a in status.attempts] == [("ops_chat", "apprise")]
    [request] = world.chat.requests
    assert (request.path, request.json()["title"], request.json()["message"]) == (
        "/ops",
        "db-1 down",
        "since 12:00",
    )


async def test_a_push_goes_out_with_a_minted_token(world: World) -> None:
    accepted = await dispatch(world, "news", {"push": "device-1"})
    status = await world.settled(accepted.dispatch_id)

    assert status.state == S.DISPATCH_STATE_DELIVERED
    [send] = world.google.sends
    assert send.valid and send.json()["message"]["token"] == "device-1"
    assert len(world.google.assertions) == 1


async def test_an_unregistered_token_falls_back_and_is_skipped_by_later_decisions(world: World) -> None:
    world.google.devices["gone"] = (404, fcm_error(404, "NOT_FOUND", "UNREGISTERED"), {})
    addresses = {"push": "gone", "email": "ada@example.com"}

    accepted = await dispatch(world, "news", addresses, user="ada")
    status = await world.settled(accepted.dispatch_id)

    assert [(a.channel, a.outcome) for a in status.attempts] == [
        ("push", "permanent_error"),
        ("email", "delivered"),
    ]
    later = await world.stub.Decide(decide_request("news", user="ada", addresses=addresses, dry_run=True))
    assert [step.channel for step in later.steps] == ["email"]  # the dead token is not reachable
    renewed = {"push": "new-token", "email": "ada@example.com"}
    again = await world.stub.Decide(decide_request("news", user="ada", addresses=renewed, dry_run=True))
    assert [step.channel for step in again.steps][:1] == ["push"]  # a new token is
    other = await world.stub.Decide(decide_request("news", user="bob", addresses=addresses, dry_run=True))
    assert [step.channel for step in other.steps][:1] == ["push"]  # and it was ada's, nobody else's


async def test_an_ios_push_goes_out_over_http2_to_apns(make_app, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "rules").mkdir()  # no ops_chat here: rules naming it would not load
    (tmp_path / "rules" / "rules.yaml").write_text(RULES.split("  - name: alerts_to")[0] + NEWS_RULE)
    apns = await ApnsFake(FakeClock(time.time())).start()
    monkeypatch.setenv("APNS_KEY", apns.p8)
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"""
push: {{type: apns, team_id: {apns.team_id}, key_id: {apns.key_id}, key_env: APNS_KEY,
        topic: com.example.app, api_base: "{apns.url}", timeout_s: 2}}
email: {{type: stub}}
"""
    )
    app = make_app(rules_dir=tmp_path / "rules", providers_file=providers, senders=2)
    try:
        async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.SmartDispatchServiceStub(channel)
            world = World(stub, HttpSink(), GoogleFake(apns.clock), apns)
            accepted = await dispatch(world, "news", {"push": "a1b2c3"}, data={"title": "Hi", "text": "News"})
            status = await world.settled(accepted.dispatch_id)
    finally:
        await apns.stop()

    assert status.state == S.DISPATCH_STATE_DELIVERED
    [seen] = apns.requests
    assert seen.valid and seen.path == "/3/device/a1b2c3" and seen.headers["apns-topic"] == "com.example.app"
    assert seen.json()["aps"] == {"alert": {"title": "Hi", "body": "News"}}
    assert status.attempts[0].provider_message_id == seen.headers["apns-id"]
