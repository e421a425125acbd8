"""Rule-file loading and validation: every problem is a `RuleFileError` at the offending line."""

from __future__ import annotations

import textwrap
from datetime import time
from pathlib import Path

import pytest
from smart_dispatch.errors import RuleFileError
from smart_dispatch.rules.loader import load_ruleset, parse_ruleset
from smart_dispatch.rules.model import QuietHours

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"

#: A valid rule appended where a file needs one to get past "declares no rules".
_OK_RULE = """\
  - name: ok
    when: {category: otp}
    then: {prefer: [sms]}
"""


def _yaml(text: str) -> str:
    return textwrap.dedent(text)


def _line_of(text: str, marker: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the `occurrence`-th `marker`."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{marker!r} (#{occurrence}) not in the test text")


def _error(sources: dict[str, str]) -> RuleFileError:
    with pytest.raises(RuleFileError) as info:
        parse_ruleset(sources)
    return info.value


def _assert_error_at(text: str, marker: str, fragment: str, occurrence: int = 1) -> None:
    error = _error({"f.yaml": text})
    assert (error.file, error.line) == ("f.yaml", _line_of(text, marker, occurrence)), error
    assert fragment in error.problem
    assert str(error).startswith(f"f.yaml:{error.line}: ")


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


# --- structure ----------------------------------------------------------------------------------


def test_unknown_top_level_key_is_reported_at_its_line():
    text = (
        _yaml("""\
        categories: [otp]
        ruless: []
        rules:
        """)
        + _OK_RULE
    )
    _assert_error_at(text, "ruless", "unknown key 'ruless' in rule file")


def test_unknown_rule_key_is_reported_at_its_line():
    text = _yaml("""\
        rules:
          - name: a
            when: {category: otp}
            then: {prefer: [sms]}
            priorty: 3
        """)
    _assert_error_at(text, "priorty", "unknown key 'priorty' in rule")


def test_unknown_effect_is_reported_with_the_known_ones():
    text = _yaml("""\
        rules:
          - name: a
            when: {category: otp}
            then:
              prefer: [sms]
              prefr: [email]
        """)
    _assert_error_at(text, "prefr", "unknown effect 'prefr'; known: ")


def test_duplicate_rule_name_in_one_file_points_at_the_second_and_names_the_first():
    text = _yaml("""\
        rules:
          - name: a
            when: {category: otp}
            then: {}
          - name: a
            when: {category: alert}
            then: {}
        """)
    _assert_error_at(text, "name: a", "duplicate rule name 'a' (first in f.yaml:2)", occurrence=2)


def test_duplicate_rule_name_across_two_files_is_reported_in_the_second_file():
    first = "rules:\n" + _OK_RULE
    second = _yaml("""\
        # the same name as in a.yaml
        rules:
          - name: ok
            when: {category: alert}
            then: {}
        """)
    error = _error({"a.yaml": first, "b.yaml": second})
    assert (error.file, error.line) == ("b.yaml", 3)
    assert "duplicate rule name 'ok' (first in a.yaml:2)" in error.problem


def test_duplicate_cap_name_is_reported_at_the_second_cap():
    text = (
        _yaml("""\
        caps:
          - {name: hourly, limit: 1, window: 1h}
          - {name: hourly, limit: 2, window: 2h}
        rules:
        """)
        + _OK_RULE
    )
    _assert_error_at(text, "name: hourly", "duplicate cap name 'hourly'", occurrence=2)


def test_duplicate_cap_name_across_files_is_reported_in_the_second_file():
    first = "caps:\n  - {name: hourly, limit: 1, window: 1h}\nrules:\n" + _OK_RULE
    second = "caps:\n  - {name: daily, limit: 3, window: 1d}\n  - {name: hourly, limit: 2, window: 1h}\n"
    error = _error({"a.yaml": first, "b.yaml": second})
    assert (error.file, error.line) == ("b.yaml", 3)
    assert "duplicate cap name 'hourly'" in error.problem


def test_duplicate_yaml_key_is_reported_at_the_repeated_key():
    text = _yaml("""\
        rules:
          - name: a
            when: {category: otp}
            then: {prefer: [sms]}
            when: {category: alert}
        """)
    _assert_error_at(text, "when: {category: alert}", "duplicate key 'when'")


def test_duplicate_key_inside_a_flow_mapping_is_rejected():
    text = "rules:\n  - name: a\n    when: {category: otp, category: alert}\n    then: {}\n"
    _assert_error_at(text, "when:", "duplicate key 'category'")


@pytest.mark.parametrize(
    ("text", "marker", "fragment"),
    [
        ("rules:\n  - name: a\n    when: {category: otp\n    then: {}\n", "then:", "expected ',' or '}'"),
        ("rules:\n  - name: a\n   when: {category: otp}\n", "   when:", "expected <block end>"),
        ("categories: [otp]\nrules:\n\t- name: a\n", "\t- name", "'\\t' that cannot start any token"),
        ("rules: &x\n  - *y\n", "*y", "undefined alias 'y'"),
    ],
    ids=["unclosed-flow-mapping", "bad-indentation", "tab-indentation", "undefined-alias"],
)
def test_invalid_yaml_syntax_reports_the_line(text, marker, fragment):
    _assert_error_at(text, marker, "invalid YAML: ")
    assert fragment in _error({"f.yaml": text}).problem


def test_a_file_that_is_not_a_mapping_is_rejected_at_line_1():
    _assert_error_at("- name: a\n", "- name: a", "a rule file must be a mapping")


# --- rules: name, priority, required keys --------------------------------------------------------


@pytest.mark.parametrize("priority", ["70000", "-1", "high", "1.5", "true"])
def test_priority_out_of_range_or_not_an_integer_is_rejected(priority):
    text = f"rules:\n  - name: a\n    priority: {priority}\n    when: {{category: otp}}\n    then: {{}}\n"
    _assert_error_at(text, "priority:", "rule 'a': priority must be an integer 0..65535")


@pytest.mark.parametrize("missing", ["when", "then"])
def test_missing_when_or_then_is_reported_at_the_rule(missing):
    lines = {"when": "    when: {category: otp}\n", "then": "    then: {prefer: [sms]}\n"}
    text = "rules:\n  - name: a\n" + "".join(v for k, v in lines.items() if k != missing)
    _assert_error_at(text, "- name: a", f"missing required key {missing!r}")


def test_missing_name_is_reported_at_the_rule():
    text = _yaml("""\
        rules:
          - when: {category: otp}
            then: {prefer: [sms]}
        """)
    _assert_error_at(text, "- when:", "missing required key 'name'")


def test_an_invalid_rule_name_is_rejected():
    text = "rules:\n  - name: 1st rule\n    when: {category: otp}\n    then: {}\n"
    _assert_error_at(text, "name:", "invalid rule name '1st rule'")


def test_shadow_must_be_a_boolean_and_defaults_to_false():
    text = "rules:\n  - name: a\n    shadow: maybe\n    when: {category: otp}\n    then: {}\n"
    _assert_error_at(text, "shadow:", "rule 'a': shadow must be true or false")

    text = "rules:\n  - {name: a, shadow: true, when: {category: otp}, then: {}}\n" + _OK_RULE
    assert [(r.name, r.shadow) for r in parse_ruleset({"f.yaml": text}).rules] == [("a", True), ("ok", False)]


# --- durations, clock times, quiet hours ---------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "fragment"),
    [
        ('"1 hour"', "invalid duration '1 hour'"),
        ("-5m", "invalid duration '-5m'"),
        ("0", "duration must be positive and finite, got 0"),
        ("0s", "duration must be positive and finite, got '0s'"),
        ("fortnight", "invalid duration 'fortnight'"),
    ],
)
def test_bad_cap_window_is_reported_at_the_window_line(window, fragment):
    text = (
        _yaml(f"""\
        caps:
          - name: hourly
            limit: 1
            window: {window}
        rules:
        """)
        + _OK_RULE
    )
    _assert_error_at(text, "window:", fragment)


def test_a_nan_window_is_not_a_duration():
    text = "caps:\n  - {name: c, limit: 1, window: .nan}\nrules:\n" + _OK_RULE
    _assert_error_at(text, "window:", "duration")


def test_durations_in_every_unit_are_converted_to_seconds():
    text = (
        _yaml("""\
        caps:
          - {name: a, limit: 1, window: 250ms}
          - {name: b, limit: 1, window: 90s}
          - {name: c, limit: 1, window: 15m}
          - {name: d, limit: 1, window: 1.5h}
          - {name: e, limit: 1, window: 1d}
          - {name: f, limit: 1, window: 1w}
          - {name: g, limit: 1, window: 42}
        rules:
        """)
        + _OK_RULE
    )
    caps = parse_ruleset({"f.yaml": text}).caps
    assert {name: cap.window_s for name, cap in caps.items()} == {
        "a": 0.25,
        "b": 90.0,
        "c": 900.0,
        "d": 5400.0,
        "e": 86400.0,
        "f": 604800.0,
        "g": 42.0,
    }


def test_cap_limit_must_be_a_positive_integer():
    text = "caps:\n  - name: c\n    limit: 0\n    window: 1h\nrules:\n" + _OK_RULE
    _assert_error_at(text, "limit:", "cap 'c': limit must be a positive integer")


def _quiet_rule(quiet: str) -> str:
    head = "rules:\n  - name: night\n    when: {category: marketing}\n    then:\n      quiet_hours:\n"
    return head + textwrap.indent(quiet, " " * 8)


@pytest.mark.parametrize(
    ("quiet", "marker", "fragment"),
    [
        ('from: "25:00"\nto: "08:00"\n', "from:", "invalid clock time '25:00'"),
        ('from: "21:00"\nto: "08:60"\n', "to:", "invalid clock time '08:60'"),
        # YAML 1.1 reads an unquoted 8:00 as the base-60 integer 480.
        ('from: 8:00\nto: "12:00"\n', "from:", "invalid clock time 480; use HH:MM (24 h), quoted"),
        ('from: "9:00"\nto: "12:00"\n', "from:", "invalid clock time '9:00'"),
    ],
)
def test_bad_clock_time_is_reported_at_its_line(quiet, marker, fragment):
    text = _quiet_rule(quiet)
    _assert_error_at(text, marker, fragment)


def test_quiet_hours_from_equal_to_is_rejected_at_to():
    text = _quiet_rule('from: "21:00"\nto: "21:00"\n')
    _assert_error_at(text, "to:", "quiet_hours from and to must differ")


def test_quiet_hours_unknown_policy_is_rejected():
    text = _quiet_rule('from: "21:00"\nto: "08:00"\npolicy: later\n')
    _assert_error_at(text, "policy:", "quiet_hours policy must be one of defer, drop")


def test_quiet_hours_are_parsed_into_clock_times():
    text = _quiet_rule('from: "21:00"\nto: "08:00"\npolicy: drop\n')
    (rule,) = parse_ruleset({"f.yaml": text}).rules
    assert rule.effects.quiet_hours == QuietHours(time(21, 0), time(8, 0), "drop")


# --- channels, caps, scalar effects -------------------------------------------------------------


@pytest.mark.parametrize("effect", ["prefer", "deny", "only", "fallback"])
def test_unknown_channel_in_a_channel_list_effect_is_rejected(effect):
    text = f"rules:\n  - name: a\n    when: {{category: otp}}\n    then:\n      {effect}: [sms, fax]\n"
    _assert_error_at(text, f"{effect}:", "unknown channel 'fax'; known: sms, email")


def test_unknown_channel_on_a_cap_is_rejected():
    text = "caps:\n  - name: c\n    limit: 1\n    window: 1h\n    channel: fax\nrules:\n" + _OK_RULE
    _assert_error_at(text, "channel: fax", "unknown channel 'fax'")


def test_unknown_cap_referenced_by_a_rule_is_reported_at_its_caps_line():
    text = _yaml("""\
        caps:
          - {name: hourly, limit: 1, window: 1h}
        rules:
          - name: a
            when: {category: marketing}
            then:
              prefer: [sms]
              caps: [hourly, weekly]
        """)
    _assert_error_at(text, "caps: [hourly, weekly]", "unknown cap 'weekly'; known: hourly")


def test_a_cap_declared_in_another_file_can_be_referenced():
    first = "rules:\n  - name: a\n    when: {category: marketing}\n    then: {caps: [hourly]}\n"
    second = "caps:\n  - {name: hourly, limit: 1, window: 1h, channel: sms, scope: global}\n"
    ruleset = parse_ruleset({"a.yaml": first, "b.yaml": second})
    assert ruleset.rules[0].effects.caps == ("hourly",)
    cap = ruleset.caps["hourly"]
    assert (cap.limit, cap.window_s, cap.channel, cap.scope) == (1, 3600.0, "sms", "global")


@pytest.mark.parametrize(
    ("effect", "fragment"),
    [
        ("on_cap: later", "on_cap must be one of defer, next_channel, drop"),
        ("bypass_caps: yes please", "bypass_caps must be true or false"),
        ("suppress: ''", "suppress takes a reason string"),
        ("caps: hourly", "caps must be a list of cap names"),
    ],
)
def test_invalid_scalar_effects_are_rejected(effect, fragment):
    text = f"rules:\n  - name: a\n    when: {{category: otp}}\n    then:\n      {effect}\n"
    _assert_error_at(text, effect.split(":")[0] + ":", fragment)


# --- conditions ---------------------------------------------------------------------------------


def _when(condition: str) -> str:
    return "rules:\n  - name: a\n    then: {}\n    when:\n" + textwrap.indent(condition, "      ")


@pytest.mark.parametrize(
    ("condition", "marker", "fragment"),
    [
        ("$in: {category: [otp, alert]}\n", "$in", "unknown operator '$in'; known: $and"),
        ('$mt: {message.template: "(unclosed"}\n', "$mt", "$mt on 'message.template': invalid regex"),
        ("$mt: {message.template: 7}\n", "$mt", "needs a regex string"),
        ('$lt: {user.score: "10"}\n', "$lt", "$lt on 'user.score' needs a number, got '10'"),
        ("$gte: {user.score: true}\n", "$gte", "needs a number, got True"),
        ("catgory: otp\n", "catgory", "unknown fact 'catgory'; facts start with one of: behaviour, category"),
        ("$ex: {usr.vip: 1}\n", "$ex", "unknown fact 'usr.vip'"),
        ("user..vip: true\n", "user..vip", "invalid fact path 'user..vip'"),
        ("$and: []\n", "$and", "$and takes a non-empty list of conditions"),
        ("$or: {category: otp}\n", "$or", "$or takes a non-empty list of conditions"),
        ("$eq: {category: otp, labels.kind: promo}\n", "$eq", "$eq takes exactly one {path: value} pair"),
        (
            "category: [otp, alert]\n",
            "category",
            "'category' must be compared with a string, number or boolean",
        ),
        ("user.vip: null\n", "user.vip", "must be compared with a string, number or boolean, got None"),
    ],
)
def test_invalid_condition_is_reported_at_its_line(condition, marker, fragment):
    text = _when(condition)
    _assert_error_at(text, marker, fragment)


def test_a_problem_deep_inside_and_or_is_reported_at_the_nested_line():
    text = _when(
        _yaml("""\
        $or:
          - {category: otp}
          - $and:
              - {category: marketing}
              - {$lt: {usr.days_since_active: 3}}
        """)
    )
    _assert_error_at(text, "usr.days_since_active", "unknown fact 'usr.days_since_active'")


def test_multi_key_condition_shorthand_becomes_and_in_written_order():
    text = _when("category: marketing\n$lt: {user.days_since_active: 3}\nlabels.kind: promo\n")
    ruleset = parse_ruleset({"f.yaml": text})
    assert ruleset.rules[0].when == {
        "$and": [
            {"category": "marketing"},
            {"$lt": {"user.days_since_active": 3}},
            {"labels.kind": "promo"},
        ]
    }
    assert ruleset.referenced_paths == {"category", "user.days_since_active", "labels.kind"}


def test_presence_operators_are_normalised_to_1():
    text = _when("$or:\n  - {$ex: {user.vip: true}}\n  - {$nex: {labels.kind: 0}}\n")
    (rule,) = parse_ruleset({"f.yaml": text}).rules
    assert rule.when == {"$or": [{"$ex": {"user.vip": 1}}, {"$nex": {"labels.kind": 1}}]}


# --- directories --------------------------------------------------------------------------------


def test_empty_directory_is_rejected(tmp_path):
    with pytest.raises(RuleFileError) as info:
        load_ruleset(tmp_path)
    assert (info.value.file, info.value.line) == (str(tmp_path), 0)
    assert "no rule files (*.yaml, *.yml)" in info.value.problem


def test_missing_directory_is_rejected(tmp_path):
    with pytest.raises(RuleFileError) as info:
        load_ruleset(tmp_path / "nope")
    assert info.value.file == str(tmp_path / "nope")
    assert "does not exist" in info.value.problem


def test_directory_whose_files_declare_no_rules_is_rejected(tmp_path):
    _write(
        tmp_path,
        {
            "a_caps.yaml": "caps:\n  - {name: hourly, limit: 1, window: 1h}\n",
            "b_empty.yaml": "# nothing here yet\n",
            "README.md": "rules: [not a rule file]\n",
        },
    )
    with pytest.raises(RuleFileError) as info:
        load_ruleset(tmp_path)
    assert (info.value.file, info.value.line) == (str(tmp_path / "a_caps.yaml"), 0)
    assert "declares no rules" in info.value.problem


def test_errors_from_a_directory_name_the_file_path(tmp_path):
    _write(tmp_path, {"good.yaml": "rules:\n" + _OK_RULE, "bad.yaml": "rules:\n  - name: x\n"})
    with pytest.raises(RuleFileError) as info:
        load_ruleset(tmp_path)
    assert (info.value.file, info.value.line) == (str(tmp_path / "bad.yaml"), 2)


def test_shipped_rules_directory_loads():
    ruleset = load_ruleset(SHIPPED_RULES)

    assert len(ruleset.rules) == 7
    learned = next(r for r in ruleset.rules if r.name == "marketing_learned")
    assert learned.effects.choose is not None and learned.effects.send_time is not None
    assert ruleset.learning.cost("sms") > ruleset.learning.cost("email") > ruleset.learning.cost("in_app")
    assert set(ruleset.caps) == {"marketing_hourly", "marketing_daily"}
    assert ruleset.caps["marketing_daily"].window_s == 24 * 3600
    assert ruleset.categories == {"otp", "transactional", "alert", "marketing"}
    assert [r.priority for r in ruleset.rules] == sorted(r.priority for r in ruleset.rules)
    assert ruleset.rules[0].name == "otp_sms_now"
    assert ruleset.rules[-1].effects.quiet_hours == QuietHours(time(21), time(8), "defer")
    assert all(r.file == str(SHIPPED_RULES / "default.yaml") for r in ruleset.rules)


def test_rules_are_ordered_by_priority_then_file_name_then_position(tmp_path):
    # Given files written in reverse name order, each mixing priorities
    _write(
        tmp_path,
        {
            "z_last.yaml": _yaml("""\
                rules:
                  - {name: z_p10, priority: 10, when: {category: otp}, then: {}}
                  - {name: z_default, when: {category: otp}, then: {}}
                """),
            "a_first.yaml": _yaml("""\
                rules:
                  - {name: a_p20, priority: 20, when: {category: otp}, then: {}}
                  - {name: a_p10_first, priority: 10, when: {category: otp}, then: {}}
                  - {name: a_p10_second, priority: 10, when: {category: otp}, then: {}}
                  - {name: a_p0, priority: 0, when: {category: otp}, then: {}}
                """),
        },
    )
    # When the directory is loaded
    ruleset = load_ruleset(tmp_path)
    # Then priority decides, ties keep file-name order, then position in the file
    assert [r.name for r in ruleset.rules] == [
        "a_p0",
        "a_p10_first",
        "a_p10_second",
        "z_p10",
        "a_p20",
        "z_default",
    ]
    assert ruleset.files == (str(tmp_path / "a_first.yaml"), str(tmp_path / "z_last.yaml"))
    assert ruleset.rules[-1].priority == 100


def test_rules_remember_their_file_and_line(tmp_path):
    _write(tmp_path, {"r.yaml": "# comment\nrules:\n" + _OK_RULE})
    (rule,) = load_ruleset(tmp_path).rules
    assert (rule.file, rule.line) == (str(tmp_path / "r.yaml"), 3)


def test_version_is_a_content_hash(tmp_path):
    files = {"a.yaml": "rules:\n" + _OK_RULE, "b.yml": "caps:\n  - {name: c, limit: 1, window: 1h}\n"}
    one = load_ruleset(_write(tmp_path / "one", files)).version
    two = load_ruleset(_write(tmp_path / "two", files)).version

    # Identical content in another directory: the same version, stable across loads
    assert one == two == load_ruleset(tmp_path / "one").version
    assert len(one) == 12 and int(one, 16) >= 0

    # Any change, even a comment, gives a new version
    (tmp_path / "two" / "b.yml").write_text(files["b.yml"] + "# tweak\n", encoding="utf-8")
    changed = load_ruleset(tmp_path / "two").version
    assert changed != one

    # Adding a file changes it too
    _write(tmp_path / "one", {"c.yaml": "categories: [otp]\n"})
    assert load_ruleset(tmp_path / "one").version not in (one, changed)


def test_hidden_entries_and_configmap_data_links_are_ignored(tmp_path):
    # Given a Kubernetes ConfigMap layout: ..<timestamp>/ holds the files, ..data links to it,
    # the visible names link through ..data; plus a hidden editor file and a non-YAML file
    timestamped = tmp_path / "..2026_01_01_00_00_00.000000001"
    _write(timestamped, {"rules.yaml": "rules:\n" + _OK_RULE})
    (tmp_path / "..data").symlink_to(timestamped.name)
    (tmp_path / "rules.yaml").symlink_to(Path("..data") / "rules.yaml")
    _write(
        tmp_path, {".rules.yaml.swp": "not: [valid", ".hidden.yaml": "rules: nonsense\n", "notes.txt": "x"}
    )

    # When the directory is loaded
    ruleset = load_ruleset(tmp_path)

    # Then only the visible rule file counts, read through the links
    assert ruleset.files == (str(tmp_path / "rules.yaml"),)
    assert [r.name for r in ruleset.rules] == ["ok"]


def test_a_directory_over_its_byte_or_file_budget_is_refused_before_reading(tmp_path):
    from smart_dispatch.rules.loader import MAX_FILES, MAX_TOTAL_BYTES

    big = "#" * (MAX_TOTAL_BYTES // 9) + "\n"
    for n in range(10):
        (tmp_path / f"r{n}.yaml").write_text(big)
    with pytest.raises(RuleFileError) as info:
        load_ruleset(tmp_path)
    assert info.value.file == str(tmp_path) and "a directory may hold at most" in info.value.problem
    for n in range(10):
        (tmp_path / f"r{n}.yaml").unlink()
    for n in range(MAX_FILES + 1):
        (tmp_path / f"f{n}.yaml").write_text("rules: []\n")
    with pytest.raises(RuleFileError) as info:
        load_ruleset(tmp_path)
    assert f"at most {MAX_FILES:,}" in info.value.problem


ONE_RULE = "rules:\n  - name: a\n    when: {category: otp}\n    then: {prefer: [sms]}\n"


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("prior_weight: 0", "learning.prior_weight must be a positive number"),
        ("segment_by: [plan]", "learning.segment_by must be a recipient attribute name"),
        ("segment_by: 'a b'", "learning.segment_by must be a recipient attribute name"),
        ("segmented_by: plan", "segmented_by"),
    ],
)
def test_invalid_learning_settings_are_rejected_at_their_line(setting, fragment):
    text = f"learning:\n  {setting}\n" + ONE_RULE
    _assert_error_at(text, setting.split(":")[0] + ":", fragment)


def test_segment_by_names_the_attribute_the_prior_is_split_by(tmp_path):
    text = "learning: {segment_by: plan}\n" + ONE_RULE
    assert load_ruleset(_write(tmp_path, {"f.yaml": text})).learning.segment_by == "plan"


def test_a_lane_must_be_one_of_the_four():
    text = "rules:\n  - name: a\n    when: {category: otp}\n    then:\n      lane: urgent\n"
    _assert_error_at(text, "lane:", "lane must be one of critical, high, normal, bulk")


@pytest.mark.parametrize(
    ("digest", "fragment"),
    [
        ("{window: 0s}", "duration must be positive"),
        ("{window: 8d}", "digest: window is from 1s to 7d"),
        ("{key: a, window: 1h, keep: middle}", "digest: keep must be one of first, last, all"),
        ("{key: 'a b', window: 1h}", "digest: key is a name"),
        ("{key: a, window: 1h, max_items: 0}", "digest: max_items is a whole number from 1 to 1000"),
        ("{key: a}", "window"),
    ],
)
def test_invalid_digests_are_rejected_at_their_line(digest, fragment):
    text = f"rules:\n  - name: a\n    when: {{category: otp}}\n    then:\n      digest: {digest}\n"
    error = _error({"f.yaml": text})
    assert error.line == 5 and fragment in error.problem, error
