"""`smart-dispatch rules check` and `rules test`: exit codes and output an operator sees."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smart_dispatch", "rules", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_accepts_the_shipped_rules():
    result = cli("check", "rules")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 7 rules, 2 caps in 1 files; version ")


def test_check_rejects_a_broken_directory_with_file_and_line(tmp_path):
    (tmp_path / "a.yaml").write_text("caps:\n  - {name: c, limit: 1, window: 1 hour}\n")
    result = cli("check", str(tmp_path))

    assert result.returncode == 1
    assert f"{tmp_path / 'a.yaml'}:2: invalid duration '1 hour'" in result.stderr


def test_shipped_rule_tests_pass_and_cover_every_rule():
    result = cli("test", "rules", "--require-coverage")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "coverage: 7/7 rules exercised" in result.stdout
    assert result.stdout.rstrip().endswith(" passed, 0 failed")


def test_a_failing_case_prints_a_diff_and_exits_1_and_uncovered_rules_are_named(tmp_path):
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "rules" / "default.yaml", rules / "default.yaml")
    (rules / "tests" / "t.yaml").write_text(
        'now: "2026-06-01T10:00:00Z"\n'
        "cases:\n"
        "  - name: wrong on purpose\n"
        "    message: {id: m1, category: otp}\n"
        "    recipient: {user_id: u1, addresses: {sms: '+15550100'}}\n"
        "    expect: {verdict: defer, channels: [email], rules: [alert_now]}\n"
    )
    result = cli("test", str(rules))

    assert result.returncode == 1
    assert f"FAIL wrong on purpose ({rules / 'tests' / 't.yaml'}:3)" in result.stdout
    assert "    verdict: expected defer, got send" in result.stdout
    assert "    channels: expected ['email'], got ['sms']" in result.stdout
    assert "    rules: expected ['alert_now'], got ['otp_sms_now']" in result.stdout
    assert "no case exercises: alert_now, transactional_email," in result.stdout
    assert result.stdout.rstrip().endswith("0 passed, 1 failed")


def test_uncovered_rules_fail_only_with_require_coverage(tmp_path):
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "rules" / "default.yaml", rules / "default.yaml")
    (rules / "tests" / "t.yaml").write_text(
        "cases:\n  - name: otp\n    facts: {category: otp}\n    expect: {rules: [otp_sms_now]}\n"
    )

    assert cli("test", str(rules)).returncode == 0
    assert cli("test", str(rules), "--require-coverage").returncode == 1


def test_a_malformed_test_file_is_reported_with_file_and_line(tmp_path):
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "rules" / "default.yaml", rules / "default.yaml")
    (rules / "tests" / "t.yaml").write_text(
        "cases:\n  - name: x\n    facts: {category: otp}\n    expct: {}\n"
    )
    result = cli("test", str(rules))

    assert result.returncode == 1
    assert f"{rules / 'tests' / 't.yaml'}:4: unknown key 'expct' in case" in result.stderr


def rules_with_case(tmp_path: Path, case: str) -> Path:
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "rules" / "default.yaml", rules / "default.yaml")
    (rules / "tests" / "t.yaml").write_text(
        'now: "2026-06-01T10:00:00Z"\n'
        "recipients:\n"
        "  ann: {user_id: ann, addresses: {sms: '+15550100', email: a@example.com, in_app: ann}}\n"
        "cases:\n" + case
    )
    return rules


def test_history_feeds_the_learned_choice_and_send_between_bounds_the_hour(tmp_path):
    # Given a person who reads e-mail at 18:00 UTC and ignores it at 09:00, and ignores the app
    case = (
        "  - name: learned\n"
        "    history:\n"
        "      - {channel: email, count: 30, events: [delivered, opened], at: '2026-05-28T18:00:00Z'}\n"
        "      - {channel: email, count: 30, events: [delivered], at: '2026-05-28T09:00:00Z'}\n"
        "      - {channel: in_app, count: 30, events: [delivered], at: '2026-05-28T18:00:00Z'}\n"
        "    message: {id: m1, category: marketing}\n"
        "    recipient: ann\n"
        "    expect: {channels: [email], send_between: ['2026-06-01T{low}:00Z', '2026-06-01T{high}:00Z']}\n"
    )
    evening = rules_with_case(tmp_path / "a", case.replace("{low}", "16:00").replace("{high}", "20:00"))
    morning = rules_with_case(tmp_path / "b", case.replace("{low}", "08:00").replace("{high}", "10:00"))

    # Then the evening is where the message goes, and a case expecting the morning fails
    assert cli("test", str(evening)).returncode == 0, cli("test", str(evening)).stdout
    wrong = cli("test", str(morning))
    assert wrong.returncode == 1
    assert (
        "send_at: expected from 2026-06-01T08:00:00+00:00 to 2026-06-01T10:00:00+00:00, got 2026-06-01T1"
        in wrong.stdout
    )


def test_a_history_entry_on_a_channel_the_person_lacks_is_an_error_with_its_line(tmp_path):
    case = (
        "  - name: bad history\n"
        "    history:\n"
        "      - {channel: push, count: 3, events: [opened]}\n"
        "    message: {id: m1, category: marketing}\n"
        "    recipient: ann\n"
    )
    result = cli("test", str(rules_with_case(tmp_path, case)))

    assert result.returncode == 1
    assert (
        f"{tmp_path / 'rules' / 'tests' / 't.yaml'}:7: history: channel 'push' is not one of the recipient's"
        in result.stderr
    )
