"""kill -9 of a sidecar while 2,000 accepted messages are being delivered: after a restart on
the same Redis every message is delivered exactly once at the sink."""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from decide_builders import decide_request
from google.protobuf import json_format
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

from tests.support.redis_servers import RedisServer
from tests.support.sidecar import address_of, spawn, stop
from tests.support.sinks import HttpSink, Received
from tests.support.waiting import eventually

pytestmark = pytest.mark.redis
MESSAGES = 2000
SENDERS = 8
RULES = "categories: [event]\nrules:\n  - {name: hook, when: {category: event}, then: {prefer: [webhook]}}\n"


class DedupingReceiver:
    """A webhook receiver that, like real providers, applies each Idempotency-Key once."""

    def __init__(self) -> None:
        self.applied: dict[str, set[str]] = defaultdict(set)  # message id -> idempotency keys
        self.raw_posts = 0
        self.arrivals: list[float] = []  # when each post arrived (monotonic)

    async def __call__(self, request: Received) -> web.StreamResponse:
        self.raw_posts += 1
        self.arrivals.append(request.at)
        await asyncio.sleep(0.004)  # a provider that takes a few ms, so sends are in flight
        self.applied[request.json()["message_id"]].add(request.headers["Idempotency-Key"])
        return web.json_response({"id": request.headers["Idempotency-Key"]})


async def kill_9_mid_delivery(
    tmp_path: Path, providers_yaml: str, messages: int, receiver: DedupingReceiver
) -> None:
    """Dispatch `messages` through a sidecar on a private Redis, kill -9 it once 50 are
    delivered, start another on the same Redis, and wait until every message arrived (plus a
    claim timeout, for anything that should not)."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "event.yaml").write_text(RULES)
    (tmp_path / "providers.yaml").write_text(providers_yaml)
    sink = await HttpSink(receiver).start()
    env = {"HOOK_SECRET": "s", "SD_CLAIM_TIMEOUT_S": "2"}
    with RedisServer.start_new() as redis_server:
        args = (
            "--rules", str(tmp_path / "rules"),
            "--store", redis_server.url,
            "--providers", str(tmp_path / "providers.yaml"),
            "--senders", str(SENDERS),
        )  # fmt: skip
        first = spawn(*args, env=env)
        second = None
        try:
            port = address_of(first)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.SmartDispatchServiceStub(channel)
                semaphore = asyncio.Semaphore(64)

                async def dispatch(i: int) -> pb.DispatchResponse:
                    decide = decide_request(
                        "event", user=f"u{i}", message_id=f"m{i}", addresses={"webhook": f"{sink.url}/hook"}
                    )
                    async with semaphore:
                        return await stub.Dispatch(
                            pb.DispatchRequest(message=decide.message, recipient=decide.recipient)
                        )

                accepted = await asyncio.gather(*(dispatch(i) for i in range(messages)))
            assert len({a.dispatch_id for a in accepted}) == messages

            # When the sidecar dies mid-delivery, without any chance to clean up
            async def some_delivered() -> bool:
                return len(receiver.applied) >= 50

            await eventually(some_delivered, 30, "first deliveries")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            assert len(receiver.applied) < messages, (
                "everything was delivered before the kill: nothing tested"
            )

            # And a new sidecar starts on the same Redis
            second = spawn(*args, env=env)
            address_of(second)

            async def all_delivered() -> bool:
                return len(receiver.applied) >= messages

            await eventually(all_delivered, 120, "every message delivered after the restart")
            await asyncio.sleep(2.5)  # a claim timeout more: nothing else must arrive
        finally:
            for process in (first, second):
                if process is not None:
                    stop(process)
            await sink.stop()


async def test_kill_9_while_delivering_then_restart_delivers_every_message_exactly_once(
    require_redis_binary, tmp_path: Path
):
    receiver = DedupingReceiver()
    await kill_9_mid_delivery(
        tmp_path, "webhook: {type: webhook, secret_env: HOOK_SECRET, timeout_s: 5}\n", MESSAGES, receiver
    )

    # Then every message was applied exactly once, each with one idempotency key
    assert sorted(receiver.applied) == sorted(f"m{i}" for i in range(MESSAGES))
    assert all(len(keys) == 1 for keys in receiver.applied.values())
    # Re-sends after the crash are at most the sends that were in flight when it died
    assert receiver.raw_posts - MESSAGES <= SENDERS


async def test_kill_9_during_a_rate_limited_backlog_loses_nothing_and_keeps_the_rate(
    require_redis_binary, tmp_path: Path
):
    # Given a provider allowed 100 sends a second (bursts of 10), 400 messages queued for it
    receiver = DedupingReceiver()
    providers = "webhook: {type: webhook, secret_env: HOOK_SECRET, timeout_s: 5, rate: 100/s, burst: 10}\n"
    await kill_9_mid_delivery(tmp_path, providers, 400, receiver)

    # Then every message was applied exactly once, and never faster than the rate
    assert sorted(receiver.applied) == sorted(f"m{i}" for i in range(400))
    assert all(len(keys) == 1 for keys in receiver.applied.values())
    arrivals = sorted(receiver.arrivals)
    for i in range(len(arrivals) - 110):  # any 110 consecutive sends span at least a second
        assert arrivals[i + 109] - arrivals[i] >= 0.95


async def test_kill_9_during_a_digest_window_then_restart_sends_the_digest_once(
    require_redis_binary, tmp_path: Path
):
    # Given comments collected into a 3 s digest on Redis, and the sidecar killed before it goes
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "comments.yaml").write_text(
        "categories: [comment]\nrules:\n  - name: digest\n    when: {category: comment}\n"
        "    then: {prefer: [in_app], digest: {key: comments, window: 3s, max_items: 50}}\n"
    )
    (tmp_path / "providers.yaml").write_text("in_app: {type: inbox}\n")
    with RedisServer.start_new() as redis_server:
        args = ("--rules", str(tmp_path / "rules"), "--store", redis_server.url,
                "--providers", str(tmp_path / "providers.yaml"))  # fmt: skip
        first = spawn(*args)
        second = None
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{address_of(first)}") as channel:
                stub = pb_grpc.SmartDispatchServiceStub(channel)
                accepted = []
                for i in range(3):
                    decide = decide_request(
                        "comment", user="ada", message_id=f"c{i}", addresses={"in_app": "inbox-ada"}
                    )
                    accepted.append(
                        await stub.Dispatch(
                            pb.DispatchRequest(message=decide.message, recipient=decide.recipient)
                        )
                    )
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            digests = {a.dispatch_id for a in accepted}

            # When a new sidecar starts on the same Redis
            second = spawn(*args)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{address_of(second)}") as channel:
                stub = pb_grpc.SmartDispatchServiceStub(channel)

                async def delivered() -> list[pb.InboxItem]:
                    return list((await stub.ListInbox(pb.ListInboxRequest(inbox_id="inbox-ada"))).items)

                items = await eventually(delivered, 20, "the digest after the restart")
                await asyncio.sleep(1.0)
                items = await delivered()
        finally:
            for process in (first, second):
                if process is not None:
                    stop(process)

    # Then the three comments (possibly across two windows) arrive, each exactly once
    carried = [i["message_id"] for item in items for i in json_format.MessageToDict(item.data)["items"]]
    assert sorted(carried) == ["c0", "c1", "c2"]
    assert len(items) == len(digests)
