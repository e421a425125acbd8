"""Analytics over gRPC and Prometheus: decisions, sends, engagement, suppressions by reason and
cost, per day x category x channel x rule x template, on memory and on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.config import Settings
from smart_dispatch.telemetry import Telemetry

from tests.support.waiting import eventually

RULES = """
categories: [promo, receipt]
channels:
  sms: {cost: 0.05}
  email: {cost: 0.001}
caps:
  - {name: promo_daily, limit: 1, window: 1d}
rules:
  - name: promo_by_sms
    when: {category: promo}
    then: {prefer: [sms], caps: [promo_daily]}
  - name: receipts_by_email
    when: {category: receipt}
    then: {prefer: [email]}
"""


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, store_url: str
) -> AsyncIterator[tuple[pb_grpc.SmartDispatchServiceStub, Telemetry, int]]:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "rules.yaml").write_text(RULES)
    providers = tmp_path / "providers.yaml"
    providers.write_text("sms: {type: stub}\nemail: {type: stub}\n")
    settings = Settings(
        host="127.0.0.1", port=0, rules_dir=rules, store_url=store_url, providers_file=providers,
        senders=2,
    )  # fmt: skip
    telemetry = Telemetry.from_settings(settings, metrics_port=0)  # metrics on a free port
    app = App(settings, telemetry)
    try:
        async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield pb_grpc.SmartDispatchServiceStub(channel), telemetry, app.port
    finally:
        await telemetry.close()


async def dispatch(
    stub: pb_grpc.SmartDispatchServiceStub, category: str, user: str, message_id: str
) -> pb.DispatchResponse:
    decide = decide_request(category, user=user, message_id=message_id)
    return await stub.Dispatch(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))


async def traffic(stub: pb_grpc.SmartDispatchServiceStub) -> None:
    """Three people get a promo by SMS (one twice: the cap defers the second), two open it and
    one buys for 30; a person on the deny list gets none; two receipts go by e-mail."""
    for user in ("u1", "u2", "u3"):
        await dispatch(stub, "promo", user, f"promo-{user}")
    await dispatch(stub, "promo", "u1", "promo-u1-again")
    await stub.AddListMember(pb.AddListMemberRequest(list=pb.LIST_KIND_DENY, user_id="u9"))
    await dispatch(stub, "promo", "u9", "promo-u9")
    for n in (1, 2):
        await dispatch(stub, "receipt", f"u{n}", f"receipt-{n}")

    async def all_sent() -> bool:
        for mid in ("promo-u1", "promo-u2", "promo-u3", "receipt-1", "receipt-2"):
            status = (await stub.GetDispatch(pb.GetDispatchRequest(message_id=mid))).status
            if status.state != pb.DISPATCH_STATE_DELIVERED:
                return False
        return True

    await eventually(all_sent, 5, "every dispatch delivered")
    for user in ("u1", "u2"):
        await stub.ReportEvent(
            pb.ReportEventRequest(
                user_id=user, message_id=f"promo-{user}", channel="sms", kind=pb.EVENT_KIND_OPENED
            )
        )
    await stub.ReportEvent(
        pb.ReportEventRequest(
            user_id="u1", message_id="promo-u1", channel="sms", kind=pb.EVENT_KIND_CONVERTED, value=30.0
        )
    )


def sample(metrics: str, name: str, *labels: str) -> float:
    """The value of the one sample of `name` carrying every label."""
    [value] = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name + "{") and all(label in line for label in labels)
    ]
    return value


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    server = request.getfixturevalue("single_redis")
    server.flushall()
    return str(server.url)


async def test_stats_count_the_funnel_cost_and_suppressions_per_channel_and_rule(
    tmp_path: Path, store_url: str
):
    async with serving(tmp_path, store_url) as (stub, telemetry, _):
        await traffic(stub)

        response = await stub.GetStats(pb.GetStatsRequest(group_by=["category", "channel", "rule"]))

        rows = {(r.category, r.channel, r.rule): r for r in response.rows}
        promo = rows[("promo", "sms", "promo_by_sms")]
        assert (promo.decided, promo.sent, promo.opened, promo.converted) == (4, 3, 2, 1)
        assert dict(promo.deferred) == {"deferred_by_cap": 1} and dict(promo.suppressed) == {}
        assert promo.conversion_value == pytest.approx(30.0)
        assert promo.cost == pytest.approx(3 * 0.05)
        denied = rows[("promo", "", "")]
        assert denied.decided == 1 and dict(denied.suppressed) == {"deny_listed": 1} and denied.sent == 0
        receipt = rows[("receipt", "email", "receipts_by_email")]
        assert (receipt.decided, receipt.sent, receipt.opened) == (2, 2, 0)
        assert receipt.cost == pytest.approx(2 * 0.001)

        # filtered and summed over everything else
        only_sms = await stub.GetStats(pb.GetStatsRequest(channel="sms", group_by=["channel"]))
        assert [(r.channel, r.sent, r.opened) for r in only_sms.rows] == [("sms", 3, 2)]
        # by day: today's UTC day
        by_day = await stub.GetStats(pb.GetStatsRequest(group_by=["day"]))
        assert [(r.day, r.decided) for r in by_day.rows] == [(datetime.now(UTC).date().isoformat(), 7)]
        # a range without traffic
        past = datetime.now(UTC) - timedelta(days=30)
        empty = pb.GetStatsRequest()
        empty.start.FromDatetime(past - timedelta(days=1))
        empty.end.FromDatetime(past)
        assert list((await stub.GetStats(empty)).rows) == []

        # Prometheus: reported events and what the sends cost
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{telemetry.metrics_port}/metrics")).text
        assert sample(metrics, "smartdispatch_events_total", 'channel="sms"', 'kind="opened"') == 2
        assert sample(metrics, "smartdispatch_cost_total", 'channel="sms"') == pytest.approx(0.15)


async def test_bad_stats_requests_name_the_field(tmp_path: Path):
    async with serving(tmp_path, "memory://") as (stub, _, _):
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.GetStats(pb.GetStatsRequest(group_by=["day", "weather"]))
        assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "group_by[1]: unknown dimension 'weather'" in (unknown.value.details() or "")

        reversed_range = pb.GetStatsRequest()
        reversed_range.start.FromDatetime(datetime(2026, 12, 2, tzinfo=UTC))
        reversed_range.end.FromDatetime(datetime(2026, 11, 2, tzinfo=UTC))
        with pytest.raises(grpc.aio.AioRpcError) as backwards:
            await stub.GetStats(reversed_range)
        assert backwards.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "start" in (backwards.value.details() or "")


async def test_the_stats_command_prints_the_funnel_per_channel_and_writes_csv_and_a_chart(tmp_path: Path):
    async with serving(tmp_path, "memory://") as (stub, _, port):
        await traffic(stub)
        out = tmp_path / "report"
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smart_dispatch", "stats", "--target", f"127.0.0.1:{port}",
            "--by", "channel", "--out", str(out),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(command.communicate(), 60)

    assert command.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    sms = next(line.split() for line in lines if line.strip().startswith("sms"))
    email = next(line.split() for line in lines if line.strip().startswith("email"))
    # channel, decided, sent, delivered, opened, clicked, converted, open%, click%, conv%, …
    assert sms[1:5] == ["4", "3", "0", "2"] and sms[7] == "66.7%"
    assert email[1:3] == ["2", "2"]
    assert "suppressed:deny_listed 1" in stdout.decode()
    csv_rows = (out / "stats.csv").read_text().splitlines()
    assert csv_rows[0].startswith("channel,decided,sent") and len(csv_rows) == 4  # "", email, sms
    assert (out / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
