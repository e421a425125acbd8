"""Later plan steps (fallback, escalation) are decided again for their channel as they go: the
deny list, quiet hours and that channel's caps apply to them as to a first send. A real server,
an HTTP SMS gateway and the in-app inbox on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

from tests.support.sinks import HttpSink
from tests.support.waiting import eventually

RULES = """
categories: [nudge]
caps:
  - {name: sms_daily, limit: 1, window: 24h, channel: sms}
rules:
  - name: nudge
    when: {category: nudge}
    then:
      prefer: [in_app, sms]
      fallback: [sms]
      escalate_after: 1s
      caps: [sms_daily]
      on_cap: defer
"""
S = pb.DispatchState


@dataclass
class Sidecar:
    stub: pb_grpc.SmartDispatchServiceStub
    sms: HttpSink
    rules: Path

    async def nudge(self, user: str, message_id: str) -> str:
        addresses = {"sms": "+15550100", "in_app": f"inbox-{user}"}
        decide = decide_request(
            "nudge", user=user, message_id=message_id, addresses=addresses, timezone="UTC"
        )
        accepted = await self.stub.Dispatch(
            pb.DispatchRequest(message=decide.message, recipient=decide.recipient)
        )
        return accepted.dispatch_id

    async def status(self, dispatch_id: str) -> pb.DispatchStatus:
        return (await self.stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=dispatch_id))).status

    async def after_escalation(self, dispatch_id: str, timeout_s: float = 10.0) -> pb.DispatchStatus:
        """The status once the escalation step was dealt with (sent, deferred or dropped)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = await self.status(dispatch_id)
            decided_again = any("decided again" in h.detail for h in status.history)
            deferred = decided_again and status.state == S.DISPATCH_STATE_SCHEDULED
            if status.attempts and (status.state == S.DISPATCH_STATE_DELIVERED or deferred):
                return status
            await asyncio.sleep(0.05)
        raise AssertionError(f"escalation of {dispatch_id} not dealt with: {status}")

    async def serve(self, rules: str) -> None:
        """Replace the rules file and wait until the sidecar decides with it."""
        before = (await self.stub.Decide(decide_request("nudge", dry_run=True))).ruleset_version
        (self.rules / "rules.yaml").write_text(rules)
        deadline = time.monotonic() + 10
        while (await self.stub.Decide(decide_request("nudge", dry_run=True))).ruleset_version == before:
            assert time.monotonic() < deadline, "the rules were not reloaded"
            await asyncio.sleep(0.05)

    def sms_sent(self) -> int:
        return sum(1 for r in self.sms.requests if r.path == "/sms")


@pytest.fixture
async def sidecar(make_app, tmp_path: Path) -> AsyncIterator[Sidecar]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(RULES)
    sms = await HttpSink().start()
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f'sms: {{type: http_sms, url: "{sms.url}/sms", timeout_s: 2}}\nin_app: {{type: inbox}}\n'
    )
    app = make_app(rules_dir=rules, providers_file=providers, senders=2, rules_poll_s=0.1)
    async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield Sidecar(pb_grpc.SmartDispatchServiceStub(channel), sms, rules)
    await sms.stop()


async def test_an_escalation_counts_against_its_channels_cap_and_waits_when_it_is_full(sidecar: Sidecar):
    # Given two nudges for one person, 1 SMS a day allowed, neither opened in the app
    first = await sidecar.nudge("ada", "n1")
    second = await sidecar.nudge("ada", "n2")

    one, two = await sidecar.after_escalation(first), await sidecar.after_escalation(second)

    # Then one escalation SMS goes out, and the other waits for the cap: a day later
    states = sorted([one.state, two.state])
    assert states == sorted([S.DISPATCH_STATE_DELIVERED, S.DISPATCH_STATE_SCHEDULED])
    waiting = one if one.state == S.DISPATCH_STATE_SCHEDULED else two
    assert "sms decided again: deferred" in waiting.history[-1].detail
    hours = (waiting.send_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)).total_seconds() / 3600
    assert 23 < hours <= 24
    assert sidecar.sms_sent() == 1


async def test_an_escalation_for_a_person_deny_listed_meanwhile_is_not_sent(sidecar: Sidecar):
    dispatch_id = await sidecar.nudge("bob", "n3")
    await sidecar.stub.AddListMember(pb.AddListMemberRequest(list=pb.LIST_KIND_DENY, user_id="bob"))

    final = await sidecar.after_escalation(dispatch_id)

    assert final.state == S.DISPATCH_STATE_DELIVERED  # by the in-app step
    assert [a.channel for a in final.attempts] == ["in_app"]
    assert "sms decided again: deny_listed" in final.history[-1].detail
    assert sidecar.sms_sent() == 0


async def test_an_escalation_that_falls_in_quiet_hours_waits_for_them_to_end(sidecar: Sidecar):
    # Given a nudge delivered in the app with a 5 s escalation window, and, by the time the
    # escalation goes, rules with quiet hours from an hour ago to two hours from now (UTC)
    slow = RULES.replace("escalate_after: 1s", "escalate_after: 5s")
    await sidecar.serve(slow)
    dispatch_id = await sidecar.nudge("cy", "n4")

    async def in_app_delivered() -> bool:
        return (await sidecar.status(dispatch_id)).state == S.DISPATCH_STATE_WAITING_ENGAGEMENT

    await eventually(in_app_delivered, 10, "the in-app step")
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=2)).strftime("%H:%M")
    await sidecar.serve(slow + f'      quiet_hours: {{from: "{start}", to: "{end}", policy: defer}}\n')

    # When the escalation goes
    final = await sidecar.after_escalation(dispatch_id)

    # Then it is decided again under the quiet hours, and waits for their end
    assert final.state == S.DISPATCH_STATE_SCHEDULED
    assert final.send_at.ToDatetime(tzinfo=UTC).strftime("%H:%M") == end
    assert sidecar.sms_sent() == 0
