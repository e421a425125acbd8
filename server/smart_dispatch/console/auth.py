"""Who is at the console: browser sessions over the bearer-token scopes (security.py).

An operator pastes a token into the login form once. The token is checked against the tokens
file (SD_AUTH_TOKENS) and forgotten: the session keeps the caller's name and scopes, server-side
in this process, under a random session id. The browser holds only that id and its HMAC (a key
random per process), in an HttpOnly, SameSite=Strict cookie scoped to /console; a forged or
altered cookie, or one from before a restart, matches nothing and means "log in again".

Every session carries a random CSRF token; every POST form sends it back and is refused (403)
without it. Logging in replaces the session (a fresh id), so an id seen before login is useless
after it.

Without a tokens file the console is open, like the gRPC API: every visitor gets a session with
every scope (and its CSRF token), and the pages say so.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from smart_dispatch.security import GRANTED_BY, SCOPES, Caller, TokenTable

COOKIE = "sd_console"
#: A session ends this long after login (or, open, after the first visit).
SESSION_TTL_S = 8 * 3600.0
#: Sessions kept per process at most; the oldest go first. Sessions of a login form not used
#: yet are kept apart, fewer and shorter: a login page opened in a loop can neither fill the
#: memory nor push out the sessions of people who logged in.
MAX_SESSIONS = 5000
MAX_LOGIN_FORMS = 1000
LOGIN_FORM_TTL_S = 15 * 60.0
OPEN_CALLER = Caller("anyone (no tokens file)", frozenset(SCOPES))


@dataclass(frozen=True, slots=True)
class Session:
    """`caller` is None before login. `expires_at` is on the `Sessions` clock."""

    session_id: str
    csrf: str
    caller: Caller | None
    expires_at: float

    def allows(self, scope: str) -> bool:
        """Whether the caller holds `scope` or a scope that grants it."""
        return self.caller is not None and bool(self.caller.scopes & GRANTED_BY[scope])


class Sessions:
    """The console's sessions in this process. `tokens` None: the console is open."""

    def __init__(
        self,
        tokens: TokenTable | None,
        *,
        ttl_s: float = SESSION_TTL_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self._key = secrets.token_bytes(32)
        self._ttl_s = ttl_s
        self._max = max_sessions
        self._clock = clock
        self._signed_in: OrderedDict[str, Session] = OrderedDict()
        self._login_forms: OrderedDict[str, Session] = OrderedDict()

    @property
    def open(self) -> bool:
        return self.tokens is None

    def from_cookie(self, value: str | None) -> Session | None:
        """The live session a cookie value names; None when absent, forged, unknown or expired."""
        if not value:
            return None
        session_id, _, mac = value.partition(".")
        if not session_id or not hmac.compare_digest(mac.encode(), self._mac(session_id).encode()):
            return None
        for table in (self._signed_in, self._login_forms):
            session = table.get(session_id)
            if session is None:
                continue
            if session.expires_at <= self._clock():
                del table[session_id]
                return None
            return session
        return None

    def cookie_value(self, session: Session) -> str:
        return f"{session.session_id}.{self._mac(session.session_id)}"

    def start(self, caller: Caller | None = None) -> Session:
        """A new session (open console: with every scope)."""
        if caller is None and self.open:
            caller = OPEN_CALLER
        table, limit = (self._signed_in, self._max) if caller else (self._login_forms, MAX_LOGIN_FORMS)
        ttl_s = self._ttl_s if caller else min(self._ttl_s, LOGIN_FORM_TTL_S)
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), caller, self._clock() + ttl_s)
        table[session.session_id] = session
        while len(table) > limit:
            table.popitem(last=False)
        return session

    def login(self, previous: Session | None, token: str) -> Session | None:
        """A new session for the caller `token` belongs to (the previous one ends); None when
        the token is unknown."""
        caller = None if self.tokens is None else self.tokens.caller(token.strip())
        if caller is None:
            return None
        self.end(previous)
        return self.start(caller)

    def end(self, session: Session | None) -> None:
        if session is not None:
            self._signed_in.pop(session.session_id, None)
            self._login_forms.pop(session.session_id, None)

    def _mac(self, session_id: str) -> str:
        return hmac.new(self._key, session_id.encode(), hashlib.sha256).hexdigest()


def csrf_ok(session: Session | None, sent: str) -> bool:
    """Whether a form's CSRF token is the session's."""
    return session is not None and bool(sent) and hmac.compare_digest(session.csrf.encode(), sent.encode())
