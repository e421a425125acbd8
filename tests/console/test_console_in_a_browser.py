"""The web console as an operator uses it: a real sidecar, real Chromium, real clicks. Each
test writes a screenshot of every page it visits under its tmp_path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

from tests.console.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, Sidecar, running_sidecar
from tests.e2e.decide_builders import decide_request
from tests.support.redis_servers import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.browser


async def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


async def log_in(page: Any, sidecar: Sidecar, token: str) -> None:
    from playwright.async_api import expect

    await page.goto(f"{sidecar.base}/console/")
    await expect(page).to_have_url(re.compile(r"/console/login\?next="))
    await page.fill("#token", token)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("h1")).to_have_text("Overview")


async def a_dead_letter(sidecar: Sidecar, message_id: str) -> pb.DispatchStatus:
    """An alert the SMS gateway refuses for good (400): every channel failed."""
    sidecar.sink.script.append(400)
    accepted = await sidecar.dispatch("alert", message_id)
    failed = await sidecar.settled(accepted.dispatch_id)
    assert failed.state == pb.DISPATCH_STATE_FAILED and failed.dead_lettered
    return failed


async def test_an_operator_follows_a_dead_letter_from_lookup_to_redrive(
    sidecar: Sidecar, page: Any, tmp_path
):
    from playwright.async_api import expect

    # Given a dead letter: the gateway refused the alert for good
    failed = await a_dead_letter(sidecar, "m-alert-1")

    # When the operator logs in, the overview shows the rules, the queues and the dead letter
    await log_in(page, sidecar, OPERATOR_TOKEN)
    body = page.locator("body")
    await expect(body).to_contain_text("Signed in as operator")
    assert sidecar.app.runtime is not None
    await expect(body).to_contain_text(sidecar.app.runtime.rules.status().version[:12])
    await expect(page.locator("#reload-error")).to_have_text("Last reload: no error")
    await expect(page.locator("#dead-letter-count")).to_have_text("1")
    await expect(page.locator("td[data-lane=critical]")).to_have_text("0")
    await expect(page.locator(".funnel[data-channel=sms]")).to_contain_text("decided")
    await shot(page, tmp_path, "overview")

    # When they look the message up
    await page.get_by_role("link", name="Message lookup").click()
    await page.fill("#id", "m-alert-1")
    await page.get_by_role("button", name="Look up").click()

    # Then they see why it went by SMS, and how that ended
    await expect(page.locator("#why")).to_have_text("Sent by sms (rule alert_by_sms)")
    await expect(page.locator("#decision")).to_contain_text("sms_per_day")
    await expect(page.locator("#dispatch-state")).to_have_text("failed")
    await expect(page.locator("#attempts")).to_contain_text("permanent error")
    await expect(page.locator("#timeline")).to_contain_text("every channel failed")
    await shot(page, tmp_path, "lookup")

    # When they follow it to the dead letters and re-drive it (the gateway accepts now)
    await page.get_by_role("link", name="Re-drive it from the dead letters").click()
    row = page.locator(f"tr[data-dispatch='{failed.dispatch_id}']")
    await expect(row).to_contain_text("m-alert-1")
    await shot(page, tmp_path, "dead-letters")
    await row.get_by_role("button", name="Re-drive").click()

    # Then the page says so, and the list is empty
    await expect(page.locator("#flash")).to_have_text(
        f"Re-driven 1 dead letter through the current rules: {failed.dispatch_id}."
    )
    await expect(page.locator("#no-dead-letters")).to_be_visible()
    await shot(page, tmp_path, "dead-letters-redriven")

    # And following the dispatch shows it delivered, with both attempts
    await page.locator("#flash a").click()

    async def delivered() -> bool:
        await page.reload()
        return await page.locator("#dispatch-state").inner_text() == "delivered"

    await eventually(delivered, what="the re-driven dispatch shows as delivered")
    await expect(page.locator("#attempts tr.delivered")).to_have_count(1)
    await expect(page.locator("#attempts tr.permanent_error")).to_have_count(1)
    await shot(page, tmp_path, "lookup-delivered")

    # When they open the person: lists, caps in use, engagement
    await page.locator("#dispatch").get_by_role("link", name="u-ada").click()
    await expect(page.locator("h1")).to_have_text("User u-ada")
    await expect(page.locator("#lists")).to_contain_text("On no list.")
    await expect(page.locator("tr[data-cap=sms_per_day] td").nth(1)).to_have_text("1")
    await expect(page.locator("tr[data-cap=promo_per_hour] td").nth(1)).to_have_text("0")
    await expect(page.locator("#engagement tr[data-channel=sms]")).to_be_visible()
    await shot(page, tmp_path, "user")


async def test_a_read_only_token_sees_the_pages_but_gets_403_on_redrive(
    sidecar: Sidecar, page: Any, tmp_path
):
    from playwright.async_api import expect

    # Given a dead letter, and a viewer (scope read) logged in
    failed = await a_dead_letter(sidecar, "m-alert-2")
    await log_in(page, sidecar, VIEWER_TOKEN)
    await expect(page.locator("body")).to_contain_text("Signed in as viewer (read)")

    # When the viewer opens the dead letters and presses Re-drive
    await page.get_by_role("link", name="Dead letters").click()
    await expect(page.locator("body")).to_contain_text("Re-driving needs the admin scope.")
    async with page.expect_response(lambda response: response.url.endswith("/redrive")) as answered:
        await page.locator(f"tr[data-dispatch='{failed.dispatch_id}']").get_by_role("button").click()

    # Then the answer is 403, the page says why, and the dead letter stays one
    assert (await answered.value).status == 403
    await expect(page.locator("#refused")).to_have_text(
        "Re-driving dead letters: this needs the admin scope, and viewer has read."
    )
    await shot(page, tmp_path, "redrive-refused")
    assert (await sidecar.status(failed.dispatch_id)).dead_lettered


async def test_without_a_tokens_file_the_console_is_open_and_says_so(tmp_path, monkeypatch, page: Any):
    from playwright.async_api import expect

    async with running_sidecar(tmp_path, monkeypatch, secured=False) as sidecar:
        await page.goto(f"{sidecar.base}/console/")
        await expect(page.locator("h1")).to_have_text("Overview")
        await expect(page.locator(".banner")).to_contain_text(
            "this console is open to anyone who can reach this port"
        )
        await shot(page, tmp_path, "open-overview")
        await page.goto(f"{sidecar.base}/console/lookup?id=never-sent")
        await expect(page.locator("#error")).to_contain_text("no dispatch and no decision for 'never-sent'")
        await shot(page, tmp_path, "lookup-not-found")


@pytest.mark.redis
async def test_queue_depth_on_redis_per_lane_and_scheduled(
    tmp_path, monkeypatch, page: Any, single_redis: RedisServer
):
    from playwright.async_api import expect

    # Given a Redis store, no senders (so work waits), and work in three lanes plus a deferral
    single_redis.flushall()
    overrides = {"store_url": single_redis.url, "senders": 0, "key_prefix": "console"}
    async with running_sidecar(tmp_path, monkeypatch, **overrides) as sidecar:
        await sidecar.dispatch("alert", "m-critical")  # alerts go in the critical lane
        await sidecar.dispatch("promo", "m-promo-1")  # normal
        deferred = await sidecar.dispatch("promo", "m-promo-2")  # over promo_per_hour: deferred
        assert deferred.decision.verdict == pb.VERDICT_DEFER
        batch = pb.DispatchBatchRequest()
        for n in range(2):
            item = decide_request(
                "promo", user=f"u-{n}", message_id=f"m-bulk-{n}", addresses={"sms": "+1555"}
            )
            batch.requests.add(message=item.message, recipient=item.recipient)
        await sidecar.stub.DispatchBatch(batch, metadata=sidecar.metadata)  # batches go in bulk

        # When the operator opens the overview
        await log_in(page, sidecar, OPERATOR_TOKEN)

        # Then each lane shows what waits in it
        for lane, count in {"critical": 1, "high": 0, "normal": 1, "bulk": 2, "scheduled": 1}.items():
            await expect(page.locator(f"td[data-lane={lane}]")).to_have_text(str(count))
        await expect(page.locator("#queue-depth svg")).to_be_visible()
        await shot(page, tmp_path, "overview-redis")


async def test_a_person_unsubscribes_from_the_link_of_an_email_without_logging_in(
    tmp_path, monkeypatch, page: Any
):
    from playwright.async_api import expect
    from smart_dispatch.preferences.unsubscribe_token import UnsubscribeTokens

    # Given the link an e-mail carried: promo by SMS for u-ada, signed with the sidecar's secret
    secret = "unsubscribe-secret-of-this-test"
    overrides = {"unsubscribe_secret": secret, "public_url": "http://127.0.0.1"}
    async with running_sidecar(tmp_path, monkeypatch, **overrides) as sidecar:
        token = UnsubscribeTokens(secret).sign("u-ada", "promo", "sms")

        # When the person opens it: a page that asks, and changes nothing yet
        await page.goto(f"{sidecar.base}/unsubscribe?token={token}")
        await expect(page.locator("h1")).to_have_text("Unsubscribe?")
        assert sidecar.app.operations is not None
        assert not (await sidecar.app.operations.preferences("u-ada")).preferences.consents
        await shot(page, tmp_path, "unsubscribe")

        # Then one click records the opt-out
        await page.get_by_role("button", name="Unsubscribe").click()
        await expect(page.locator("#done")).to_have_text("You will not get these messages any more.")
        stored = (await sidecar.app.operations.preferences("u-ada")).preferences
        assert [(c.category, c.channel, c.allowed) for c in stored.consents] == [("promo", "sms", False)]
        await shot(page, tmp_path, "unsubscribed")

        # And an altered link says it does not work
        await page.goto(f"{sidecar.base}/unsubscribe?token={token[:-2]}xx")
        await page.get_by_role("button", name="Unsubscribe").click()
        await expect(page.locator("#error")).to_contain_text("signature does not match")
