"""The exception tree (errors.py) and the one mapping of its errors to gRPC statuses
(api/status.py), over a real gRPC server and channel."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import smart_dispatch
from smart_dispatch import errors
from smart_dispatch.api.status import grpc_errors, status_for, stream_errors
from smart_dispatch.channels.destinations import ForbiddenDestination
from smart_dispatch.channels.registry import ProviderConfigError
from smart_dispatch.dispatch.resilience import CircuitOpenError
from smart_dispatch.errors import (
    ConflictError,
    EngineError,
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    ProviderError,
    RequiredCategoryError,
    RuleFileError,
    SmartDispatchError,
    StoreError,
    StoreUnavailableError,
    TemplateError,
    UnsubscribeTokenError,
)
from smart_dispatch.ratelimit.provider import OverRate

Code = grpc.StatusCode


def _error_classes() -> list[type[BaseException]]:
    """Every exception class defined in the package (generated code aside)."""
    found: list[type[BaseException]] = []
    for module in pkgutil.walk_packages(smart_dispatch.__path__, "smart_dispatch."):
        if module.name.startswith("smart_dispatch._proto") or module.name.endswith("__main__"):
            continue
        loaded = importlib.import_module(module.name)
        for value in vars(loaded).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == loaded.__name__
            ):
                found.append(value)
    return found


def test_every_error_the_sidecar_defines_is_in_the_tree_and_drawn_in_its_diagram():
    classes = _error_classes()
    assert {c.__name__ for c in classes} >= {"ProviderError", "TemplateError", "EngineError", "OverRate"}
    for cls in classes:
        assert issubclass(cls, SmartDispatchError), f"{cls.__module__}.{cls.__name__} is outside the tree"
        drawn = re.search(rf"^    (│   |    )*(├── |└── )?{cls.__name__}\b", errors.__doc__ or "", re.M)
        assert drawn, f"{cls.__name__} is missing from errors.py's diagram"


def test_the_errors_defined_in_errors_py_are_the_ones_their_families_import():
    from smart_dispatch import templates
    from smart_dispatch.channels import base
    from smart_dispatch.rules import engine

    assert base.ProviderError is ProviderError
    assert templates.TemplateError is TemplateError
    assert engine.EngineError is EngineError


def _template_error() -> TemplateError:
    return TemplateError(
        "welcome", "email", "UndefinedError: 'name' is undefined", file="welcome/email.txt", line=3
    )


def _provider_error() -> ProviderError:
    return ProviderError("HTTP 400", provider="gateway_a", channel="sms", retryable=False, code="400")


ERRORS = [
    (InvalidRequestError("message.id", "is required"), Code.INVALID_ARGUMENT),
    (UnsubscribeTokenError("expired", "expired at 2026-01-01"), Code.INVALID_ARGUMENT),
    (NotReadyError("no ruleset is loaded"), Code.UNAVAILABLE),
    (StoreUnavailableError("redis: timed out"), Code.UNAVAILABLE),
    (NotFoundError("no dispatch 'x'"), Code.NOT_FOUND),
    (ConflictError("already delivered"), Code.FAILED_PRECONDITION),
    (RequiredCategoryError("otp"), Code.FAILED_PRECONDITION),
    (RuleFileError("rules/a.yaml", 3, "unknown effect 'x'"), Code.FAILED_PRECONDITION),
    (EngineError("durable-rules rejected the facts"), Code.FAILED_PRECONDITION),
    (_template_error(), Code.FAILED_PRECONDITION),
    (_provider_error(), Code.FAILED_PRECONDITION),
    (CircuitOpenError("gateway_a", "sms"), Code.FAILED_PRECONDITION),
    (OverRate("gateway_a", "sms", 2.0), Code.FAILED_PRECONDITION),
    (ProviderConfigError("providers.yaml", "sms", "url", "is required"), Code.FAILED_PRECONDITION),
    (ForbiddenDestination("169.254.169.254", "link-local"), Code.FAILED_PRECONDITION),
    (StoreError("script error"), Code.FAILED_PRECONDITION),
]


@pytest.mark.parametrize(("error", "code"), ERRORS, ids=lambda v: type(v).__name__)
def test_status_for_maps_each_error_of_the_tree(error: SmartDispatchError, code: Code):
    assert status_for(error) == code


class Raising:
    """Servicer methods that raise the error they are given, as a real servicer's would."""

    def __init__(self) -> None:
        self.error: BaseException = RuntimeError("a bug")

    @grpc_errors
    async def Unary(self, request: bytes, context: Any) -> bytes:
        raise self.error

    async def Stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        async def items() -> AsyncIterator[bytes]:
            yield b"first"
            raise self.error

        async for item in stream_errors(items(), context):
            yield item


@pytest.fixture
async def raising() -> AsyncIterator[tuple[Raising, grpc.aio.Channel]]:
    servicer = Raising()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(servicer.Unary),
        "Stream": grpc.unary_stream_rpc_method_handler(servicer.Stream),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Raising", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield servicer, channel
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (_template_error(), Code.FAILED_PRECONDITION),
        (_provider_error(), Code.FAILED_PRECONDITION),
        (InvalidRequestError("message.template", "template 'x' has no 'sms' variant"), Code.INVALID_ARGUMENT),
    ],
    ids=lambda v: type(v).__name__,
)
async def test_a_template_or_provider_error_reaches_the_caller_with_its_status_and_message(
    raising: tuple[Raising, grpc.aio.Channel], error: SmartDispatchError, code: Code
):
    servicer, channel = raising
    servicer.error = error

    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await channel.unary_unary("/test.Raising/Unary")(b"")
    assert unary.value.code() == code
    assert unary.value.details() == str(error)

    stream = channel.unary_stream("/test.Raising/Stream")(b"")
    assert await stream.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await stream.read()
    assert streamed.value.code() == code
    assert streamed.value.details() == str(error)


async def test_an_error_outside_the_tree_is_internal_without_details(
    raising: tuple[Raising, grpc.aio.Channel], caplog: pytest.LogCaptureFixture
):
    servicer, channel = raising
    servicer.error = RuntimeError("secret detail")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Raising/Unary")(b"")

    assert caught.value.code() == Code.INTERNAL
    assert "secret detail" not in (caught.value.details() or "")
    assert "unexpected error in Unary" in caplog.text
