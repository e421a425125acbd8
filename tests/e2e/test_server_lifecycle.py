"""The server as an operator runs it: health, reflection, `serve` as a process, SIGTERM, bad rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


async def test_health_is_serving_for_the_server_and_the_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "smartdispatch.v1.SmartDispatchService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_public_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one_request():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    services = set()
    async for response in stub.ServerReflectionInfo(one_request()):
        services.update(s.name for s in response.list_services_response.service)
    assert {"smartdispatch.v1.SmartDispatchService", "grpc.health.v1.Health"} <= services


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "smart_dispatch", "serve", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SD_LOG_LEVEL": "WARNING"},
    )


def test_serve_starts_reports_health_and_stops_cleanly_on_sigterm():
    process = _serve("--rules", "rules")
    try:
        line = process.stdout.readline()
        assert line.startswith("smart-dispatch listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            # When the orchestrator stops the pod
            process.send_signal(signal.SIGTERM)
            # Then health turns NOT_SERVING before the server goes away, and it exits 0
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.communicate()


def test_serve_with_invalid_rules_fails_fast_naming_file_and_line(tmp_path):
    (tmp_path / "broken.yaml").write_text(
        "rules:\n  - name: r1\n    when: {category: otp}\n    then: {prefer: [fax]}\n"
    )
    process = _serve("--rules", str(tmp_path))
    _, stderr = process.communicate(timeout=15)

    assert process.returncode == 1
    assert f"{tmp_path / 'broken.yaml'}:4: unknown channel 'fax'" in stderr


def test_sighup_reloads_the_rules(tmp_path):
    import shutil
    import time

    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

    shutil.copy(ROOT / "rules" / "default.yaml", tmp_path / "default.yaml")
    process = subprocess.Popen(
        [sys.executable, "-m", "smart_dispatch", "serve", "--port", "0", "--rules", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SD_LOG_LEVEL": "WARNING", "SD_WATCH_RULES": "false"},
    )
    try:
        port = int(process.stdout.readline().rsplit(":", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            admin = pb_grpc.RulesAdminServiceStub(channel)
            before = admin.GetRulesStatus(pb.GetRulesStatusRequest(), timeout=5).status.version
            (tmp_path / "extra.yaml").write_text(
                "rules:\n  - name: extra\n    when: {category: otp}\n    then: {}\n"
            )
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            after = before
            while after == before and time.monotonic() < deadline:
                time.sleep(0.05)
                after = admin.GetRulesStatus(pb.GetRulesStatusRequest(), timeout=5).status.version
        assert after != before
    finally:
        process.terminate()
        process.communicate(timeout=15)
