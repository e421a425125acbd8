"""The console's machinery: templates, the session and CSRF guard, error pages, and the
headers every page carries. Views (views.py) only ask `Operations` and render; routes.py
puts both on the admin HTTP port."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web
from google.protobuf import duration_pb2, timestamp_pb2

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.api.operations import Operations
from smart_dispatch.console.auth import COOKIE, SESSION_TTL_S, Session, Sessions, csrf_ok
from smart_dispatch.errors import (
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    SmartDispatchError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
PREFIX = "/console"
#: What a page may load: its own stylesheet, nothing else (no scripts, no frames, no fetches).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: The session of a request (None: no session), set by the guard.
SESSION: web.RequestKey[Session | None] = web.RequestKey("session")
_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict", 500: "Error"}
#: Routes reachable without a session (by route name).
_PUBLIC = frozenset({"login", "login_form", "static"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(SmartDispatchError):
    """The session's caller lacks `scope` for what it asked, or a POST its CSRF token (a 403
    page: the guard catches it before any other `SmartDispatchError`)."""

    def __init__(self, scope: str, what: str) -> None:
        super().__init__(f"{what} needs the {scope} scope")
        self.scope = scope
        self.what = what


class Console:
    """One sidecar's console: `operations` answer, `sessions` say who asks."""

    def __init__(self, operations: Operations, sessions: Sessions) -> None:
        self.operations = operations
        self.sessions = sessions
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("smart_dispatch.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(
            when=_when, duration=_duration, state=_state, verdict=_verdict, number=_number, q=_q
        )

    def page(self, request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
        """`template` rendered (autoescaped) with the session's details."""
        session: Session | None = request.get(SESSION)
        html = self.templates.get_template(template).render(
            session=session,
            caller=None if session is None else session.caller,
            csrf="" if session is None else session.csrf,
            open_console=self.sessions.open,
            path=request.path,
            **context,
        )
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def error_page(
        self, request: web.Request, status: int, error: str = "", refused: Refused | None = None
    ) -> web.Response:
        title = _TITLES.get(status, "Unavailable")
        return self.page(request, "error.html", status=status, title=title, error=error, refused=refused)

    def require(self, request: web.Request, scope: str, what: str) -> Session:
        """The request's session if its caller holds `scope`; else raises `Refused`."""
        session: Session | None = request.get(SESSION)
        if session is None or not session.allows(scope):
            raise Refused(scope, what)
        return session

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Sessions, scope `read` for every page, CSRF for every POST, error pages, headers."""
        session = self.sessions.from_cookie(request.cookies.get(COOKIE))
        fresh = session is None and self.sessions.open
        if fresh:
            session = self.sessions.start()
        request[SESSION] = session
        new = session if fresh else None
        try:
            response = await self._guarded(request, handler, session)
        except web.HTTPException as exc:  # redirects, and 404 / 405 from the router
            self._finish(request, exc, new)
            raise
        except Refused as exc:
            response = self.error_page(request, 403, refused=exc)
        except SmartDispatchError as exc:
            response = self.error_page(request, http_status_for(exc), str(exc))
        except Exception:
            log.exception("console page %s failed", request.path)
            response = self.error_page(request, 500, "internal error (logged by the server)")
        self._finish(request, response, new)
        return response

    def _finish(self, request: web.Request, response: web.StreamResponse, new: Session | None) -> None:
        """The page's headers, and the cookie of a session started by this request."""
        if new is not None:
            self.set_cookie(request, response, new)
        response.headers.update(_HEADERS)

    async def _guarded(
        self, request: web.Request, handler: Handler, session: Session | None
    ) -> web.StreamResponse:
        if request.match_info.route.name in _PUBLIC:
            return await handler(request)
        if session is None or session.caller is None:
            login = f"{PREFIX}/login?next={quote(request.path_qs, safe='')}"
            raise web.HTTPSeeOther(login)
        self.require(request, "read", "The console")
        if request.method == "POST":
            form = await request.post()
            if not csrf_ok(session, str(form.get("csrf", ""))):
                raise Refused("csrf", "This form has expired (or came from another site): reload the page")
        return await handler(request)

    def set_cookie(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            self.sessions.cookie_value(session),
            path=PREFIX,
            max_age=int(SESSION_TTL_S),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )

    async def public_headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Headers and error pages for the routes outside /console (unsubscribe)."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(_HEADERS)
            raise
        except SmartDispatchError as exc:
            status = http_status_for(exc)
            response = self.page(
                request, "unsubscribe.html", status=status, done=False, error=str(exc), token=""
            )
        response.headers.update(_HEADERS)
        return response


def http_status_for(exc: SmartDispatchError) -> int:
    """The one place console errors become HTTP statuses (as api/status.py for gRPC)."""
    if isinstance(exc, Refused):
        return 403
    if isinstance(exc, InvalidRequestError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, NotReadyError | StoreUnavailableError):
        return 503
    return 409  # ConflictError and the rest: the request does not fit the state


# -- template filters ---------------------------------------------------------------------------


def _when(ts: timestamp_pb2.Timestamp | datetime | None) -> str:
    """An instant in UTC to the second; "—" when unset."""
    if isinstance(ts, timestamp_pb2.Timestamp):
        if not ts.seconds and not ts.nanos:
            return "—"
        ts = ts.ToDatetime(tzinfo=UTC)
    if ts is None:
        return "—"
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(value: duration_pb2.Duration | float) -> str:
    seconds = value.ToTimedelta().total_seconds() if isinstance(value, duration_pb2.Duration) else value
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def _state(value: int) -> str:
    """DISPATCH_STATE_WAITING_ENGAGEMENT -> "waiting engagement"."""
    return pb.DispatchState.Name(value).removeprefix("DISPATCH_STATE_").replace("_", " ").lower()  # type: ignore[arg-type]


def _verdict(value: int) -> str:
    return pb.Verdict.Name(value).removeprefix("VERDICT_").lower()  # type: ignore[arg-type]


def _number(value: float) -> str:
    """Counts as integers when whole, else one decimal (decayed counts)."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _q(value: str) -> str:
    """A query-string value."""
    return quote(value, safe="")
