"""A live `smart-dispatch serve` process on a private copy of the shipped rules, and the
client-side probes the hostile suite uses (Health under a 1 s deadline, Decide, rules status)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

from tests.support.sidecar import ROOT, Sidecar, sidecar

SHIPPED = ROOT / "rules" / "default.yaml"


@dataclass
class Live:
    server: Sidecar
    rules: Path
    channel: grpc.Channel

    @property
    def stub(self) -> pb_grpc.SmartDispatchServiceStub:
        return pb_grpc.SmartDispatchServiceStub(self.channel)

    def status(self) -> pb.RulesStatus:
        admin = pb_grpc.RulesAdminServiceStub(self.channel)
        return admin.GetRulesStatus(pb.GetRulesStatusRequest(), timeout=1).status

    def health(self) -> float:
        """Seconds a Health check took; raises (DEADLINE_EXCEEDED) past 1 s or when not SERVING."""
        started = time.monotonic()
        reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return time.monotonic() - started

    def decide_otp(self, **labels: str) -> pb.DecideResponse:
        request = pb.DecideRequest(
            message=pb.Message(id=f"m-{time.monotonic_ns()}", category="otp", labels=labels),
            recipient=pb.Recipient(user_id="u1", addresses={"sms": "+15550001111", "email": "a@example.com"}),
            dry_run=True,
        )
        return self.stub.Decide(request, timeout=2)


def rules_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    shutil.copy(SHIPPED, directory / "default.yaml")
    return directory


def _live(directory: Path, **extra_env: str) -> Iterator[Live]:
    env = {"SD_RULES_POLL_S": "0.3", "SD_RULES_COMPILE_TIMEOUT_S": "20", **extra_env}
    with sidecar("--rules", str(directory), env=env) as server:
        channel = grpc.insecure_channel(server.address, options=[("grpc.enable_http_proxy", 0)])
        try:
            yield Live(server, directory, channel)
        finally:
            channel.close()
        assert server.process.poll() is None, "the server died"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    yield from _live(rules_copy(tmp_path))


@pytest.fixture(scope="module")
def live_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from _live(rules_copy(tmp_path_factory.mktemp("live")))
