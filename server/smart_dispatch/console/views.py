"""The console's pages. Each asks `Operations` (the same answers the gRPC API gives) and renders
a template; the guard (app.py) has already checked the session, the `read` scope and, for a
POST, the CSRF token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from aiohttp import web

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.console.app import PREFIX, SESSION, Console
from smart_dispatch.console.auth import COOKIE, Session, csrf_ok
from smart_dispatch.console.charts import funnels, hour_bars, queue_bars, shares
from smart_dispatch.errors import InvalidRequestError, NotFoundError

#: Dead letters listed on one page, and re-driven at most by one "re-drive all".
DEAD_LETTERS_SHOWN = 100
REDRIVE_ALL_LIMIT = 1000
#: Re-driven ids named back on the page after a re-drive.
_NAMED = 10
#: Reason codes that tell why a message waits or does not go (the headline picks the first).
_WHY_NOT_NOW = ("channel_selected", "allow_listed", "caps_bypassed", "quiet_hours_bypassed", "learned_choice")


class Views:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.ops = console.operations

    # -- overview ---------------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        depth = await self.ops.queue_depth()
        end = datetime.now(UTC)
        start = end - timedelta(hours=24)
        stats_request = pb.GetStatsRequest(group_by=["channel"])
        stats_request.start.FromDatetime(start)
        stats_request.end.FromDatetime(end)
        stats = await self.ops.stats(stats_request)
        return self.console.page(
            request,
            "overview.html",
            rules=self.ops.rules_status(),
            depth=depth,
            lanes=queue_bars(depth),
            funnels=funnels(stats),
            days=(start.date().isoformat(), end.date().isoformat()),
        )

    # -- one message ------------------------------------------------------------------------------

    async def lookup(self, request: web.Request) -> web.StreamResponse:
        query = request.query.get("id", "").strip()
        if not query:
            return self.console.page(
                request, "lookup.html", query="", dispatch=None, decision=None, why="", note=""
            )
        dispatch = await self._dispatch_for(query)
        message_id = dispatch.message_id if dispatch is not None else query
        decision, note = None, ""
        try:
            decision = await self.ops.decision(message_id)
        except NotFoundError as exc:
            note = str(exc)
        if dispatch is None and decision is None:
            raise NotFoundError(
                f"no dispatch and no decision for {query!r} (as a dispatch id or a message id)"
            )
        return self.console.page(
            request,
            "lookup.html",
            query=query,
            dispatch=dispatch,
            decision=decision,
            why="" if decision is None else why(decision.decision),
            note=note,
        )

    async def _dispatch_for(self, query: str) -> pb.DispatchStatus | None:
        """The dispatch `query` names as a dispatch id, else as a message id."""
        for field in ("dispatch_id", "message_id"):
            try:
                return await self.ops.dispatch(**{field: query})
            except NotFoundError:
                continue
        return None

    # -- dead letters -----------------------------------------------------------------------------

    async def dead_letters(self, request: web.Request) -> web.StreamResponse:
        session = request[SESSION]
        assert session is not None  # the guard let a session without one through: a bug
        return self.console.page(
            request,
            "dead_letters.html",
            items=await self.ops.dead_letters(DEAD_LETTERS_SHOWN),
            total=(await self.ops.queue_depth())["dead_letters"],
            redriven=_count(request.query.get("redriven", "")),
            named=request.query.getall("id", [])[:_NAMED],
            can_redrive=session.allows("admin"),
            shown=DEAD_LETTERS_SHOWN,
            all_limit=REDRIVE_ALL_LIMIT,
        )

    async def redrive(self, request: web.Request) -> web.StreamResponse:
        self.console.require(request, "admin", "Re-driving dead letters")
        form = await request.post()
        ids = tuple(str(value) for value in form.getall("dispatch_id", []))
        if form.get("all"):
            redriven = await self.ops.redrive(REDRIVE_ALL_LIMIT)
        elif ids:
            redriven = await self.ops.redrive(len(ids), ids)
        else:
            raise InvalidRequestError("dispatch_id", "choose a dead letter to re-drive, or re-drive all")
        named = "".join(f"&id={_quote(status.dispatch_id)}" for status in redriven[:_NAMED])
        raise web.HTTPSeeOther(f"{PREFIX}/dead-letters?redriven={len(redriven)}{named}")

    # -- one person -------------------------------------------------------------------------------

    async def user(self, request: web.Request) -> web.StreamResponse:
        user_id = request.query.get("id", "").strip()
        if not user_id:
            return self.console.page(request, "user.html", user_id="")
        engagement = await self.ops.engagement(user_id)
        return self.console.page(
            request,
            "user.html",
            user_id=user_id,
            lists=[
                pb.ListKind.Name(kind).removeprefix("LIST_KIND_").lower()
                for kind in (await self.ops.list_memberships(user_id)).lists
            ],
            caps=await self.ops.caps_in_use(user_id),
            preferences=await self.ops.preferences(user_id),
            engagement=engagement,
            weekday=hour_bars(engagement.weekday_hours),
            weekend=hour_bars(engagement.weekend_hours),
            active=list(zip(engagement.active_utc_hours, shares(engagement.active_utc_hours), strict=True)),
        )

    # -- login ------------------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        next_page = _next_page(request.query.get("next", ""))
        if self.console.sessions.open:
            raise web.HTTPSeeOther(next_page)
        session = request[SESSION]
        if session is not None and session.caller is not None:
            raise web.HTTPSeeOther(next_page)
        return self._login_page(request, session, next_page, "", 200)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        next_page = _next_page(str(form.get("next", "")))
        session = request[SESSION]
        if self.console.sessions.open:
            raise web.HTTPSeeOther(next_page)
        if not csrf_ok(session, str(form.get("csrf", ""))):
            return self._login_page(request, None, next_page, "The login form expired: try again.", 403)
        signed_in = self.console.sessions.login(session, str(form.get("token", "")))
        if signed_in is None:
            return self._login_page(request, session, next_page, "Unknown token.", 401)
        redirect = web.HTTPSeeOther(next_page)
        self.console.set_cookie(request, redirect, signed_in)
        raise redirect

    def _login_page(
        self, request: web.Request, session: Session | None, next_page: str, error: str, status: int
    ) -> web.Response:
        """The login form, with a session to carry its CSRF token (a new one when none)."""
        new = session is None
        if session is None:
            session = self.console.sessions.start()
        request[SESSION] = session
        page = self.console.page(request, "login.html", status=status, next_page=next_page, error=error)
        if new:
            self.console.set_cookie(request, page, session)
        return page

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.console.sessions.end(request[SESSION])
        redirect = web.HTTPSeeOther(f"{PREFIX}/login")
        redirect.del_cookie(COOKIE, path=PREFIX)
        raise redirect

    # -- one-click unsubscribe (no login: the signed token is the permission) -------------------------

    async def unsubscribe_form(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token", "")
        error = "" if token else "This link has no unsubscribe token."
        return self.console.page(
            request, "unsubscribe.html", status=200 if token else 400, token=token, done=False, error=error
        )

    async def unsubscribe(self, request: web.Request) -> web.StreamResponse:
        """RFC 8058: the mail client POSTs `List-Unsubscribe=One-Click` to the URL of the
        `List-Unsubscribe` header; the token is in the URL (or, from our own page, the form)."""
        token = request.query.get("token", "")
        if not token:
            token = str((await request.post()).get("token", ""))
        if not token:
            raise InvalidRequestError("token", "is required")
        await self.ops.unsubscribe(token)
        return self.console.page(request, "unsubscribe.html", token="", done=True, error="")


def why(decision: pb.DecideResponse) -> str:
    """The decision in one sentence: "Sent by sms (rule otp)", "Deferred until … : quiet_hours
    (rule night)", "Not sent: deny_listed"."""
    channel = decision.steps[0].channel if decision.steps else ""
    cause = next((r for r in decision.reasons if r.code not in _WHY_NOT_NOW), None)
    chosen = next((r for r in decision.reasons if r.code == "channel_selected"), None)
    by = f" (rule {chosen.rule})" if chosen is not None and chosen.rule else ""
    because = ""
    if cause is not None:
        because = f": {cause.code}" + (f" (rule {cause.rule})" if cause.rule else "")
    if decision.verdict == pb.VERDICT_SEND:
        return f"Sent by {channel}{by}" if channel else "Sent"
    if decision.verdict == pb.VERDICT_DEFER:
        when = decision.send_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"Deferred until {when}, then by {channel}{because}"
    return f"Not sent{because}"


def _next_page(value: str) -> str:
    """Where to go after login: a console path only (never another site)."""
    if value.startswith(f"{PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/"


def _quote(value: str) -> str:
    return quote(value, safe="")


def _count(value: str) -> int:
    """A count from the query string; -1 when absent or not a number."""
    return int(value) if value.isdigit() else -1
