"""Protobuf conversion of dispatches."""

from __future__ import annotations

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.api.convert import timestamp
from smart_dispatch.dispatch.model import DispatchRecord, DispatchState
from smart_dispatch.inbox.base import InboxItem

STATES = {state: pb.DispatchState.Value(f"DISPATCH_STATE_{state.name}") for state in DispatchState}


def dispatch_status(record: DispatchRecord) -> pb.DispatchStatus:
    out = pb.DispatchStatus(
        dispatch_id=record.dispatch_id,
        message_id=record.message.id,
        user_id=record.recipient.user_id,
        state=STATES[record.state],
        step_index=record.step_index,
        created_at=timestamp(record.created_at),
        dead_lettered=record.dead_lettered,
        ruleset_version=record.ruleset_version,
    )
    for step in record.steps:
        out.steps.add(channel=step.channel, address=step.address, send_at=timestamp(step.send_at))
    if record.send_at is not None:
        out.send_at.CopyFrom(timestamp(record.send_at))
    for a in record.attempts:
        out.attempts.add(
            step=a.step,
            channel=a.channel,
            provider=a.provider,
            number=a.number,
            at=timestamp(a.at),
            outcome=a.outcome,
            error=a.error,
            idempotency_key=a.idempotency_key,
            provider_message_id=a.provider_message_id,
        )
    for change in record.history:
        out.history.add(at=timestamp(change.at), state=STATES[change.state], detail=change.detail)
    for reason in record.reasons:
        out.reasons.add(code=reason.code, rule=reason.rule, detail=reason.detail)
    return out


def inbox_item(item: InboxItem) -> pb.InboxItem:
    out = pb.InboxItem(
        id=item.id,
        dispatch_id=item.dispatch_id,
        message_id=item.message_id,
        title=item.title,
        text=item.text,
        created_at=timestamp(item.created_at),
    )
    out.data.update(dict(item.data))
    return out
