"""TLS, mTLS and bearer-token scopes, seen from a client on a real channel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.cli import main
from smart_dispatch.config import Settings
from smart_dispatch.supervisor import free_port

from tests.support.certs import make_pki

RULES = Path(__file__).resolve().parents[2] / "rules"
DECIDE = pb.DecideRequest(
    message=pb.Message(id="m1", category="otp"),
    recipient=pb.Recipient(user_id="u1", addresses={"sms": "+15550100"}),
)


@pytest.fixture
def tokens_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOKEN_APP", "app-secret")
    monkeypatch.setenv("TOKEN_OPS", "ops-secret")
    monkeypatch.setenv("TOKEN_MON", "mon-secret")
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tokens:\n"
        "  - {name: checkout, token_env: TOKEN_APP, scopes: [decide]}\n"
        "  - {name: operator, token_env: TOKEN_OPS, scopes: [decide, admin]}\n"
        "  - {name: monitor, token_env: TOKEN_MON, scopes: [read]}\n"
    )
    return path


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_bearer_tokens_and_scopes(tokens_file: Path):
    async with (
        App(Settings(port=0, rules_dir=RULES, auth_tokens_file=tokens_file, watch_rules=False)) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        admin = pb_grpc.RulesAdminServiceStub(channel)

        async def code_of(call) -> grpc.StatusCode:
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        assert await code_of(stub.Decide(DECIDE)) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(stub.Decide(DECIDE, metadata=bearer("guess"))) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(stub.Decide(DECIDE, metadata=bearer("app-secret"))) == grpc.StatusCode.OK
        reload = pb.ReloadRulesRequest()
        assert await code_of(admin.ReloadRules(reload, metadata=bearer("app-secret"))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await code_of(admin.ReloadRules(reload, metadata=bearer("ops-secret"))) == grpc.StatusCode.OK
        deny = pb.AddListMemberRequest(list=pb.LIST_KIND_DENY, user_id="u9")
        assert await code_of(stub.AddListMember(deny, metadata=bearer("app-secret"))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # Health stays open for probes
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # The refusal says what is missing
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.ReloadRules(reload, metadata=bearer("app-secret"))
        assert "'checkout' lacks the 'admin' scope" in info.value.details()
        # Reading status and lookups needs only `read`, which `decide` and `admin` include
        status = pb.GetRulesStatusRequest()
        for secret in ("mon-secret", "app-secret", "ops-secret"):
            assert await code_of(admin.GetRulesStatus(status, metadata=bearer(secret))) == grpc.StatusCode.OK
        lookup = pb.GetDecisionRequest(message_id=DECIDE.message.id)
        assert await code_of(stub.GetDecision(lookup, metadata=bearer("mon-secret"))) == grpc.StatusCode.OK
        # ... and a `read` token decides and changes nothing
        for call in (
            stub.Decide(DECIDE, metadata=bearer("mon-secret")),
            admin.ReloadRules(reload, metadata=bearer("mon-secret")),
        ):
            assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED


async def test_tls_serves_clients_that_trust_the_ca_only(tmp_path: Path):
    pki = make_pki(tmp_path)
    settings = Settings(
        port=0, rules_dir=RULES, tls_cert=pki.server_cert, tls_key=pki.server_key, watch_rules=False
    )
    async with App(settings) as app:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{app.port}", credentials) as channel:
            response = await pb_grpc.SmartDispatchServiceStub(channel).Decide(DECIDE)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.SmartDispatchServiceStub(plain).Decide(DECIDE, timeout=3)

    assert response.verdict == pb.VERDICT_SEND
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_signed_by_the_ca(tmp_path: Path):
    pki = make_pki(tmp_path)
    settings = Settings(
        port=0,
        rules_dir=RULES,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
        watch_rules=False,
    )
    async with App(settings) as app:
        anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{app.port}", anonymous) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.SmartDispatchServiceStub(channel).Decide(DECIDE, timeout=3)
        identified = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        )
        async with grpc.aio.secure_channel(f"localhost:{app.port}", identified) as channel:
            response = await pb_grpc.SmartDispatchServiceStub(channel).Decide(DECIDE)

    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert response.verdict == pb.VERDICT_SEND


def test_a_tokens_file_naming_an_unset_variable_is_a_clear_configuration_error(tmp_path: Path):
    from smart_dispatch.errors import ConfigurationError
    from smart_dispatch.security import load_tokens

    path = tmp_path / "tokens.yaml"
    path.write_text("tokens:\n  - {name: app, token_env: NOT_SET_ANYWHERE, scopes: [decide]}\n")
    with pytest.raises(ConfigurationError) as info:
        load_tokens(path, {})

    assert "tokens[0] (app): environment variable 'NOT_SET_ANYWHERE' is not set" in str(info.value)


async def test_the_health_command_probes_a_tls_server_through_its_plaintext_health_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    # Given a TLS server with a plaintext health port (as in the image)
    pki = make_pki(tmp_path)
    health_port = free_port("127.0.0.1")
    settings = Settings(
        port=0,
        rules_dir=RULES,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        watch_rules=False,
        health_port=health_port,
    )
    monkeypatch.setenv("SD_TLS_CERT", str(pki.server_cert))
    async with App(settings) as app:
        # Then the image's HEALTHCHECK command reports SERVING through the health port
        monkeypatch.setenv("SD_HEALTH_PORT", str(health_port))
        assert await asyncio.to_thread(main, ["health"]) == 0
        assert "SERVING" in capsys.readouterr().out
        # ... which serves health and nothing else
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.SmartDispatchServiceStub(plain).Decide(DECIDE)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # And without a health port, it says why it cannot probe a TLS port
        monkeypatch.delenv("SD_HEALTH_PORT")
        monkeypatch.setenv("SD_PORT", str(app.port))
        assert await asyncio.to_thread(main, ["health"]) == 2
        assert "TLS is on" in capsys.readouterr().err
    # And once stopped, the check fails
    monkeypatch.setenv("SD_HEALTH_PORT", str(health_port))
    assert await asyncio.to_thread(main, ["health", "--timeout", "0.5"]) == 1
