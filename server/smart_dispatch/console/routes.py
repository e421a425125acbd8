"""The console's routes on the admin HTTP port (admin_http.py), next to `/metrics`:

    GET  /console/                      overview: rules, queues, dead letters, 24 h funnel
    GET  /console/login                 the login form (paste a bearer token)
    POST /console/login, /console/logout
    GET  /console/lookup?id=…           one message: by dispatch id or message id
    GET  /console/dead-letters          the dead letters
    POST /console/dead-letters/redrive  re-drive one (dispatch_id) or all (all=1); scope admin
    GET  /console/user?id=…             one person: preferences, lists, caps, engagement
    GET  /console/static/…              the stylesheet
    GET  /unsubscribe?token=…           a confirmation page with one button (no login)
    POST /unsubscribe?token=…           RFC 8058 one-click: records the opt-out (no login)

Every /console page needs the `read` scope (re-drive: `admin`), every POST a CSRF token.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from smart_dispatch.admin_http import MAX_BODY_BYTES, AdminServer
from smart_dispatch.api.operations import Operations
from smart_dispatch.console.app import PREFIX, Console
from smart_dispatch.console.auth import Sessions
from smart_dispatch.console.views import Views
from smart_dispatch.security import TokenTable

STATIC = Path(__file__).parent / "static"


def mount_console(admin: AdminServer, operations: Operations, tokens: TokenTable | None) -> Console:
    """Add the console and `/unsubscribe` to the admin HTTP port (before it starts). `/` stays
    unrouted (404), as it was when the port served only `/metrics`.
    `tokens` None: the console is open to anyone who reaches the port (and says so)."""
    console = Console(operations, Sessions(tokens))
    views = Views(console)
    app = web.Application(middlewares=[console.guard], client_max_size=MAX_BODY_BYTES)
    app.add_routes(
        [
            web.get("/", views.overview, name="overview"),
            web.get("/login", views.login_form, name="login_form"),
            web.post("/login", views.login, name="login"),
            web.post("/logout", views.logout, name="logout"),
            web.get("/lookup", views.lookup, name="lookup"),
            web.get("/dead-letters", views.dead_letters, name="dead_letters"),
            web.post("/dead-letters/redrive", views.redrive, name="redrive"),
            web.get("/user", views.user, name="user"),
            web.static("/static", STATIC, name="static"),
        ]
    )
    admin.mount(PREFIX, app)

    async def unsubscribe_form(request: web.Request) -> web.StreamResponse:
        return await console.public_headers(request, views.unsubscribe_form)

    async def unsubscribe(request: web.Request) -> web.StreamResponse:
        return await console.public_headers(request, views.unsubscribe)

    admin.add_routes(
        [
            web.get("/unsubscribe", unsubscribe_form),
            web.post("/unsubscribe", unsubscribe),
        ]
    )
    return console
