"""Local fakes of Google's OAuth2 token endpoint, FCM HTTP v1 and APNs (HTTP/2), for the push
providers' tests. Each verifies what the real service verifies, with keys made at test time:

- the token endpoint checks the JWT-bearer assertion's RS256 signature with the service
  account's public key and its claims (iss, aud, scope, iat/exp on the fake clock), and issues
  access tokens that expire on the fake clock;
- the FCM fake accepts only a token it issued that has not expired at receipt time (else 401
  UNAUTHENTICATED, FCM's shape), and answers device tokens it was told about with FCM's real
  error bodies;
- the APNs fake speaks HTTP/2 only (h2, prior knowledge on a plain socket), checks the ES256
  provider token with the key's public half (kid, iss, iat no older than an hour on the fake
  clock: ExpiredProviderToken) and refuses a new token sooner than 20 minutes after the previous
  one (TooManyProviderTokenUpdates), and answers device tokens with APNs' reasons.

Every fake records, per request, the token it carried and whether it was valid when it arrived,
so a test can assert that no request ever went out with an expired token. The JWTs are checked
with `cryptography` directly, not with the library that made them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class FakeClock:
    """Wall-clock epoch seconds that move only when told."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_jwt(token: str, key: Any, alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of `token` after checking its signature with `key` (an RSA or EC public
    key). Raises `InvalidSignature` or `ValueError`."""
    head, body, signature = token.split(".")
    header, claims = json.loads(b64url_decode(head)), json.loads(b64url_decode(body))
    if header.get("alg") != alg:
        raise ValueError(f"alg {header.get('alg')!r}, expected {alg}")
    signed, raw = f"{head}.{body}".encode(), b64url_decode(signature)
    if alg == "RS256":
        key.verify(raw, signed, padding.PKCS1v15(), hashes.SHA256())
    else:  # ES256: JOSE's r || s, 32 bytes each
        if len(raw) != 64:
            raise ValueError("an ES256 signature is 64 bytes")
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    return header, claims


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass
class Seen:
    """One request as a fake saw it: the token it carried, and whether that was valid then."""

    at: float
    token: str
    valid: bool
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def fcm_error(status: int, name: str, error_code: str | None = None, message: str = "") -> dict[str, Any]:
    """An FCM v1 error body as Google sends it."""
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
    return {
        "error": {
            "code": status,
            "message": message or f"{name} happened",
            "status": name,
            "details": details if error_code else [],
        }
    }


class GoogleFake:
    """Google's OAuth2 token endpoint (`/token`) and FCM HTTP v1 (`/v1/projects/…`) on one
    loopback server. `devices` maps a device token to (status, body, headers) to answer;
    `token_script` (statuses) answers the next token requests with errors first."""

    def __init__(
        self, clock: FakeClock, *, project: str = "demo-project", token_lifetime_s: int = 3599
    ) -> None:
        self.clock = clock
        self.project = project
        self.token_lifetime_s = token_lifetime_s
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.client_email = "sender@demo-project.iam.gserviceaccount.com"
        self.issued: dict[str, float] = {}  # access token -> expiry on the fake clock
        self.assertions: list[dict[str, Any]] = []
        self.sends: list[Seen] = []
        self.devices: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = {}
        self.token_script: list[tuple[int, dict[str, Any]]] = []
        self.token_delay_s = 0.0
        self.send_delay = asyncio.Event()
        self.send_delay.set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def service_account_json(self, *, project_id: str | None = None) -> str:
        return json.dumps(
            {
                "type": "service_account",
                "project_id": project_id or self.project,
                "private_key_id": "key-1",
                "private_key": pem(self.key),
                "client_email": self.client_email,
                "client_id": "1234567890",
                "token_uri": f"{self.url}/token",
            }
        )

    async def start(self) -> GoogleFake:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        self.send_delay.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = {k: v[0] for k, v in parse_qs((await request.read()).decode()).items()}
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s)
        if self.token_script:
            status, body = self.token_script.pop(0)
            return web.json_response(body, status=status)
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        now = self.clock()
        try:
            header, claims = verify_jwt(form.get("assertion", ""), self.key.public_key(), "RS256")
        except (InvalidSignature, ValueError):
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, 400
            )
        self.assertions.append({"header": header, "claims": claims, "at": now})
        problems = [
            header.get("kid") != "key-1" and "kid",
            claims.get("iss") != self.client_email and "iss",
            claims.get("aud") != f"{self.url}/token" and "aud",
            claims.get("scope") != SCOPE and "scope",
            not (claims.get("iat", 0) <= now + 60 < claims.get("exp", 0) + 60) and "iat/exp",
            claims.get("exp", 0) - claims.get("iat", 0) > 3600 and "lifetime",
        ]
        if any(problems):
            description = f"Invalid JWT: {', '.join(p for p in problems if p)}"
            return web.json_response({"error": "invalid_grant", "error_description": description}, status=400)
        value = f"ya29.fake-{len(self.issued) + 1}"
        self.issued[value] = now + self.token_lifetime_s
        return web.json_response(
            {"access_token": value, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        )

    def valid(self, token: str) -> bool:
        return token in self.issued and self.clock() < self.issued[token]

    async def _send(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        authorization = request.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ")
        seen = Seen(self.clock(), token, self.valid(token), request.path, dict(request.headers), body)
        self.sends.append(seen)
        await self.send_delay.wait()
        if not seen.valid:
            error = fcm_error(
                401, "UNAUTHENTICATED", message="Request had invalid authentication credentials."
            )
            return web.json_response(error, status=401)
        if request.match_info["project"] != self.project:
            return web.json_response(fcm_error(403, "PERMISSION_DENIED"), status=403)
        device = json.loads(body)["message"]["token"]
        if device in self.devices:
            status, answer, headers = self.devices[device]
            return web.json_response(answer, status=status, headers=headers)
        return web.json_response({"name": f"projects/{self.project}/messages/0:{len(self.sends)}"})


class ApnsFake:
    """APNs over HTTP/2 (prior knowledge, plain TCP) on loopback; see the module docstring.
    `devices` maps a device token to (status, reason, headers); `hold` (device tokens) makes
    those requests wait until the fake stops (a timeout)."""

    def __init__(self, clock: FakeClock, *, team_id: str = "TEAM123456", key_id: str = "KEY1234567") -> None:
        self.clock = clock
        self.team_id = team_id
        self.key_id = key_id
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.requests: list[Seen] = []
        self.devices: dict[str, tuple[int, str, dict[str, str]]] = {}
        self.hold: set[str] = set()
        self.refuse_tokens: set[str] = set()  # answered 403 InvalidProviderToken
        self.token_updates: list[float] = []  # when a new provider token was first seen
        self._tokens: dict[str, float] = {}
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    @property
    def p8(self) -> str:
        return pem(self.key)

    async def start(self) -> ApnsFake:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _H2Protocol(self), "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self._released.set()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_token(self, token: str) -> str:
        """ "" when the provider token is acceptable now, else APNs' reason."""
        now = self.clock()
        try:
            header, claims = verify_jwt(token, self.key.public_key(), "ES256")
        except (InvalidSignature, ValueError):
            return "InvalidProviderToken"
        if (
            header.get("kid") != self.key_id
            or claims.get("iss") != self.team_id
            or token in self.refuse_tokens
        ):
            return "InvalidProviderToken"
        issued = float(claims.get("iat", 0))
        if not now - 3600 < issued <= now + 60:
            return "ExpiredProviderToken"
        if token not in self._tokens:
            if self.token_updates and now - self.token_updates[-1] < 20 * 60:
                return "TooManyProviderTokenUpdates"
            self._tokens[token] = now
            self.token_updates.append(now)
        return ""

    async def answer(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        token = headers.get("authorization", "").removeprefix("bearer ")
        reason = self._check_token(token)
        path = headers.get(":path", "")
        seen = Seen(self.clock(), token, not reason, path, dict(headers), body)
        self.requests.append(seen)
        device = path.rsplit("/", 1)[-1]
        apns_id = headers.get("apns-id", "00000000-0000-0000-0000-000000000000")
        if device in self.hold:
            await self._released.wait()
        if reason:
            status = 429 if reason == "TooManyProviderTokenUpdates" else 403
            return status, {"apns-id": apns_id}, json.dumps({"reason": reason}).encode()
        if headers.get(":method") != "POST" or not path.startswith("/3/device/"):
            return 405, {"apns-id": apns_id}, json.dumps({"reason": "MethodNotAllowed"}).encode()
        if not headers.get("apns-topic"):
            return 400, {"apns-id": apns_id}, json.dumps({"reason": "MissingTopic"}).encode()
        if device in self.devices:
            status, reason, extra = self.devices[device]
            answer: dict[str, Any] = {"reason": reason}
            if status == 410:
                answer["timestamp"] = int(self.clock() * 1000)
            return status, {"apns-id": apns_id, **extra}, json.dumps(answer).encode()
        return 200, {"apns-id": apns_id}, b""


class _H2Protocol(asyncio.Protocol):
    """One HTTP/2 server connection of `ApnsFake` (h2's state machine; a task per stream)."""

    def __init__(self, fake: ApnsFake) -> None:
        self.fake = fake
        self.connection = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connection.initiate_connection()
        transport.write(self.connection.data_to_send())

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            events = self.connection.receive_data(data)
        except ProtocolError:  # e.g. an HTTP/1.1 request: APNs speaks HTTP/2 only
            self.transport.write(self.connection.data_to_send())
            self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.streams[event.stream_id] = ({str(k): str(v) for k, v in event.headers}, bytearray())
            elif isinstance(event, DataReceived):
                self.streams[event.stream_id][1].extend(event.data)
                self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                headers, body = self.streams.pop(event.stream_id)
                task = asyncio.get_running_loop().create_task(
                    self._respond(event.stream_id, headers, bytes(body))
                )
                self.fake.track(task)
            elif isinstance(event, StreamReset):
                self.streams.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated):
                self.transport.close()
        self.transport.write(self.connection.data_to_send())

    async def _respond(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        status, extra, reply = await self.fake.answer(headers, body)
        if self.transport is None or self.transport.is_closing():
            return
        response = [(":status", str(status)), ("content-length", str(len(reply))), *extra.items()]
        try:
            self.connection.send_headers(stream_id, response, end_stream=not reply)
            if reply:
                self.connection.send_data(stream_id, reply, end_stream=True)
        except ProtocolError:  # the client reset the stream (gave up waiting)
            return
        self.transport.write(self.connection.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
