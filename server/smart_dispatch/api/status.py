"""The one place Smart Dispatch errors become gRPC status codes (the tree: errors.py).

InvalidRequestError (and UnsubscribeTokenError) -> INVALID_ARGUMENT (message names the field)
NotReadyError, StoreUnavailableError -> UNAVAILABLE (clients may retry)
NotFoundError -> NOT_FOUND
any other SmartDispatchError -> FAILED_PRECONDITION with its message: ConflictError and
    RequiredCategoryError, RuleFileError (a reload), EngineError, TemplateError, ProviderError
    and its subclasses, ConfigurationError, StoreError
Anything else is a bug: logged with its traceback and answered INTERNAL without details.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from smart_dispatch.errors import (
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    SmartDispatchError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def status_for(exc: SmartDispatchError) -> grpc.StatusCode:
    if isinstance(exc, InvalidRequestError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotReadyError | StoreUnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.FAILED_PRECONDITION


def grpc_errors(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Decorate a servicer method: map our errors to statuses, log unexpected ones."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        # Abort outside the `except` blocks: an abort raised inside one would chain the error,
        # its traceback and so the whole request to the AbortError, a cycle that kept refused
        # requests in memory until a full garbage collection.
        try:
            return await method(self, request, context)
        except SmartDispatchError as exc:
            code, message = status_for(exc), str(exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, "internal error (logged by the server)"
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


async def stream_errors(
    items: AsyncIterator[T], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[T]:
    """The same mapping as `grpc_errors`, for server-streaming methods."""
    try:
        async for item in items:
            yield item
        return
    except SmartDispatchError as exc:
        code, message = status_for(exc), str(exc)
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("unexpected error in a stream")
        code, message = grpc.StatusCode.INTERNAL, "internal error (logged by the server)"
    await context.abort(code, message)
