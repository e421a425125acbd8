"""Digests over gRPC: messages for one person and key within a window go out as ONE message
with every item (template data `items`, `count`), at the window's end or at once when full; the
same message twice is folded once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from decide_builders import decide_request
from google.protobuf import json_format
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

from tests.support.waiting import eventually

WINDOW_S = 4
RULES = f"""
categories: [comment]
rules:
  - name: comments_digest
    when: {{category: comment}}
    then: {{prefer: [in_app], digest: {{key: comments, window: {WINDOW_S}s, max_items: 3}}}}
"""


@contextlib.asynccontextmanager
async def serving(make_app, tmp_path: Path, rules: str) -> AsyncIterator[pb_grpc.SmartDispatchServiceStub]:
    """A sidecar with these rules and the in-app inbox as its only provider."""
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "rules.yaml").write_text(rules)
    providers = tmp_path / "providers.yaml"
    providers.write_text("in_app: {type: inbox}\n")
    app = make_app(rules_dir=directory, providers_file=providers, senders=2)
    async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.SmartDispatchServiceStub(channel)


@pytest.fixture
async def stub(make_app, tmp_path: Path) -> AsyncIterator[pb_grpc.SmartDispatchServiceStub]:
    async with serving(make_app, tmp_path, RULES) as running:
        yield running


async def start_of_a_window() -> None:
    """Windows are fixed (aligned to the epoch): begin where a whole one is ahead."""
    into = time.time() % WINDOW_S
    if into > 0.5:
        await asyncio.sleep(WINDOW_S - into + 0.01)


async def comment(stub, user: str, message_id: str, text: str) -> pb.DispatchResponse:
    decide = decide_request(
        "comment", user=user, message_id=message_id, addresses={"in_app": f"inbox-{user}"}
    )
    decide.message.data.update({"text": text})
    return await stub.Dispatch(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))


async def inbox(stub, user: str) -> list[pb.InboxItem]:
    return list((await stub.ListInbox(pb.ListInboxRequest(inbox_id=f"inbox-{user}"))).items)


async def test_comments_in_one_window_arrive_as_one_message_when_it_ends(stub):
    await start_of_a_window()
    first = await comment(stub, "ada", "c1", "Nice photo")
    second = await comment(stub, "ada", "c2", "Where was this?")
    again = await comment(stub, "ada", "c2", "Where was this?")

    # One digest holds both (the repeat of c2 is a duplicate), and nothing goes before the end
    assert first.dispatch_id == second.dispatch_id == again.dispatch_id and again.duplicate
    assert second.status.state == pb.DISPATCH_STATE_SCHEDULED
    assert "digested" in [r.code for r in second.decision.reasons]
    assert await inbox(stub, "ada") == []

    async def delivered() -> list[pb.InboxItem]:
        return await inbox(stub, "ada")

    [item] = await eventually(delivered, WINDOW_S + 5, "the digest")
    data = json_format.MessageToDict(item.data)
    assert (data["count"], [i["message_id"] for i in data["items"]]) == (2, ["c1", "c2"])
    assert [i["text"] for i in data["items"]] == ["Nice photo", "Where was this?"]
    assert item.text == "2 new comment messages"


async def test_a_full_digest_goes_at_once_and_the_next_message_opens_another(stub):
    await start_of_a_window()
    sent = [await comment(stub, "bob", f"b{i}", f"comment {i}") for i in range(4)]

    assert len({s.dispatch_id for s in sent[:3]}) == 1 and sent[3].dispatch_id != sent[0].dispatch_id

    async def full_one_delivered() -> list[pb.InboxItem]:
        return await inbox(stub, "bob")

    items = await eventually(full_one_delivered, 2, "the full digest, before the window ends")
    assert json_format.MessageToDict(items[0].data)["count"] == 3
    status = (await stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=sent[3].dispatch_id))).status
    assert status.state == pb.DISPATCH_STATE_SCHEDULED  # the fourth waits for the window's end


async def test_a_cancelled_digest_never_goes_and_the_next_message_opens_a_new_one(stub):
    await start_of_a_window()
    first = await comment(stub, "dee", "d1", "first")
    cancelled = await stub.CancelDispatch(pb.CancelDispatchRequest(dispatch_id=first.dispatch_id))
    later = await comment(stub, "dee", "d2", "second")

    assert cancelled.status.state == pb.DISPATCH_STATE_CANCELLED
    assert later.dispatch_id != first.dispatch_id and later.status.state == pb.DISPATCH_STATE_SCHEDULED

    async def delivered() -> list[pb.InboxItem]:
        return await inbox(stub, "dee")

    [item] = await eventually(delivered, WINDOW_S + 5, "the new digest")
    assert [i["message_id"] for i in json_format.MessageToDict(item.data)["items"]] == ["d2"]
    status = (await stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=first.dispatch_id))).status
    assert status.state == pb.DISPATCH_STATE_CANCELLED


CAPPED = """
categories: [promo]
caps:
  - {name: promo_burst, limit: 1, window: 3s}
rules:
  - name: promo_capped
    when: {category: promo}
    then: {prefer: [in_app], caps: [promo_burst], on_cap: digest}
"""


async def test_messages_over_a_cap_go_together_when_it_has_room_again(make_app, tmp_path: Path):
    # Given a cap of one promo in 3 s, whose overflow is folded into one message
    async with serving(make_app, tmp_path, CAPPED) as stub:

        async def promo(message_id: str) -> pb.DispatchResponse:
            decide = decide_request(
                "promo", user="cy", message_id=message_id, addresses={"in_app": "inbox-cy"}
            )
            decide.message.data.update({"text": message_id})
            return await stub.Dispatch(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))

        first, second, third = await promo("p1"), await promo("p2"), await promo("p3")

        # Then the first goes now; the others wait together for the cap, as one dispatch
        assert first.status.state != pb.DISPATCH_STATE_SCHEDULED
        assert second.dispatch_id == third.dispatch_id != first.dispatch_id
        assert "digest_by_cap" in [r.code for r in second.decision.reasons]

        async def two_arrived() -> list[pb.InboxItem]:
            items = list((await stub.ListInbox(pb.ListInboxRequest(inbox_id="inbox-cy"))).items)
            return items if len(items) == 2 else []

        items = await eventually(two_arrived, 10, "the promo and then the folded two")
    counts = sorted(json_format.MessageToDict(i.data).get("count", 1) for i in items)
    assert counts == [1, 2]
