"""Learned channel choice: which of the channels the rules allow a person is most likely to
engage on, for what it costs. Pure but for the random source it is given.

Each candidate channel has a Beta posterior of P(engage), the share of attempts (sends or
deliveries) that were opened or clicked. Its prior is the population's rate for the message's
category and that channel (all people, decayed counts; shrunk towards the category's rate on
all channels) worth `prior_weight` observations; the
person's own decayed counts are added to it, so a new person starts from what works for everyone
and moves towards their own data. With `explore: thompson` a rate is sampled from each
posterior (channels with little data get tried), with `none` the posterior mean is used.

Objectives: `value` maximises rate x value(category) - cost(channel); `cheapest_within` takes
the cheapest channel whose rate is at least `margin` x the best rate.

A cold start leaves the rules' order as it is: while the person was never sent anything on a
candidate channel and everybody's sends of the category on them add up to fewer than
`prior_weight`, there is nothing to learn from yet, and sampling flat priors would pick channels
at random. Those first sends inform the population prior.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smart_dispatch.behaviour.base import SEGMENT_MARK, Behaviour, ChannelStats, Population
from smart_dispatch.domain import known_channels
from smart_dispatch.rules.model import Choose, Learning


@dataclass(frozen=True, slots=True)
class ChannelScore:
    """One candidate as the choice saw it (all numbers as of the decision)."""

    channel: str
    mean: float  # posterior mean of P(engage)
    sample: float  # the rate used: a Thompson sample, or the mean
    cost: float
    score: float  # what the objective ranks by (higher is better)
    attempts: float  # the person's own decayed attempts on the channel
    engagements: float  # ... and opens or clicks
    prior_rate: float  # the population's rate the prior is centred on


#: observations a segment's own rate needs to weigh as much as its category's
SEGMENT_WEIGHT = 10.0
_UNSAFE = str.maketrans({SEGMENT_MARK: "_", ":": "_"})


def prior_key(category: str, attributes: Mapping[str, Any], segment_by: str) -> str:
    """What a message's prior is keyed by: its category, or with `segment_by` set and the
    recipient having that attribute, `category@value` (the value cut to 32 characters)."""
    if not segment_by:
        return category
    value = attributes.get(segment_by)
    if value is None or isinstance(value, dict | list | bool):
        return category
    text = str(value)[:32].translate(_UNSAFE)
    return f"{category}{SEGMENT_MARK}{text}" if text else category


def prior_rate(
    population: Population, category: str, channel: str, now_s: float, half_life_s: float
) -> float:
    """The population's rate for `channel` in `category`, shrunk towards the category's rate on
    every channel (two observations' worth): a channel nobody was sent on is as good as the
    average channel, not a coin flip. For a segment's key (`marketing@app`), the segment's own
    rate shrunk towards that (`SEGMENT_WEIGHT` observations' worth). Computed once per
    population copy (see `Population`)."""
    key = ("rate", category, channel, half_life_s)
    known = population.memo.get(key)
    if known is not None:
        return known  # type: ignore[no-any-return]
    base, mark, _ = category.partition(SEGMENT_MARK)
    if mark:
        everyone = prior_rate(population, base, channel, now_s, half_life_s)
        own = population.stats(category, channel, now_s, half_life_s)
        rate = population.memo[key] = (own.engaged + SEGMENT_WEIGHT * everyone) / (own.tried + SEGMENT_WEIGHT)
        return rate
    engaged = tried = 0.0
    mine = ChannelStats()
    for candidate in known_channels():
        stats = population.stats(category, candidate, now_s, half_life_s)
        engaged, tried = engaged + stats.engaged, tried + stats.tried
        if candidate == channel:
            mine = stats
    overall = (engaged + 1.0) / (tried + 2.0)
    rate = population.memo[key] = (mine.engaged + 2.0 * overall) / (mine.tried + 2.0)
    return rate


def has_data(
    candidates: Sequence[str],
    behaviour: Behaviour,
    population: Population,
    category: str,
    learning: Learning,
    now_s: float,
) -> bool:
    """Whether there is something to learn from: this person's attempts on a candidate, or
    everybody's in `category` worth the prior's weight."""
    half_life = learning.half_life_s
    if any(behaviour.stats(channel, now_s, half_life).tried > 0 for channel in candidates):
        return True
    key = ("tried", category, tuple(candidates), half_life)
    everyone: float | None = population.memo.get(key)
    if everyone is None:  # once per population copy
        everyone = population.memo[key] = sum(
            population.stats(category, channel, now_s, half_life).tried for channel in candidates
        )
    return everyone >= learning.prior_weight


def posterior(own: ChannelStats, rate: float, weight: float) -> tuple[float, float]:
    """(alpha, beta) of P(engage): the population `rate` worth `weight` observations, plus the
    person's engagements and non-engaged attempts. An unsubscribe from the channel weighs as
    much as the whole prior against it: a person who said no is not asked again soon."""
    alpha = weight * rate + own.engaged
    beta = weight * (1.0 - rate) + max(0.0, own.tried - own.engaged) + weight * own.unsubscribed
    return alpha, beta


def score_channels(
    candidates: Sequence[str],
    behaviour: Behaviour,
    population: Population,
    category: str,
    learning: Learning,
    choose: Choose,
    now_s: float,
    rng: random.Random,
) -> list[ChannelScore]:
    """Every candidate scored, best first (ties keep the candidates' order)."""
    value = learning.value(category.partition(SEGMENT_MARK)[0])  # a prior key may carry a segment
    half_life = learning.half_life_s
    scored: list[ChannelScore] = []
    for channel in candidates:
        own = behaviour.stats(channel, now_s, half_life)
        rate = prior_rate(population, category, channel, now_s, half_life)
        alpha, beta = posterior(own, rate, learning.prior_weight)
        mean = alpha / (alpha + beta)
        sample = rng.betavariate(alpha, beta) if choose.explore == "thompson" else mean
        cost = learning.cost(channel)
        score = sample * value - cost
        scored.append(ChannelScore(channel, mean, sample, cost, score, own.tried, own.engaged, rate))
    if choose.objective == "cheapest_within" and scored:
        best = max(s.sample for s in scored)
        within = [s for s in scored if s.sample >= choose.margin * best]
        # cheapest first among those within the margin (then by rate), the rest by rate
        ordered = sorted(within, key=lambda s: (s.cost, -s.sample))
        ordered += sorted((s for s in scored if s not in within), key=lambda s: -s.sample)
        return ordered
    return sorted(scored, key=lambda s: -s.score)


def explain(score: ChannelScore, objective: str) -> str:
    return (
        f"{score.channel}: P(engage) mean {score.mean:.3f}, used {score.sample:.3f} "
        f"(own {score.engagements:.1f}/{score.attempts:.1f}, prior {score.prior_rate:.3f}), "
        f"cost {score.cost:g}, {objective} score {score.score:.4f}"
    )
