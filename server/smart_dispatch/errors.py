"""The exception tree: every error Smart Dispatch raises on purpose is a `SmartDispatchError`.

The classes that concern more than one module are defined here; a family's specific subclasses
live with the code that raises them (the module is named on their line) and derive from a class
of this module. gRPC status codes are mapped in exactly one place, `api/status.py` (the status
is on the right); the web console maps to HTTP statuses in `console/app.py`.

    SmartDispatchError
    ├── ConfigurationError          bad settings, or an unknown backend / provider name
    │   └── ProviderConfigError     a providers-file entry is wrong (channels/registry.py)
    ├── InvalidRequestError         a request field is missing or wrong      (INVALID_ARGUMENT)
    │   └── UnsubscribeTokenError   an unsubscribe token is malformed, forged or expired
    ├── RuleFileError               a rule file is invalid: file and line (FAILED_PRECONDITION)
    ├── EngineError                 durable-rules refused a ruleset or a fact
    ├── TemplateError               a template cannot be rendered for a channel
    ├── ProviderError               one send attempt failed: retryable, retry_after_s, code
    │   ├── CircuitOpenError        the channel's breaker is open (dispatch/resilience.py)
    │   └── OverRate                the provider's rate has no slot now (ratelimit/provider.py)
    ├── NotReadyError               no ruleset is loaded yet                      (UNAVAILABLE)
    ├── NotFoundError               no such dispatch, decision, ...                 (NOT_FOUND)
    ├── ConflictError               the operation does not fit the state (FAILED_PRECONDITION)
    │   └── RequiredCategoryError   opting out of a category the rules mark required
    ├── StoreError                  a store failed; `retryable` False
    │   └── StoreUnavailableError   the store cannot be reached in time           (UNAVAILABLE)
    ├── ForbiddenDestination        the webhook policy refuses a destination; also an OSError,
    │                               so that aiohttp wraps it (channels/destinations.py)
    ├── ReceiptRejected             a delivery receipt push fails its signature or token (403)
    │                               or cannot be parsed (400) (channels/receipts.py)
    ├── Refused                     a console session lacks a scope or its CSRF token: a 403
    │                               page (console/app.py)
    └── _Overflow                   a rule does not fit one engine shard; never leaves
                                    rules/network.py

A class without a status is FAILED_PRECONDITION with its message, like every other
`SmartDispatchError`; anything that is not one is a bug, answered INTERNAL without details.
So no error of the tree reaches a caller as INTERNAL. While sending, a `ProviderError` is
recorded on the dispatch as its attempt's outcome, and a `TemplateError` becomes a permanent
`ProviderError` (dispatch/pool.py); at decision time a template without a variant for the
chosen channel is an `InvalidRequestError` of `message.template`. `ForbiddenDestination` becomes
a permanent `ProviderError` (code `forbidden_destination`) in channels/http_common.py.

Errors carry fields, never prose to parse.
"""

from __future__ import annotations


class SmartDispatchError(Exception):
    """Root of every error Smart Dispatch raises on purpose."""


class ConfigurationError(SmartDispatchError):
    """Settings are invalid, or a backend / provider name is unknown."""


#: Characters of a field path and of a problem in an `InvalidRequestError`, at most: an error
#: never echoes a whole hostile value back (gRPC status messages travel in headers).
MAX_FIELD_CHARS = 160
MAX_PROBLEM_CHARS = 400


def quote(value: object, limit: int = 40) -> str:
    """`repr(value)`, or the repr of its first `limit` characters and its length when longer."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    return repr(value)


class InvalidRequestError(SmartDispatchError):
    """A request field is missing or invalid. `field` is the dotted proto path, e.g.
    `message.id` or `recipient.addresses["sms"]`. Both parts are cut to a bounded length."""

    def __init__(self, field: str, problem: str) -> None:
        if len(field) > MAX_FIELD_CHARS:
            field = field[: MAX_FIELD_CHARS - 1] + "…"
        if len(problem) > MAX_PROBLEM_CHARS:
            problem = problem[: MAX_PROBLEM_CHARS - 1] + "…"
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class RuleFileError(SmartDispatchError):
    """A rule file is invalid. `line` is 1-based; 0 when the problem concerns the whole file."""

    def __init__(self, file: str, line: int, problem: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.line = line
        self.problem = problem


class NotReadyError(SmartDispatchError):
    """The server has no ruleset loaded (yet)."""


class NotFoundError(SmartDispatchError):
    """The named object (e.g. a dispatch) does not exist."""


class UnsubscribeTokenError(InvalidRequestError):
    """An unsubscribe token that cannot be used: `reason` is malformed | bad_signature | expired."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__("token", problem)
        self.reason = reason


class ConflictError(SmartDispatchError):
    """The object is in a state that does not allow the operation."""


class RequiredCategoryError(ConflictError):
    """Nobody may opt out of (or mute) `category`: the rules mark it required."""

    def __init__(self, category: str, field: str = "") -> None:
        where = f"{field}: " if field else ""
        super().__init__(f"{where}category {category!r} is required by the rules: it cannot be opted out of")
        self.category = category
        self.field = field


class StoreError(SmartDispatchError):
    """The counter / list store failed. `retryable` tells whether trying again may help."""

    retryable = False


class StoreUnavailableError(StoreError):
    """The store could not be reached within its timeout."""

    retryable = True


class EngineError(SmartDispatchError):
    """durable-rules refused a ruleset or a fact. `code` is its numeric error code if known."""

    def __init__(self, problem: str, code: int | None = None) -> None:
        super().__init__(problem)
        self.code = code


class TemplateError(SmartDispatchError):
    """A template cannot be rendered for a channel. `file` is relative to the template
    directory ("" when no file is involved); `line` is 1-based, 0 when unknown."""

    def __init__(self, template: str, channel: str, problem: str, *, file: str = "", line: int = 0) -> None:
        where = f" ({file}:{line})" if file and line else f" ({file})" if file else ""
        super().__init__(f"template {template!r} for {channel}{where}: {problem}")
        self.template = template
        self.channel = channel
        self.problem = problem
        self.file = file
        self.line = line


class ProviderError(SmartDispatchError):
    """A failed attempt. `retryable` decides retry vs. fallback; `retry_after_s` is the
    provider's own hint (Retry-After), None when it gave none; `code` is the provider's error
    code or HTTP status as text; `invalid_address` (never with `retryable`): the provider says
    the address itself is dead (an unregistered push token), so the sender pool records it as
    invalid for the person (events.py)."""

    def __init__(
        self,
        problem: str,
        *,
        provider: str,
        channel: str,
        retryable: bool,
        retry_after_s: float | None = None,
        code: str = "",
        invalid_address: bool = False,
    ) -> None:
        super().__init__(f"{provider}: {problem}")
        self.provider = provider
        self.channel = channel
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.code = code
        self.invalid_address = invalid_address and not retryable
