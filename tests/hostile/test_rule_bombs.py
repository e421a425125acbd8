"""Hostile and careless rule files dropped into a live server's rules directory.

Throughout each load, Health answers within 1 s and Decide keeps working on the serving
version; a refused file is reported in the rules status with its file and line (or the limit
it broke), and is not tried again until it changes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hostile.conftest import Live, rules_copy
from tests.support.sidecar import address_of, spawn, stop


def or_fanout(values: int) -> str:
    alternatives = ", ".join(f"{{labels.k: v{i}}}" for i in range(values))
    return f"rules:\n  - name: wide\n    when: {{$or: [{alternatives}]}}\n    then: {{prefer: [sms]}}\n"


def alias_bomb(levels: int) -> str:
    lines = ["rules:", "  - name: bomb", "    when:", "      $and:", "        - &l0 {category: otp}"]
    for level in range(1, levels + 1):
        lines.append(f"        - &l{level} {{$or: [{', '.join([f'*l{level - 1}'] * 10)}]}}")
    return "\n".join([*lines, "    then: {prefer: [sms]}", ""])


def deep_nesting(levels: int) -> str:
    condition = "{$and: [" * levels + "{category: otp}" + "]}" * levels
    return f"rules:\n  - name: deep\n    when: {condition}\n    then: {{}}\n"


def many_conditions(rules: int) -> str:
    lines = ["categories: [otp]", "rules:"]
    lines += [
        f"  - {{name: r{i}, when: {{category: otp, labels.k: v{i}}}, then: {{prefer: [sms]}}}}"
        for i in range(rules)
    ]
    return "\n".join([*lines, ""])


def wait_for(live: Live, done, seconds: float = 20.0) -> float:
    """Poll until `done(status)`, checking Health (1 s deadline) and Decide on every round;
    returns the slowest Health answer seen."""
    slowest = 0.0
    deadline = time.monotonic() + seconds
    while True:
        slowest = max(slowest, live.health())
        assert live.decide_otp().verdict
        if done(live.status()):
            return slowest
        assert time.monotonic() < deadline, f"not done after {seconds} s: {live.status()}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (or_fanout(600), "more than 511 distinct conditions"),
        (alias_bomb(8), "expands to more than 250,000 values"),
        (deep_nesting(200), "nested deeper than 64 levels"),
        ("# padding\n" * 300_000, "a rule file may have at most 2,097,152"),
    ],
    ids=["or-fanout-600", "alias-bomb-8-levels", "nesting-200", "3MB-file"],
)
def test_a_refused_file_never_stalls_serving_and_is_reported(live: Live, text: str, expected: str):
    # Given a server on the shipped rules
    serving = live.status().version
    # When a hostile file lands beside them
    (live.rules / "zz_hostile.yaml").write_text(text)
    slowest = wait_for(live, lambda status: status.HasField("last_error"))
    # Then the old version kept serving, Health never took 1 s, and the error names the file
    status = live.status()
    assert status.version == serving
    assert slowest < 1.0
    assert status.last_error.file.endswith("zz_hostile.yaml"), status.last_error
    assert expected in status.last_error.message
    # And the failing content is not tried again on every poll (0.3 s) while it is unchanged
    time.sleep(1.5)
    assert live.status().failures_since_load == status.failures_since_load
    # Until it changes: a fix loads
    (live.rules / "zz_hostile.yaml").write_text("rules: []\n")
    wait_for(live, lambda s: s.version != serving and not s.HasField("last_error"))


def test_513_distinct_conditions_load_as_two_engine_rulesets_and_route_exactly(live: Live):
    # 513 distinct values after one shared condition hung durable-rules for good; split in two
    (live.rules / "many.yaml").write_text(many_conditions(513))
    slowest = wait_for(live, lambda status: status.rule_count > 513)
    assert slowest < 1.0
    for value in ("v0", "v511", "v512"):
        assert f"r{value[1:]}" in live.decide_otp(k=value).matched_rules
    assert not any(
        name.startswith("r") and name[1:].isdigit() for name in live.decide_otp(k="x").matched_rules
    )


def test_a_load_over_the_time_budget_is_abandoned_while_serving_goes_on(tmp_path: Path):
    # Given a compile budget of 1.5 s and a large (valid) ruleset that needs about 5 s
    directory = rules_copy(tmp_path)
    process = spawn(
        "--rules", str(directory), env={"SD_RULES_POLL_S": "0.3", "SD_RULES_COMPILE_TIMEOUT_S": "1.5"}
    )
    try:
        import grpc

        port = address_of(process)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])
        live = Live(None, directory, channel)  # type: ignore[arg-type]
        (directory / "big.yaml").write_text(many_conditions(9500))
        slowest = wait_for(live, lambda status: status.HasField("last_error"))
        assert slowest < 1.0
        assert "did not finish within 1.5 s" in live.status().last_error.message
        channel.close()
    finally:
        stop(process)


def sigterm_and_expect_exit(process: subprocess.Popen[str], within_s: float, what: str) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{what} ignored SIGTERM during start-up")
    finally:
        process.communicate()


def test_sigterm_during_the_first_load_stops_the_server(tmp_path: Path):
    # Given a server whose first load takes seconds (a large ruleset, a generous budget)
    directory = rules_copy(tmp_path)
    (directory / "big.yaml").write_text(many_conditions(8000))
    process = spawn("--rules", str(directory), env={"SD_RULES_COMPILE_TIMEOUT_S": "60"})
    time.sleep(1.0)
    assert process.poll() is None, "the first load finished too soon to test this"
    # When SIGTERM arrives before it serves, it exits within 5 s
    sigterm_and_expect_exit(process, 5, "the server")


@pytest.mark.redis
def test_supervisor_stops_every_worker_on_a_sigterm_during_start_up(tmp_path: Path, single_redis):
    directory = rules_copy(tmp_path)
    (directory / "big.yaml").write_text(many_conditions(4000))
    process = spawn("--rules", str(directory), "--workers", "2", "--store", single_redis.url)
    time.sleep(1.0)
    sigterm_and_expect_exit(process, 10, "the supervisor")
    leftover = subprocess.run(["pgrep", "-f", str(directory)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "worker processes outlived the supervisor"


@pytest.mark.parametrize(
    ("text", "code", "expected"),
    [
        (many_conditions(513), 0, "ok: 513 rules, 0 caps in 1 files; 2 engine rulesets"),
        (alias_bomb(8), 1, "bomb.yaml:10: this value expands to more than 250,000 values"),
        (or_fanout(600), 1, "bomb.yaml:2: rule 'wide': more than 511 distinct conditions"),
    ],
    ids=["513-conditions", "alias-bomb", "or-fanout"],
)
def test_rules_check_answers_within_seconds(tmp_path: Path, text: str, code: int, expected: str):
    (tmp_path / "bomb.yaml").write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "smart_dispatch", "rules", "check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert expected in done.stdout + done.stderr
