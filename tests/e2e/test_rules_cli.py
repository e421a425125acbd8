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
    assert result.stdout.startswith("ok: 6 rules, 2 caps in 1 files; version ")


def test_check_rejects_a_broken_directory_with_file_and_line(tmp_path):
    (tmp_path / "a.yaml").write_text("caps:\n  - {name: c, limit: 1, window: 1 hour}\n")
    result = cli("check", str(tmp_path))

    assert result.returncode == 1
    assert f"{tmp_path / 'a.yaml'}:2: invalid duration '1 hour'" in result.stderr


def test_shipped_rule_tests_pass_and_cover_every_rule():
    result = cli("test", "rules", "--require-coverage")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "coverage: 6/6 rules exercised" in result.stdout
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
