"""Splitting a ruleset into engine rulesets inside durable-rules' limits, on the real engine."""

from __future__ import annotations

import pytest
from smart_dispatch.errors import RuleFileError
from smart_dispatch.rules.engine import CompiledRules
from smart_dispatch.rules.loader import parse_ruleset


def ruleset(lines: list[str]) -> str:
    return "categories: [otp]\nrules:\n" + "\n".join(lines) + "\n"


def distinct_values(count: int) -> str:
    return ruleset(
        [f"  - {{name: r{i}, when: {{category: otp, labels.k: v{i}}}, then: {{}}}}" for i in range(count)]
    )


@pytest.mark.parametrize(("rules", "shards"), [(511, 1), (512, 2), (1100, 3)])
def test_distinct_conditions_after_a_shared_one_fill_a_shard_up_to_511(rules: int, shards: int):
    compiled = CompiledRules(parse_ruleset({"r.yaml": distinct_values(rules)}))
    try:
        assert compiled.shards == shards
        # every rule still fires for its own value, and only then
        for index in (0, rules // 2, rules - 1):
            assert compiled.matches({"category": "otp", "labels": {"k": f"v{index}"}}) == [f"r{index}"]
        assert compiled.matches({"category": "otp", "labels": {"k": "none"}}) == []
    finally:
        compiled.close()


def test_absence_conditions_side_by_side_stay_under_the_evaluation_stack():
    # 64 `$nex` conditions after one shared condition overflowed the engine's 64-entry stack
    text = ruleset(
        [
            f"  - {{name: r{i}, when: {{category: otp, $nex: {{labels.k{i}: 1}}}}, then: {{}}}}"
            for i in range(200)
        ]
    )
    compiled = CompiledRules(parse_ruleset({"r.yaml": text}))
    try:
        assert compiled.shards > 1
        assert len(compiled.matches({"category": "otp", "labels": {}})) == 200
        assert "r7" not in compiled.matches({"category": "otp", "labels": {"k7": "x"}})
    finally:
        compiled.close()


def test_comparisons_that_may_all_match_are_split_too():
    text = ruleset(
        [f"  - {{name: r{i}, when: {{$gt: {{user.score: {i}}}}}, then: {{}}}}" for i in range(150)]
    )
    compiled = CompiledRules(parse_ruleset({"r.yaml": text}))
    try:
        assert compiled.matches({"user": {"score": 1000}}) == [f"r{i}" for i in range(150)]
        assert compiled.matches({"user": {"score": 10}}) == [f"r{i}" for i in range(10)]
    finally:
        compiled.close()


def test_more_than_255_rules_on_one_condition_are_split():
    text = ruleset([f"  - {{name: r{i}, when: {{category: otp}}, then: {{}}}}" for i in range(300)])
    compiled = CompiledRules(parse_ruleset({"r.yaml": text}))
    try:
        assert compiled.shards == 2
        assert len(compiled.matches({"category": "otp"})) == 300
    finally:
        compiled.close()


def test_a_rule_over_a_limit_on_its_own_is_rejected_at_its_line_naming_the_limit():
    alternatives = ", ".join(f"{{labels.k: v{i}}}" for i in range(600))
    text = ruleset(
        [
            "  - {name: fine, when: {category: otp}, then: {}}",
            f"  - name: wide\n    when: {{$or: [{alternatives}]}}\n    then: {{}}",
        ]
    )
    with pytest.raises(RuleFileError) as info:
        CompiledRules(parse_ruleset({"r.yaml": text}))
    assert (info.value.file, info.value.line) == ("r.yaml", 4)
    assert "more than 511 distinct conditions" in info.value.problem
