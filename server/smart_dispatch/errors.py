"""The exception tree. gRPC status codes are mapped in exactly one place: `api/status.py`.

    SmartDispatchError
    ├── ConfigurationError        bad settings or an unknown backend/provider name
    ├── InvalidRequestError       a request field is missing or wrong        (INVALID_ARGUMENT)
    ├── RuleFileError             a rule file is invalid; carries file and line
    ├── NotReadyError             no ruleset is loaded yet                     (UNAVAILABLE)
    ├── NotFoundError             no such dispatch                             (NOT_FOUND)
    ├── ConflictError             the operation does not fit the state        (FAILED_PRECONDITION)
    └── StoreError                the counter/list store failed
        └── StoreUnavailableError the store cannot be reached in time        (UNAVAILABLE)

Errors carry fields, never prose to parse.
"""

from __future__ import annotations


class SmartDispatchError(Exception):
    """Root of every error Smart Dispatch raises on purpose."""


class ConfigurationError(SmartDispatchError):
    """Settings are invalid, or a backend / provider name is unknown."""


class InvalidRequestError(SmartDispatchError):
    """A request field is missing or invalid. `field` is the dotted proto path, e.g.
    `message.id` or `recipient.addresses["sms"]`."""

    def __init__(self, field: str, problem: str) -> None:
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


class ConflictError(SmartDispatchError):
    """The object is in a state that does not allow the operation."""


class StoreError(SmartDispatchError):
    """The counter / list store failed. `retryable` tells whether trying again may help."""

    retryable = False


class StoreUnavailableError(StoreError):
    """The store could not be reached within its timeout."""

    retryable = True
