"""Dispatch end to end: a real server, real providers (HTTP SMS gateway, SMTP, webhook, inbox)
talking to real servers on loopback, faults injected at those servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

from tests.support.sinks import HttpSink, Mailbox, Received, accept, start_smtp
from tests.support.waiting import eventually

RULES = """
categories: [otp, promo, nudge, event]
caps:
  - {name: promo_burst, limit: 1, window: 2s}
rules:
  - name: otp
    when: {category: otp}
    then: {prefer: [sms, email], fallback: [email], bypass_caps: true}
  - name: promo
    when: {category: promo}
    then: {prefer: [sms], caps: [promo_burst], on_cap: defer}
  - name: nudge
    when: {category: nudge}
    then: {prefer: [in_app, sms], fallback: [sms], escalate_after: 1s}
  - name: event
    when: {category: event}
    then: {prefer: [webhook]}
"""
S = pb.DispatchState
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
_MOVING = (S.DISPATCH_STATE_QUEUED, S.DISPATCH_STATE_SCHEDULED, S.DISPATCH_STATE_SENDING)


class World:
    """The sidecar and the provider servers of one test."""

    def __init__(self, stub, sink: HttpSink, mailbox: Mailbox, smtp: asyncio.Server) -> None:
        self.stub = stub
        self.sink = sink
        self.mailbox = mailbox
        self.smtp = smtp

    def addresses(self) -> dict[str, str]:
        return {
            "sms": "+15550100",
            "email": "ada@example.com",
            "in_app": "inbox-ada",
            "webhook": f"{self.sink.url}/hook",
        }

    async def dispatch(self, category: str, **kwargs) -> pb.DispatchResponse:
        decide = decide_request(category, addresses=self.addresses(), **kwargs)
        return await self.stub.Dispatch(
            pb.DispatchRequest(message=decide.message, recipient=decide.recipient)
        )

    async def settled(self, dispatch_id: str, timeout_s: float = 10.0) -> pb.DispatchStatus:
        """The status once it reaches a final state (or WAITING_ENGAGEMENT)."""
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
        raise AssertionError(f"dispatch {dispatch_id} not settled: {status}")

    def sms_sent(self) -> list[str]:
        return [r.json()["text"] for r in self.sink.requests if r.path == "/sms"]


@pytest.fixture
async def world(make_app, tmp_path: Path, monkeypatch) -> AsyncIterator[World]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    sink = await HttpSink().start()
    mailbox = Mailbox()
    smtp, smtp_port = await start_smtp(mailbox)
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", "s3cret")
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"""
sms: {{type: http_sms, url: "{sink.url}/sms", timeout_s: 2}}
email: {{type: smtp, host: 127.0.0.1, port: {smtp_port}, from: "noreply@example.com", timeout_s: 2}}
webhook: {{type: webhook, secret_env: TEST_WEBHOOK_SECRET, timeout_s: 2}}
in_app: {{type: inbox}}
"""
    )
    app = make_app(
        rules_dir=tmp_path / "rules",
        providers_file=providers,
        senders=4,
        retry_attempts=3,
        retry_base_s=0.01,
        retry_max_s=0.05,
        send_timeout_s=2.0,
        templates_dir=TEMPLATES,
    )
    async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield World(pb_grpc.SmartDispatchServiceStub(channel), sink, mailbox, smtp)
    smtp.close()
    await sink.stop()


async def test_dispatch_is_acked_then_delivered_with_a_traceable_history(world: World):
    accepted = await world.dispatch("otp", message_id="login-1")
    status = await world.settled(accepted.dispatch_id)

    assert accepted.status.state in (
        S.DISPATCH_STATE_QUEUED,
        S.DISPATCH_STATE_SENDING,
        S.DISPATCH_STATE_DELIVERED,
    )
    assert accepted.decision.verdict == pb.VERDICT_SEND
    assert status.state == S.DISPATCH_STATE_DELIVERED
    assert [(a.channel, a.outcome, a.number) for a in status.attempts] == [("sms", "delivered", 1)]
    [request] = world.sink.requests
    assert request.json()["to"] == "+15550100"
    assert (
        request.headers["Idempotency-Key"]
        == status.attempts[0].idempotency_key
        == f"{accepted.dispatch_id}:0"
    )
    assert [h.state for h in status.history] == [
        S.DISPATCH_STATE_QUEUED,
        S.DISPATCH_STATE_SENDING,
        S.DISPATCH_STATE_DELIVERED,
    ]
    by_message = await world.stub.GetDispatch(pb.GetDispatchRequest(message_id="login-1"))
    assert by_message.status.dispatch_id == accepted.dispatch_id


async def test_the_same_message_id_twice_is_the_first_dispatch_and_one_send(world: World):
    first = await world.dispatch("otp", message_id="login-2")
    again = await world.dispatch("otp", message_id="login-2")
    await world.settled(first.dispatch_id)

    assert again.duplicate and not first.duplicate
    assert again.dispatch_id == first.dispatch_id
    assert not again.HasField("decision")
    assert len(world.sink.requests) == 1


async def test_gateway_errors_are_retried_then_delivered(world: World):
    world.sink.script.extend([500, 503])
    accepted = await world.dispatch("otp")
    status = await world.settled(accepted.dispatch_id)

    assert status.state == S.DISPATCH_STATE_DELIVERED
    assert [a.outcome for a in status.attempts] == ["retryable_error", "retryable_error", "delivered"]
    keys = {r.headers["Idempotency-Key"] for r in world.sink.requests}
    assert keys == {f"{accepted.dispatch_id}:0"}  # one key for every attempt of the step


async def test_a_permanent_sms_failure_falls_back_to_email(world: World):
    world.sink.script.append(400)
    accepted = await world.dispatch("otp", data={"text": "Your code is 123", "subject": "Login code"})
    status = await world.settled(accepted.dispatch_id)

    assert status.state == S.DISPATCH_STATE_DELIVERED
    assert [(a.channel, a.outcome) for a in status.attempts] == [
        ("sms", "permanent_error"),
        ("email", "delivered"),
    ]
    assert any("fallback to email" in h.detail for h in status.history)
    message = world.mailbox.message()
    assert message["To"] == "ada@example.com" and message["Subject"] == "Login code"


async def test_everything_down_dead_letters_with_full_history_and_redrive_delivers(world: World):
    world.sink.script.extend([500] * 3)
    world.mailbox.refuse["ada@example.com"] = "451 try again later"
    accepted = await world.dispatch("otp")
    failed = await world.settled(accepted.dispatch_id)

    assert failed.state == S.DISPATCH_STATE_FAILED and failed.dead_lettered
    assert [(a.channel, a.outcome) for a in failed.attempts] == [("sms", "retryable_error")] * 3 + [
        ("email", "retryable_error")
    ] * 3
    assert "every channel failed" in failed.history[-1].detail

    # When the providers recover and the dead letters are re-driven through the current rules
    world.mailbox.refuse.clear()
    redriven = await world.stub.RedriveDeadLetters(pb.RedriveDeadLettersRequest(limit=10))
    delivered = await world.settled(accepted.dispatch_id)

    assert [s.dispatch_id for s in redriven.redriven] == [accepted.dispatch_id]
    assert delivered.state == S.DISPATCH_STATE_DELIVERED and not delivered.dead_lettered
    assert delivered.attempts[-1].outcome == "delivered"


async def test_rejected_messages_do_not_open_the_circuit_for_the_next_ones(world: World):
    # Given more webhook messages rejected for their own sake (400) than the breaker tolerates
    # provider failures in a row (5)
    world.sink.script.extend([400] * 6)
    for _ in range(6):
        rejected = await world.dispatch("event")
        assert (await world.settled(rejected.dispatch_id)).state == S.DISPATCH_STATE_FAILED

    # When the next one is addressed properly
    accepted = await world.dispatch("event")
    delivered = await world.settled(accepted.dispatch_id)

    # Then it goes out at once: the provider answered every time, it was never down
    assert delivered.state == S.DISPATCH_STATE_DELIVERED
    assert [(a.channel, a.outcome) for a in delivered.attempts] == [("webhook", "delivered")]


async def test_a_cancelled_scheduled_message_never_goes_out(world: World):
    first = await world.dispatch("promo", user="u-cancel")
    deferred = await world.dispatch("promo", user="u-cancel")
    assert deferred.decision.verdict == pb.VERDICT_DEFER

    cancelled = await world.stub.CancelDispatch(pb.CancelDispatchRequest(dispatch_id=deferred.dispatch_id))
    await world.settled(first.dispatch_id)
    await asyncio.sleep(2.5)  # past the deferred send instant
    final = (await world.stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=deferred.dispatch_id))).status

    assert cancelled.status.state == S.DISPATCH_STATE_CANCELLED
    assert final.state == S.DISPATCH_STATE_CANCELLED and not final.attempts
    assert len(world.sms_sent()) == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await world.stub.CancelDispatch(pb.CancelDispatchRequest(dispatch_id=first.dispatch_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_deferred_message_is_decided_again_and_sent_at_its_time(world: World):
    await world.dispatch("promo", user="u-later")
    deferred = await world.dispatch("promo", user="u-later")
    status = await world.settled(deferred.dispatch_id, timeout_s=10)

    assert status.state == S.DISPATCH_STATE_DELIVERED
    sent_at = status.attempts[-1].at.ToDatetime()
    assert sent_at >= deferred.decision.send_at.ToDatetime()


async def test_a_deferred_message_for_a_now_deny_listed_user_is_suppressed_at_send_time(world: World):
    await world.dispatch("promo", user="u-deny-later")
    deferred = await world.dispatch("promo", user="u-deny-later")
    await world.stub.AddListMember(pb.AddListMemberRequest(list=pb.LIST_KIND_DENY, user_id="u-deny-later"))
    status = await world.settled(deferred.dispatch_id, timeout_s=10)

    assert status.state == S.DISPATCH_STATE_SUPPRESSED
    assert "deny_listed" in status.history[-1].detail
    assert len(world.sms_sent()) == 1


async def test_escalation_stops_when_the_in_app_message_is_opened(world: World):
    accepted = await world.dispatch("nudge", message_id="nudge-open")
    waiting = await world.settled(accepted.dispatch_id)
    assert waiting.state == S.DISPATCH_STATE_WAITING_ENGAGEMENT
    assert accepted.decision.steps[0].escalate_after.seconds == 1

    await world.stub.ReportEvent(
        pb.ReportEventRequest(
            user_id="user-1", message_id="nudge-open", channel="in_app", kind=pb.EVENT_KIND_OPENED
        )
    )
    await asyncio.sleep(1.5)
    final = (await world.stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=accepted.dispatch_id))).status

    assert final.state == S.DISPATCH_STATE_DELIVERED
    assert "opened" in final.history[-1].detail
    assert world.sms_sent() == []
    inbox = await world.stub.ListInbox(pb.ListInboxRequest(inbox_id="inbox-ada"))
    assert [item.message_id for item in inbox.items] == ["nudge-open"]


async def test_escalation_sends_the_next_step_when_not_opened(world: World):
    accepted = await world.dispatch("nudge", message_id="nudge-ignored")
    await world.settled(accepted.dispatch_id)

    async def sms_went_out() -> list[str]:
        return world.sms_sent()

    await eventually(sms_went_out, 10, "the escalation SMS")
    final = await world.settled(accepted.dispatch_id)

    assert final.state == S.DISPATCH_STATE_DELIVERED
    assert [a.channel for a in final.attempts] == ["in_app", "sms"]


async def test_watch_streams_every_change_until_final(world: World):
    # The gateway answers the first attempt only once the watcher is listening, with a 500
    watching = asyncio.Event()

    async def first_fails_late(_: Received) -> web.StreamResponse:
        world.sink.handler = accept
        await asyncio.wait_for(watching.wait(), 10)
        return web.json_response({"error": "busy"}, status=500)

    world.sink.handler = first_fails_late
    accepted = await world.dispatch("otp")
    call = world.stub.WatchDispatch(pb.WatchDispatchRequest(dispatch_id=accepted.dispatch_id))
    states = [(await call.read()).status.state]
    watching.set()
    while (update := await call.read()) is not grpc.aio.EOF:
        states.append(update.status.state)

    assert states[0] in (S.DISPATCH_STATE_QUEUED, S.DISPATCH_STATE_SENDING)
    assert states[-1] == S.DISPATCH_STATE_DELIVERED
    assert S.DISPATCH_STATE_SCHEDULED in states  # the retry


async def test_webhook_is_signed(world: World):
    from smart_dispatch.channels.webhook import verify

    accepted = await world.dispatch("event", data={"order": 42})
    await world.settled(accepted.dispatch_id)
    [hook] = [r for r in world.sink.requests if r.path == "/hook"]

    assert hook.json()["message_id"] == accepted.status.message_id
    assert verify(
        "s3cret",
        hook.headers["X-SmartDispatch-Timestamp"],
        hook.body,
        hook.headers["X-SmartDispatch-Signature"],
    )


async def test_unknown_dispatch_is_not_found(world: World):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await world.stub.GetDispatch(pb.GetDispatchRequest(dispatch_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_templates_render_per_channel(world: World):
    world.sink.script.append(400)  # SMS refused: the e-mail variant goes instead
    accepted = await world.dispatch("otp", template="otp", data={"code": "482910"})
    status = await world.settled(accepted.dispatch_id)

    assert status.state == S.DISPATCH_STATE_DELIVERED
    assert world.sink.requests[0].json()["text"].strip() == "Your code is 482910"
    message = world.mailbox.message()
    assert "482910" in message["Subject"] + message.get_body(("plain",)).get_content()


async def test_a_template_without_a_variant_for_the_chosen_channel_is_rejected_at_decide_time(world: World):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await world.dispatch("otp", template="no_such_template")

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(
        "message.template: template 'no_such_template' has no 'sms' variant"
    )


async def test_stream_inbox_sees_an_in_app_message_as_it_arrives(world: World):
    stream = world.stub.StreamInbox(pb.StreamInboxRequest(inbox_id="inbox-ada"))
    first_item = asyncio.ensure_future(stream.read())
    await asyncio.sleep(0.2)  # the stream is open before the message goes out
    await world.dispatch("nudge", message_id="nudge-stream", data={"text": "Your order shipped"})
    response = await asyncio.wait_for(first_item, 10)
    stream.cancel()

    assert response.item.message_id == "nudge-stream"
    assert response.item.text == "Your order shipped"
