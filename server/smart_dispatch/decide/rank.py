"""Ranking candidate channels. Pure.

Order: channels rules prefer (in firing order), then the recipient's own preferences, then
learned engagement (opens and clicks per delivery on that channel), then cost (the rules file's
`channels:` costs, `Learning.cost`: in-app and push nearly free, e-mail and WeChat cheap, SMS
costs money). Denied channels, and any outside an `only` list, are removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from smart_dispatch.behaviour.base import DEFAULT_HALF_LIFE_S, Behaviour
from smart_dispatch.decide.draft import PlanDraft
from smart_dispatch.rules.model import Learning

_DEFAULTS = Learning()  # the default channel costs, for callers without a ruleset


def rank_channels(
    reachable: Sequence[str],
    draft: PlanDraft,
    preferred: Sequence[str],
    behaviour: Behaviour | None = None,
    now_s: float | None = None,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    cost: Callable[[str], float] = _DEFAULTS.cost,
) -> list[str]:
    learned = behaviour or Behaviour()
    eligible = [c for c in reachable if c not in draft.deny and (draft.only is None or c in draft.only)]

    rule_ranks, own_ranks = _first_index(draft.prefer), _first_index(preferred)

    def key(channel: str) -> tuple[int, int, float, float]:
        rule_rank = rule_ranks.get(channel, len(draft.prefer))
        own_rank = own_ranks.get(channel, len(preferred))
        engagement = round(learned.stats(channel, now_s, half_life_s).engagement, 2)
        return (rule_rank, own_rank, -engagement, cost(channel))

    return sorted(eligible, key=key)


def _first_index(channels: Sequence[str]) -> dict[str, int]:
    """Each channel's first position in `channels` (as `list.index` would find it)."""
    return {channel: index for index, channel in reversed(list(enumerate(channels)))}


def fallback_channels(primary: str, ranked: Sequence[str], draft: PlanDraft) -> list[str]:
    """Channels tried after `primary` fails: the `fallback` effect's, reachable ones only."""
    if not draft.fallback:
        return []
    return [c for c in draft.fallback if c != primary and c in ranked]
