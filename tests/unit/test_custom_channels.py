"""Custom channels (`ops_chat`): declared by the providers file, then named by rules (through the
guarded compile's child process too), requests, events and preferences; unknown otherwise, with
the file and line."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from smart_dispatch.decide.facts import reachable_channels
from smart_dispatch.decide.validate import validate_request
from smart_dispatch.domain import (
    KNOWN_CHANNELS,
    DecideRequest,
    Message,
    Recipient,
    custom_channels,
    known_channels,
    set_custom_channels,
)
from smart_dispatch.errors import InvalidRequestError, RuleFileError
from smart_dispatch.events import ReportedEvent, validate_event
from smart_dispatch.rules.active import ActiveRules
from smart_dispatch.rules.loader import parse_ruleset

RULES = """categories: [alert]
rules:
  - name: alerts_to_chat
    when: {category: alert}
    then:
      prefer: [ops_chat, email]
"""


@pytest.fixture(autouse=True)
def no_custom_channels() -> Iterator[None]:
    set_custom_channels(())
    yield
    set_custom_channels(())


def test_declared_channels_follow_the_built_in_ones_and_replace_the_previous_ones() -> None:
    set_custom_channels(["ops_chat", "pager", "ops_chat", "sms"])
    assert known_channels() == (*KNOWN_CHANNELS, "ops_chat", "pager")
    assert custom_channels() == ("ops_chat", "pager")
    set_custom_channels(["team_bot"])
    assert custom_channels() == ("team_bot",)
    with pytest.raises(ValueError, match="not a channel name"):
        set_custom_channels(["Ops Chat"])


def test_a_rule_naming_an_undeclared_channel_fails_with_file_and_line() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_ruleset({"alerts.yaml": RULES})

    assert (caught.value.file, caught.value.line) == ("alerts.yaml", 6)
    assert "unknown channel 'ops_chat'" in caught.value.problem and "providers file" in caught.value.problem


async def test_a_declared_channel_loads_through_the_guarded_compile(tmp_path: Path) -> None:
    (tmp_path / "alerts.yaml").write_text(RULES)
    set_custom_channels(["ops_chat"])
    rules = ActiveRules(tmp_path)  # the child process that tries the ruleset knows ops_chat too

    assert await rules.load_async()
    [rule] = rules.current().ruleset.rules
    assert rule.effects.prefer == ("ops_chat", "email")


def test_requests_and_events_may_name_a_declared_channel() -> None:
    message = Message(id="m-1", category="alert", channels=("ops_chat",))
    recipient = Recipient(user_id="oncall", addresses={"ops_chat": "ops", "email": "a@example.com"})
    with pytest.raises(InvalidRequestError) as caught:
        validate_request(DecideRequest(message, recipient), frozenset({"alert"}))
    assert caught.value.field == "message.channels"

    set_custom_channels(["ops_chat"])
    validate_request(DecideRequest(message, recipient), frozenset({"alert"}))
    assert reachable_channels(message, recipient) == ("ops_chat",)
    validate_event(ReportedEvent("oncall", "delivered", datetime.now(UTC), "m-1", "ops_chat"))
