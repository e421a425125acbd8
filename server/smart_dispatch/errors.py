"""The exception tree. gRPC status codes are mapped in exactly one place: `api/status.py`.

    SmartDispatchError
    ├── ConfigurationError        bad settings or an unknown backend/provider name
    ├── InvalidRequestError       a request field is missing or wrong        (INVALID_ARGUMENT)
    │   └── UnsubscribeTokenError an unsubscribe token is malformed, forged or expired
    ├── RuleFileError             a rule file is invalid; carries file and line
    ├── NotReadyError             no ruleset is loaded yet                     (UNAVAILABLE)
    ├── NotFoundError             no such dispatch                             (NOT_FOUND)
    ├── ConflictError             the operation does not fit the state        (FAILED_PRECONDITION)
    │   └── RequiredCategoryError opting out of a category the rules mark required
    └── StoreError                the counter/list store failed
        └── StoreUnavailableError the store cannot be reached in time        (UNAVAILABLE)

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
