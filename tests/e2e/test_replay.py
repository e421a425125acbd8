"""What-if replay: yesterday's recorded decisions decided again under candidate rules, from the
decision log in Redis or from a decision log file, with no side effect on the live store."""

from __future__ import annotations

import asyncio
import io
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.config import Settings
from smart_dispatch.decisionlog.replay import from_file, replay, run_replay

from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis

LIVE = """
categories: [promo, receipt]
channels:
  sms: {cost: 0.05}
  email: {cost: 0.001}
rules:
  - name: promo_sms_first
    when: {category: promo}
    then: {prefer: [sms, email]}
  - name: receipts_by_email
    when: {category: receipt}
    then: {prefer: [email]}
"""
# e-mail first for promos, and none at all for free-tier people; receipts as they were
CANDIDATE = """
categories: [promo, receipt]
channels:
  sms: {cost: 0.05}
  email: {cost: 0.001}
rules:
  - name: promo_email_first
    when: {category: promo}
    then: {prefer: [email, sms]}
  - name: no_promo_for_free_tier
    priority: 10
    when: {category: promo, user.tier: free}
    then: {suppress: free tier}
  - name: receipts_by_email
    when: {category: receipt}
    then: {prefer: [email]}
"""


def rules_dir(tmp_path: Path, name: str, text: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "rules.yaml").write_text(text)
    return directory


async def record_traffic(redis: RedisServer, tmp_path: Path, log: Path) -> None:
    """Six promos (two to free-tier people; one person opted out of promo e-mails) and three
    receipts, decided under the live rules."""
    settings = Settings(
        host="127.0.0.1", port=0, rules_dir=rules_dir(tmp_path, "live", LIVE), store_url=redis.url,
        audit_log=str(log), log_key="k",
    )  # fmt: skip
    async with App(settings) as app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        no_promo_email = pb.Preferences(consents=[pb.ChannelConsent(category="promo", channel="email")])
        await stub.UpdatePreferences(pb.UpdatePreferencesRequest(user_id="p5", preferences=no_promo_email))
        for n in range(6):
            tier = "free" if n < 2 else "paid"
            await stub.Decide(
                decide_request("promo", user=f"p{n}", message_id=f"promo-{n}", attributes={"tier": tier})
            )
        for n in range(3):
            await stub.Decide(decide_request("receipt", user=f"r{n}", message_id=f"receipt-{n}"))


def key_dump(redis: RedisServer) -> dict[bytes, bytes | None]:
    with redis.client() as client:
        return {key: client.dump(key) for key in client.keys("*")}


async def test_replay_reports_what_the_candidate_rules_would_change_without_touching_the_store(
    single_redis: RedisServer, tmp_path: Path
):
    single_redis.flushall()
    log = tmp_path / "decisions.jsonl"
    await record_traffic(single_redis, tmp_path, log)
    candidate = rules_dir(tmp_path, "candidate", CANDIDATE)
    before = key_dump(single_redis)
    now = datetime.now(UTC)

    from smart_dispatch.stores import StoreOptions, stores_from_url

    stores = stores_from_url(single_redis.url, StoreOptions(timeout_s=5.0))
    try:
        report = await replay(stores.decisions.scan(0, int(now.timestamp() * 1000) + 1), candidate)
    finally:
        await stores.close()

    # Then every decision was replayed, and the changes are the candidate's
    assert len(report.changes) == 9 and report.skipped == 0 and report.errors == {}
    # (p5 opted out of promo e-mails when decided: replayed on that state, it stays on SMS)
    assert report.counts() == {"channel sms -> email": 3, "verdict send -> suppress": 2}
    assert "promo-5" not in [c.message_id for c in report.changes if c.kinds]
    promo = report.by("category")["promo"]
    assert (promo.decisions, promo.changed["verdict"], promo.changed["channel"]) == (6, 2, 3)
    assert promo.cost_delta == pytest.approx(3 * (0.001 - 0.05) + 2 * (0 - 0.05))
    assert promo.opens_delta < 0  # two people get nothing; with no history, SMS and e-mail tie
    receipts = report.by("category")["receipt"]
    assert receipts.decisions == 3 and sum(receipts.changed.values()) == 0 and receipts.cost_delta == 0
    by_rule = report.by("rule")
    assert by_rule["no_promo_for_free_tier"].changed["verdict"] == 2
    assert set(report.examples(2)["verdict send -> suppress"]) == {"promo-0", "promo-1"}
    # ...and the live store is exactly as it was
    assert key_dump(single_redis) == before

    # The decision log file gives the same answer
    from_log = await replay(from_file(log, now - timedelta(hours=1), now + timedelta(minutes=1)), candidate)
    assert from_log.counts() == report.counts()
    # Against the live rules replayed the same way: the same changes
    live = tmp_path / "live"
    against_live = await replay(
        from_file(log, now - timedelta(hours=1), now + timedelta(minutes=1)), candidate, live
    )
    assert against_live.counts() == report.counts()


async def test_the_replay_command_prints_tables_and_writes_csv_and_a_chart(
    single_redis: RedisServer, tmp_path: Path
):
    single_redis.flushall()
    await record_traffic(single_redis, tmp_path, tmp_path / "decisions.jsonl")
    candidate = rules_dir(tmp_path, "candidate", CANDIDATE)
    out = tmp_path / "report"

    command = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smart_dispatch", "replay", "--rules", str(candidate),
        "--store", single_redis.url, "--since", "1h", "--out", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(command.communicate(), 120)

    assert command.returncode == 0, stderr.decode()
    text = stdout.decode()
    promo_line = next(line.split() for line in text.splitlines() if line.startswith("promo "))
    assert promo_line[1:5] == ["6", "2", "3", "0"]
    assert "verdict send -> suppress: 2" in text and "channel sms -> email: 3" in text
    assert "replayed: 9 decisions" in stderr.decode()  # the progress line
    assert len((out / "replay.csv").read_text().splitlines()) == 10
    assert (out / "replay.png").read_bytes()[:4] == b"\x89PNG"


async def test_replay_needs_exactly_one_source(tmp_path: Path):
    with pytest.raises(Exception, match="exactly one of --store URL and --log FILE"):
        await run_replay(
            candidate=tmp_path, baseline=None, store_url=None, log=None, since=datetime.now(UTC),
            until=datetime.now(UTC), prefix="sd", out=None, examples=1, output=io.StringIO(),
        )  # fmt: skip
