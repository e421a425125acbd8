"""The durable-rules adapter (`CompiledRules`) and the serving version (`compile_ruleset`, `ActiveRules`).

Rulesets evaluated in this process carry a catch-all rule (`always`, lowest priority) so every
evaluation is "handled" by the engine: an evaluation that matches NO rule followed by
`delete_state` frees uninitialised memory inside durable-rules (see
`test_no_rule_matching_gives_an_empty_list_also_across_reloads`), which can kill the whole test
process. The behaviour of non-matching evaluations is therefore checked in a subprocess.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path

import pytest
from smart_dispatch.errors import NotReadyError, RuleFileError
from smart_dispatch.rules.active import ActiveRules, compile_ruleset
from smart_dispatch.rules.engine import MEMO_SIZE, CompiledRules, EngineError, project
from smart_dispatch.rules.loader import parse_ruleset

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"

ALWAYS = """\
  - name: always
    priority: 65535
    when: {}
    then: {}
"""

Compile = Callable[[str], CompiledRules]


@pytest.fixture
def compile_rules() -> Iterator[Compile]:
    """Compile `rules:` YAML text (plus the catch-all rule); every ruleset is closed afterwards."""
    made: list[CompiledRules] = []

    def make(rules_yaml: str) -> CompiledRules:
        text = "rules:\n" + textwrap.indent(textwrap.dedent(rules_yaml), "  ") + ALWAYS
        compiled = CompiledRules(parse_ruleset({"rules.yaml": text}))
        made.append(compiled)
        return compiled

    yield make
    for compiled in made:
        compiled.close()


def _run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter: a crash inside the C engine must not kill pytest."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- firing -------------------------------------------------------------------------------------


def test_every_matching_rule_fires_in_priority_order(compile_rules):
    # Given four rules that all match an OTP message, written out of priority order
    compiled = compile_rules("""\
        - {name: late, priority: 30, when: {category: otp}, then: {}}
        - {name: early_first, priority: 10, when: {category: otp}, then: {}}
        - {name: middle, priority: 20, when: {category: otp}, then: {}}
        - {name: early_second, priority: 10, when: {category: otp}, then: {}}
        - {name: other_category, priority: 0, when: {category: alert}, then: {}}
        """)

    # When an OTP fact is evaluated
    fired = compiled.matches({"category": "otp"})

    # Then all of them fired (not only the first), by priority, ties in file order
    assert fired == ["early_first", "early_second", "middle", "late", "always"]


_CONDITIONS = """\
- {name: vip, when: {user.vip: true}, then: {}}
- {name: has_activity, when: {$ex: {user.days_since_active: 1}}, then: {}}
- {name: no_activity, when: {$nex: {user.days_since_active: 1}}, then: {}}
- name: otp_or_alert
  when: {$or: [{category: otp}, {category: alert}]}
  then: {}
- {name: welcome_exact, when: {$mt: {message.template: welcome}}, then: {}}
- {name: welcome_any, when: {$mt: {message.template: "welcome.*"}}, then: {}}
- {name: below_3, when: {$lt: {user.days_since_active: 3}}, then: {}}
- {name: at_most_3, when: {$lte: {user.days_since_active: 3}}, then: {}}
- {name: above_3, when: {$gt: {user.days_since_active: 3}}, then: {}}
- {name: at_least_3, when: {$gte: {user.days_since_active: 3}}, then: {}}
- {name: not_german, when: {$neq: {user.locale: de}}, then: {}}
- {name: sms_reachable, when: {reachable.sms: true}, then: {}}
- {name: promo_label, when: {labels.kind: promo}, then: {}}
"""


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({}, ["no_activity"]),
        ({"user": {"vip": True}}, ["vip", "no_activity"]),
        ({"user": {"vip": False}}, ["no_activity"]),
        ({"category": "otp"}, ["no_activity", "otp_or_alert"]),
        ({"category": "alert"}, ["no_activity", "otp_or_alert"]),
        ({"category": "marketing"}, ["no_activity"]),
        ({"message": {"template": "welcome"}}, ["no_activity", "welcome_exact", "welcome_any"]),
        # $mt is a full match: "welcome" does not match a longer template
        ({"message": {"template": "welcome_back"}}, ["no_activity", "welcome_any"]),
        ({"message": {"template": "say_welcome"}}, ["no_activity"]),
        ({"user": {"days_since_active": 2.5}}, ["has_activity", "below_3", "at_most_3"]),
        ({"user": {"days_since_active": 3}}, ["has_activity", "at_most_3", "at_least_3"]),
        ({"user": {"days_since_active": 3.01}}, ["has_activity", "above_3", "at_least_3"]),
        ({"user": {"days_since_active": 0}}, ["has_activity", "below_3", "at_most_3"]),
        ({"user": {"locale": "de"}}, ["no_activity"]),
        ({"user": {"locale": "fr"}}, ["no_activity", "not_german"]),
        ({"reachable": {"sms": True, "email": False}}, ["no_activity", "sms_reachable"]),
        ({"reachable": {"sms": False}}, ["no_activity"]),
        ({"labels": {"kind": "promo", "campaign": "spring"}}, ["no_activity", "promo_label"]),
        ({"labels": {"kind": "news"}}, ["no_activity"]),
    ],
    ids=lambda value: repr(value) if isinstance(value, dict) else None,
)
def test_condition_operators(compile_rules, facts, expected):
    compiled = compile_rules(_CONDITIONS)
    assert compiled.matches(facts) == [*expected, "always"]


def test_comparisons_and_neq_are_false_when_the_property_is_missing(compile_rules):
    compiled = compile_rules("""\
        - {name: below, when: {$lt: {user.score: 5}}, then: {}}
        - {name: above, when: {$gt: {user.score: 5}}, then: {}}
        - {name: not_de, when: {$neq: {user.locale: de}}, then: {}}
        """)
    assert compiled.matches({"user": {"vip": True}}) == ["always"]


def test_multi_key_shorthand_needs_every_pair(compile_rules):
    compiled = compile_rules("""\
        - name: marketing_vip
          when: {category: marketing, user.vip: true}
          then: {}
        """)
    assert compiled.matches({"category": "marketing", "user": {"vip": True}}) == ["marketing_vip", "always"]
    assert compiled.matches({"category": "marketing", "user": {"vip": False}}) == ["always"]
    assert compiled.matches({"category": "otp", "user": {"vip": True}}) == ["always"]


@pytest.mark.timeout(10)
def test_a_rule_with_an_empty_condition_matches_everything_without_looping(compile_rules):
    # The session's own state object would match an unguarded empty condition forever.
    compiled = compile_rules("""\
        - {name: anything, priority: 5, when: {}, then: {}}
        """)
    for facts in ({}, {"category": "otp"}, {"user": {"vip": False}, "labels": {"a": "b"}}):
        assert compiled.matches(facts) == ["anything", "always"]


# --- facts projection ---------------------------------------------------------------------------


def test_a_fact_with_hundreds_of_unrelated_attributes_evaluates(compile_rules):
    # Given a person with 500 attributes (durable-rules caps a fact at ~252 flattened properties)
    compiled = compile_rules("""\
        - {name: vip, when: {user.vip: true}, then: {}}
        """)
    user = {f"attribute_{i}": i for i in range(500)}

    # When the rules only reference user.vip, only that is sent to the engine
    assert compiled.matches({"category": "otp", "user": {**user, "vip": True}}) == ["vip", "always"]
    assert compiled.matches({"category": "otp", "user": {**user, "vip": False}}) == ["always"]


def test_project_copies_only_referenced_scalar_paths():
    facts = {
        "category": "otp",
        "user": {"vip": True, "locale": "de", "address": {"city": "Berlin"}},
        "labels": {"kind": "promo"},
    }
    paths = [["category"], ["user", "vip"], ["user", "address"], ["user", "missing"], ["labels", "kind", "x"]]

    assert project(facts, paths) == {"category": "otp", "user": {"vip": True}}
    assert project(facts, []) == {}


# --- sessions and lifecycle ---------------------------------------------------------------------


def test_three_thousand_evaluations_in_a_row_succeed(compile_rules):
    # Each evaluation uses its own session, deleted afterwards; the engine allows 1,024 live ones.
    compiled = compile_rules("""\
        - {name: otp, priority: 1, when: {category: otp}, then: {}}
        - {name: alert, priority: 2, when: {category: alert}, then: {}}
        """)
    results = [compiled.matches({"category": ("otp", "alert")[i % 2]}) for i in range(3000)]
    assert results[::2] == [["otp", "always"]] * 1500
    assert results[1::2] == [["alert", "always"]] * 1500


def test_two_versions_of_the_same_ruleset_work_side_by_side_and_close_frees_them():
    text = "rules:\n  - {name: otp, when: {category: otp}, then: {}}\n" + ALWAYS
    ruleset = parse_ruleset({"rules.yaml": text})

    # Given the same content compiled twice (as a reload of unchanged files would)
    old, new = CompiledRules(ruleset), CompiledRules(ruleset)
    try:
        assert old.matches({"category": "otp"}) == new.matches({"category": "otp"}) == ["otp", "always"]
    finally:
        old.close()
        new.close()

    # Then closed versions refuse work, closing twice is harmless, and it compiles again
    with pytest.raises(EngineError, match="closed"):
        old.matches({"category": "otp"})
    old.close()
    again = CompiledRules(ruleset)
    try:
        assert again.matches({"category": "otp"}) == ["otp", "always"]
    finally:
        again.close()


def test_reloads_with_matching_facts_do_not_crash_the_process():
    result = _run_isolated("""
        from smart_dispatch.rules.engine import CompiledRules
        from smart_dispatch.rules.loader import parse_ruleset

        text = "rules:\\n  - {name: otp, when: {category: otp}, then: {}}\\n"
        for _ in range(300):
            compiled = CompiledRules(parse_ruleset({"f.yaml": text}))
            assert compiled.matches({"category": "otp"}) == ["otp"]
            compiled.close()
        print("survived")
    """)
    assert (result.returncode, result.stdout.strip()) == (0, "survived"), result.stderr[-2000:]


def test_no_rule_matching_gives_an_empty_list_also_across_reloads():
    # Given a ruleset that does not cover marketing, compiled afresh as reloads do
    # When non-matching facts are evaluated, then the version is closed, 300 times over
    # Then every evaluation returns [] and the process survives
    result = _run_isolated("""
        from smart_dispatch.rules.engine import CompiledRules
        from smart_dispatch.rules.loader import parse_ruleset

        text = "rules:\\n  - {name: otp, when: {category: otp}, then: {}}\\n"
        for _ in range(300):
            compiled = CompiledRules(parse_ruleset({"f.yaml": text}))
            assert compiled.matches({"category": "marketing"}) == []
            assert compiled.matches({}) == []
            compiled.close()
        print("survived")
    """)
    assert (result.returncode, result.stdout.strip()) == (0, "survived"), result.stderr[-2000:]


def test_a_fact_the_engine_rejects_raises_engine_error_and_the_ruleset_keeps_working(compile_rules):
    compiled = compile_rules("""\
        - {name: low_score, when: {$lt: {user.score: 3}}, then: {}}
        """)
    try:
        compiled.matches({"user": {"score": math.inf}})
    except EngineError:
        pass
    except Exception as exc:
        raise AssertionError(f"leaked {type(exc).__module__}.{type(exc).__name__}: {exc}") from exc
    else:
        raise AssertionError("a non-finite number was accepted")
    assert compiled.matches({"user": {"score": 1}}) == ["low_score", "always"]


def test_a_regex_the_loader_accepts_means_the_same_in_the_engine(compile_rules):
    try:
        compiled = compile_rules("""\
            - {name: otp_template, when: {$mt: {message.template: 'otp_\\d+'}}, then: {}}
            """)
    except RuleFileError:
        return  # rejecting the Python-only class at load time would be fine too
    assert compiled.matches({"message": {"template": "otp_123"}}) == ["otp_template", "always"]


# --- compile_ruleset / ActiveRules --------------------------------------------------------------


def test_compile_ruleset_builds_a_serving_version():
    ruleset = parse_ruleset({"rules.yaml": "rules:\n  - {name: otp, when: {category: otp}, then: {}}\n"})
    version = compile_ruleset(ruleset)
    try:
        assert version.version == ruleset.version
        assert set(version.by_name) == {"otp"}
        assert version.by_name["otp"] is ruleset.rules[0]
        assert version.loaded_at.tzinfo is UTC
        assert version.compiled.matches({"category": "otp"}) == ["otp"]
    finally:
        version.compiled.close()


def test_active_rules_serve_the_shipped_rules(tmp_path):
    shutil.copy(SHIPPED_RULES / "default.yaml", tmp_path / "default.yaml")
    active = ActiveRules(tmp_path)

    # Before the first load there is nothing to serve
    with pytest.raises(NotReadyError):
        active.current()

    assert active.load() is True
    try:
        loaded = active.current()
        matches = loaded.compiled.matches
        assert matches({"category": "otp"}) == ["otp_sms_now"]
        assert matches({"category": "marketing", "user": {"days_since_active": 1}}) == [
            "marketing_active_in_app",
            "marketing_learned",
            "marketing_caps_and_quiet_hours",
        ]
        assert matches({"category": "marketing", "user": {}}) == [
            "marketing_inactive_sms",
            "marketing_learned",
            "marketing_caps_and_quiet_hours",
        ]
        # Unchanged content is not rebuilt
        assert active.load() is False
        assert active.current() is loaded
        status = active.status()
        assert (status.version, status.rule_count, status.reloads) == (loaded.version, 7, 1)
    finally:
        active.close()
    with pytest.raises(NotReadyError):
        active.current()
    with pytest.raises(EngineError, match="closed"):
        loaded.compiled.matches({"category": "otp"})


def test_a_failed_reload_keeps_the_old_version_serving(tmp_path):
    shutil.copy(SHIPPED_RULES / "default.yaml", tmp_path / "default.yaml")
    active = ActiveRules(tmp_path)
    active.load()
    old = active.current()
    try:
        # Given a broken file appears beside the good one
        (tmp_path / "extra.yaml").write_text("rules:\n  - name: broken\n    when: {catgory: otp}\n")

        # When reloading, the error names the file and line
        with pytest.raises(RuleFileError) as info:
            active.load()
        assert (info.value.file, info.value.line) == (str(tmp_path / "extra.yaml"), 3)

        # Then the old version keeps serving and the failure is visible
        assert active.current() is old
        assert old.compiled.matches({"category": "alert"}) == ["alert_now"]
        failure = active.status().last_error
        assert failure is not None
        assert (failure.file, failure.line) == (str(tmp_path / "extra.yaml"), 3)
        assert active.status().failures_since_load == 1

        # And once fixed, a new version replaces it and the unleased old one is freed
        (tmp_path / "extra.yaml").write_text(
            "rules:\n  - {name: alert_vip, priority: 5, when: {category: alert}, then: {}}\n"
        )
        assert active.load() is True
        new = active.current()
        assert new.version != old.version
        assert new.compiled.matches({"category": "alert"}) == ["alert_vip", "alert_now"]
        assert active.status().last_error is None
        with pytest.raises(EngineError, match="closed"):
            old.compiled.matches({"category": "alert"})
    finally:
        active.close()


def test_a_leased_version_outlives_a_swap_until_its_lease_ends(tmp_path):
    shutil.copy(SHIPPED_RULES / "default.yaml", tmp_path / "default.yaml")
    active = ActiveRules(tmp_path)
    active.load()
    try:
        with active.lease() as leased:
            # Given a decision in flight on the current version, the files change
            (tmp_path / "extra.yaml").write_text(
                "rules:\n  - {name: otp_first, priority: 1, when: {category: otp}, then: {}}\n"
            )
            active.load()
            # Then the in-flight decision finishes on its version
            assert active.current() is not leased
            assert leased.compiled.matches({"category": "otp"}) == ["otp_sms_now"]
        # And the old version is freed when the lease ends
        with pytest.raises(EngineError, match="closed"):
            leased.compiled.matches({"category": "otp"})
        assert active.current().compiled.matches({"category": "otp"}) == ["otp_first", "otp_sms_now"]
    finally:
        active.close()


def test_remembered_answers_are_the_engines_answers(compile_rules):
    compiled = compile_rules("""\
        - {name: low_score, when: {$lt: {user.score: 3}}, then: {}}
        - {name: vip, when: {user.vip: true}, then: {}}
        """)
    facts = [{"user": {"score": score, "vip": vip}} for score in range(6) for vip in (True, False)]
    first = [compiled.matches(f) for f in facts]
    first[0].append("mutated by a caller")
    # asked again, more often than the memo holds, in another order: the same answers
    again = [compiled.matches(f) for f in reversed(facts * (MEMO_SIZE // len(facts) + 2))]
    fresh = compile_rules("""\
        - {name: low_score, when: {$lt: {user.score: 3}}, then: {}}
        - {name: vip, when: {user.vip: true}, then: {}}
        """)
    assert again[-1] == fresh.matches(facts[0]) == ["low_score", "vip", "always"]
    assert again[: len(facts)] == [fresh.matches(f) for f in reversed(facts)]
    assert {tuple(compiled.matches({"user": {"score": n}})) for n in range(MEMO_SIZE + 5)} == {
        ("low_score", "always"),
        ("always",),
    }
