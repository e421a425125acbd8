"""Take the README's picture of the web console: docs/console-overview.png.

Starts a sidecar in this process (the shipped rules, memory store, admin HTTP port on a free
port), sends it a small day of traffic (alerts, transactional mail, marketing; one SMS number
the gateway refuses for good, so there are dead letters; opens, clicks and conversions reported
back), then has Debian's chromium (through Playwright) photograph the overview. Nothing leaves
this machine: the SMS gateway is an HTTP server on loopback in this script.

    .venv/bin/python scripts/console_screenshot.py [--out docs/console-overview.png]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import grpc
from aiohttp import web
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.config import Settings
from smart_dispatch.telemetry import Telemetry

ROOT = Path(__file__).resolve().parents[1]
REFUSED_NUMBER = "+15550199"
E = pb.EventKind


async def sms_gateway() -> tuple[web.AppRunner, str]:
    """An SMS gateway on loopback: refuses REFUSED_NUMBER for good (400), accepts the rest."""

    async def send(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("to") == REFUSED_NUMBER:
            return web.json_response({"error": "unknown subscriber"}, status=400)
        return web.json_response({"id": f"sms-{body.get('to')}"})

    app = web.Application()
    app.router.add_post("/sms", send)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def request(n: int, category: str, addresses: dict[str, str]) -> pb.DispatchRequest:
    message = pb.Message(id=f"demo-{category}-{n}", category=category)
    message.data.update({"text": "Hello", "subject": "Hello"})
    recipient = pb.Recipient(user_id=f"user-{n}", timezone="Etc/GMT", addresses=addresses)
    return pb.DispatchRequest(message=message, recipient=recipient)


async def traffic(stub: pb_grpc.SmartDispatchServiceStub, metadata: tuple[tuple[str, str], ...]) -> None:
    """Dispatch a few messages per person, then report receipts and engagement for what went."""
    accepted: list[tuple[str, str]] = []  # (user, dispatch id)
    for n in range(40):
        addresses = {"sms": f"+1555010{n:02d}", "email": f"user{n}@example.com", "in_app": f"inbox-{n}"}
        if n % 13 == 0:  # reachable by SMS alone, at a number the gateway refuses: dead letters
            addresses = {"sms": REFUSED_NUMBER}
        for k, category in enumerate(("alert", "transactional", "marketing", "marketing")[: 2 + n % 3]):
            item = request(n, category, addresses)
            item.message.id += f"-{k}"
            reply = await stub.Dispatch(item, metadata=metadata)
            accepted.append((item.recipient.user_id, reply.dispatch_id))
    await asyncio.sleep(1.0)  # the senders deliver
    for index, (user, dispatch_id) in enumerate(accepted):
        status = (
            await stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=dispatch_id), metadata=metadata)
        ).status
        if status.state != pb.DISPATCH_STATE_DELIVERED:
            continue
        channel = status.attempts[-1].channel
        kinds = [E.EVENT_KIND_DELIVERED] if index % 10 else []
        kinds += [E.EVENT_KIND_OPENED] if index % 2 == 0 else []
        kinds += [E.EVENT_KIND_CLICKED] if index % 5 == 0 else []
        kinds += [E.EVENT_KIND_CONVERTED] if index % 11 == 0 else []
        for kind in kinds:
            event = pb.ReportEventRequest(
                user_id=user, message_id=status.message_id, channel=channel, kind=kind
            )
            if kind == E.EVENT_KIND_CONVERTED:
                event.value = 12.5
            await stub.ReportEvent(event, metadata=metadata)


async def main(out: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("needs Debian's chromium: apt-get install chromium")
    from playwright.async_api import async_playwright

    gateway, url = await sms_gateway()
    with tempfile.TemporaryDirectory() as scratch:
        providers = Path(scratch) / "providers.yaml"
        tokens = Path(scratch) / "tokens.yaml"
        tokens.write_text(
            "tokens:\n  - {name: operator, token_env: SD_DEMO_OPERATOR_TOKEN, scopes: [admin, decide]}\n"
        )
        os.environ["SD_DEMO_OPERATOR_TOKEN"] = token = secrets.token_urlsafe(24)
        providers.write_text(
            f'sms: {{type: http_sms, url: "{url}/sms", timeout_s: 2}}\nemail: {{type: stub}}\n'
            "push: {type: stub}\nin_app: {type: inbox}\n"
        )
        settings = Settings(
            port=0,
            rules_dir=ROOT / "rules",
            providers_file=providers,
            watch_rules=False,
            retry_attempts=1,
            auth_tokens_file=tokens,
        )
        telemetry = Telemetry.from_settings(settings, metrics_port=0)
        try:
            async with (
                App(settings, telemetry) as app,
                grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch,
            ):
                await traffic(pb_grpc.SmartDispatchServiceStub(ch), (("authorization", f"Bearer {token}"),))
                async with async_playwright() as playwright:
                    browser = await playwright.chromium.launch(executable_path=chromium)
                    page = await browser.new_page(viewport={"width": 1100, "height": 900})
                    await page.goto(f"http://127.0.0.1:{app.admin_port}/console/")  # the login form
                    await page.fill("#token", token)
                    await page.get_by_role("button", name="Log in").click()
                    await page.wait_for_selector("#dead-letter-count")
                    await page.screenshot(path=str(out), full_page=True)
                    await browser.close()
        finally:
            await telemetry.close()
            await gateway.cleanup()
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console-overview.png")
    asyncio.run(main(parser.parse_args().out))
