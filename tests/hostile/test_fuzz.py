"""Fuzzing a live server: random messages of every request type (built from the proto's
descriptors, with oversized strings, deep Structs and out-of-range times mixed in) and raw
bytes through a generic channel. No call may end INTERNAL or UNKNOWN, and the server must
still serve afterwards. The codes seen are printed (`pytest -s`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

from tests.hostile.conftest import Live

FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
UNARY = [
    (service.full_name, method)
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if not method.server_streaming
]
ALL_METHODS = [
    (service.full_name, method)
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
_HUGE = st.sampled_from([255, 256, 257, 1025, 70_000, 300_000]).map(lambda n: "é" * n)
_TEXT = st.one_of(
    st.text(max_size=12), st.sampled_from(["otp", "promo", "sms", "email", "UTC", "Asia/Tokyo"]), _HUGE
)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), _TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


def _struct() -> st.SearchStrategy[struct_pb2.Struct]:
    def build(data: dict[str, Any]) -> struct_pb2.Struct:
        struct = struct_pb2.Struct()
        struct.update(data)
        return struct

    documents = st.one_of(
        st.dictionaries(st.text(max_size=8), _JSON, max_size=4),
        st.integers(10, 40).map(_nested),
    )
    return documents.map(build)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of `descriptor`'s type, field by field."""
    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Struct":
        return _struct()
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.builds(cls, seconds=st.integers(-(2**40), 2**40), nanos=st.integers(0, 999_999_999))
    if descriptor.full_name == "google.protobuf.Duration":
        return st.builds(cls, seconds=st.integers(-(2**40), 2**40))
    fields = {}
    for field in descriptor.fields:
        value = _field(field, depth)
        if value is not None:
            fields[field.name] = st.none() | value
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _make(cls, values))


def _make(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        if value is None:
            continue
        field = getattr(message, name)
        if isinstance(value, dict):
            field.update(value)
        elif isinstance(value, list):
            for item in value:
                try:
                    field.extend([item])
                except DecodeError:
                    # Python's protobuf copies a message into a repeated field by parsing it, so
                    # it cannot hold one nested past its depth limit once more levels deep (a
                    # batch item): such items are left out here; Decide covers the deep nests
                    continue
        elif isinstance(value, Message):
            field.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-2, 12)
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        return st.integers(-(2**31), 2**31 - 1)
    if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return st.integers(-(2**63), 2**63 - 1)
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True)
    if field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
        return messages(field.message_type, depth + 1)
    return None


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = _scalar(field.message_type.fields_by_name["key"], depth)
        value = _scalar(field.message_type.fields_by_name["value"], depth)
        return None if key is None or value is None else st.dictionaries(key, value, max_size=4)
    scalar = _scalar(field, depth)
    if scalar is None:
        return None
    if field.is_repeated:
        return st.lists(scalar, max_size=4)
    return scalar


CODES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_codes():
    yield
    print("\nfuzz status codes:", dict(CODES.most_common()))


def _call(live: Live, service: str, method: Any, body: bytes) -> grpc.StatusCode:
    path = f"/{service}/{method.name}"
    try:
        if method.server_streaming:
            for _ in live.channel.unary_stream(path)(body, timeout=0.3):
                pass
        else:
            live.channel.unary_unary(path)(body, timeout=5)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    CODES[code.name] += 1
    return code


@pytest.mark.parametrize(("service", "method"), UNARY, ids=[m.name for _, m in UNARY])
def test_structured_requests_never_end_internal_or_unknown(live_module: Live, service: str, method: Any):
    live = live_module

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(messages(method.input_type))
    def one(request: Message) -> None:
        code = _call(live, service, method, request.SerializeToString())
        assert code not in FORBIDDEN, (method.name, code, str(request)[:300])

    one()
    live.health()


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.sampled_from(ALL_METHODS), st.binary(max_size=300))
def test_raw_bytes_never_end_internal_or_unknown(live_module: Live, target: tuple[str, Any], body: bytes):
    service, method = target
    code = _call(live_module, service, method, body)
    assert code not in FORBIDDEN, (method.name, code, body[:80])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"\xff", "not a valid smartdispatch.v1.DecideRequest"),
        (
            pb.DecideRequest(message=pb.Message(id="m")).SerializeToString() + b"\x12\x03\xff\xfe\xfd",
            "not a valid",
        ),
    ],
    ids=["garbage", "invalid-utf8"],
)
def test_undecodable_requests_are_invalid_argument_naming_the_type(
    live_module: Live, body: bytes, fragment: str
):
    live = live_module
    with pytest.raises(grpc.RpcError) as info:
        live.channel.unary_unary("/smartdispatch.v1.SmartDispatchService/Decide")(body, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()
    live.health()


@pytest.mark.parametrize("depth", [17, 40, 60])
def test_deep_structs_are_invalid_argument(live_module: Live, depth: int):
    live = live_module
    request = pb.DecideRequest(
        message=pb.Message(id="m", category="otp"), recipient=pb.Recipient(user_id="u", timezone="UTC")
    )
    request.recipient.attributes.update(_nested(depth))
    with pytest.raises(grpc.RpcError) as info:
        live.stub.Decide(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "recipient.attributes" in info.value.details() or "nest" in info.value.details()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("recipient.timezone", "A" * 300),
        ("message.template", "t" * 300),
        ("message.category", "c" * 16_384),
        ("recipient.locale", "l" * 100),
    ],
)
def test_oversized_strings_are_invalid_argument_quoting_no_more_than_a_prefix(
    live_module: Live, field: str, value: str
):
    live = live_module
    request = pb.DecideRequest(
        message=pb.Message(id="m", category="otp"), recipient=pb.Recipient(user_id="u", timezone="UTC")
    )
    part, name = field.split(".")
    setattr(getattr(request, part), name, value)
    with pytest.raises(grpc.RpcError) as info:
        live.stub.Decide(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: longer than")
    assert len(info.value.details()) < 600
