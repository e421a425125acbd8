"""The host side of scripts/image_smoke.sh: gRPC calls into the running image, from outside.

Run with the project's venv (it imports the generated stubs and the webhook signature check):

    image_smoke_client.py wait-serving --target 127.0.0.1:PORT [--tls-ca cert.pem] [--timeout 30]
    image_smoke_client.py refuses-plaintext --target 127.0.0.1:PORT
    image_smoke_client.py decide --target 127.0.0.1:PORT [--tls-ca cert.pem]
    image_smoke_client.py dispatch --target 127.0.0.1:PORT --sink-host 10.0.2.2 --secret-env NAME
    image_smoke_client.py cert --out DIR

`dispatch` runs the webhook sink itself: a small HTTP server on a free port of 127.0.0.1 in this
process, for as long as the call waits for the delivery. The container reaches it as
`--sink-host` (slirp4netns maps 10.0.2.2 in the container to the host's loopback). The message's
webhook address carries the sink's URL, so nothing in the container is configured with its port.

Every command prints one line on success and exits 0; on failure it prints why and exits 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as rpc
from smart_dispatch.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

SERVICE = "smartdispatch.v1.SmartDispatchService"
NO_PROXY = [("grpc.enable_http_proxy", 0)]
FINAL_STATES = {
    pb.DISPATCH_STATE_DELIVERED,
    pb.DISPATCH_STATE_FAILED,
    pb.DISPATCH_STATE_CANCELLED,
    pb.DISPATCH_STATE_EXPIRED,
    pb.DISPATCH_STATE_SUPPRESSED,
}


class SmokeFailure(Exception):
    """What went wrong, in one line for the step's log."""


def channel(target: str, tls_ca: Path | None) -> grpc.Channel:
    if tls_ca is None:
        return grpc.insecure_channel(target, options=NO_PROXY)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
    return grpc.secure_channel(target, credentials, options=NO_PROXY)


def health_status(ch: grpc.Channel, service: str, timeout_s: float) -> str:
    reply = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_serving(args: argparse.Namespace) -> str:
    """SERVING for the server as a whole and for the decision service, before the deadline."""
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    last = "no answer yet"
    with channel(args.target, args.tls_ca) as ch:
        while time.monotonic() < deadline:
            try:
                statuses = [health_status(ch, service, 2.0) for service in ("", SERVICE)]
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            else:
                if statuses == ["SERVING", "SERVING"]:
                    took = time.monotonic() - started
                    return f"{args.target}: SERVING (server and {SERVICE}) after {took:.1f} s"
                last = f"server {statuses[0]}, {SERVICE} {statuses[1]}"
            time.sleep(0.25)
    raise SmokeFailure(f"{args.target}: not SERVING within {args.timeout:g} s (last: {last})")


def refuses_plaintext(args: argparse.Namespace) -> str:
    """A plaintext call to a TLS port must fail: TLS is really on."""
    with channel(args.target, None) as ch:
        try:
            status = health_status(ch, "", 3.0)
        except grpc.RpcError as exc:
            return f"{args.target}: plaintext refused ({exc.code().name}), TLS is on"
    raise SmokeFailure(f"{args.target}: answered plaintext ({status}) although TLS is on")


def decide(args: argparse.Namespace) -> str:
    """A login code with the shipped rules: sent now, by SMS (rule otp_sms_now)."""
    request = pb.DecideRequest(
        message=pb.Message(id=f"smoke-otp-{os.getpid()}", category="otp"),
        recipient=pb.Recipient(
            user_id="smoke-ada", timezone="Europe/Berlin", addresses={"sms": "+4915550100"}
        ),
    )
    with channel(args.target, args.tls_ca) as ch:
        reply = rpc.SmartDispatchServiceStub(ch).Decide(request, timeout=10)
    verdict = pb.Verdict.Name(reply.verdict)
    steps = [step.channel for step in reply.steps]
    if verdict != "VERDICT_SEND" or steps[:1] != ["sms"] or not reply.ruleset_version:
        raise SmokeFailure(f"Decide: expected VERDICT_SEND by sms, got {verdict} {steps} ({reply})")
    matched = list(reply.matched_rules)
    return f"Decide: {verdict} by {steps}, rules {reply.ruleset_version}, rules matched {matched}"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


def start_sink() -> tuple[ThreadingHTTPServer, queue.Queue[Received]]:
    """An HTTP server on a free loopback port answering 200 to every POST, in a thread."""
    received: queue.Queue[Received] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.put(Received(self.path, dict(self.headers.items()), body))
            reply = b'{"id": "smoke-sink-1"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            print(f"sink: {self.address_string()} {format % args}", file=sys.stderr)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def dispatch(args: argparse.Namespace) -> str:
    """Dispatch a transactional message by webhook to the sink; the sink must receive it signed
    with the container's secret, and the dispatch must end DELIVERED."""
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        raise SmokeFailure(f"{args.secret_env} is not set")
    sink, received = start_sink()
    port = sink.server_address[1]
    message_id = f"smoke-hook-{os.getpid()}"
    message = pb.Message(id=message_id, category="transactional", channels=["webhook"])
    message.data.update({"order": "smoke-1"})
    url = f"http://{args.sink_host}:{port}/hook"
    request = pb.DispatchRequest(
        message=message,
        recipient=pb.Recipient(user_id="smoke-bob", timezone="UTC", addresses={"webhook": url}),
    )
    deadline = time.monotonic() + args.timeout
    try:
        with channel(args.target, args.tls_ca) as ch:
            stub = rpc.SmartDispatchServiceStub(ch)
            ack = stub.Dispatch(request, timeout=10)
            try:
                got = received.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                status = stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=ack.dispatch_id), timeout=5)
                raise SmokeFailure(
                    f"the sink at {url} (host 127.0.0.1:{port}) received nothing in {args.timeout:g} s; "
                    f"dispatch {pb.DispatchState.Name(status.status.state)}, attempts "
                    f"{[(a.channel, a.outcome, a.error) for a in status.status.attempts]}"
                ) from None
            check_delivery(got, secret, message_id)
            state = wait_final(stub, ack.dispatch_id, deadline)
    finally:
        sink.shutdown()
        sink.server_close()
    if state != "DISPATCH_STATE_DELIVERED":
        raise SmokeFailure(f"dispatch {ack.dispatch_id} ended {state}, not DELIVERED")
    return (
        f"Dispatch {ack.dispatch_id}: webhook POST {got.path} to the host's 127.0.0.1:{port}, signed: {state}"
    )


def check_delivery(got: Received, secret: str, message_id: str) -> None:
    headers = {k.lower(): v for k, v in got.headers.items()}
    timestamp = headers.get(TIMESTAMP_HEADER.lower(), "")
    signature = headers.get(SIGNATURE_HEADER.lower(), "")
    if not verify(secret, timestamp, got.body, signature):
        raise SmokeFailure(f"the webhook's signature does not verify: {timestamp!r} {signature!r}")
    payload = json.loads(got.body)
    if payload.get("message_id") != message_id or payload.get("data") != {"order": "smoke-1"}:
        raise SmokeFailure(f"the webhook body is not the message: {payload}")


def wait_final(stub: rpc.SmartDispatchServiceStub, dispatch_id: str, deadline: float) -> str:
    while True:
        status = stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=dispatch_id), timeout=5).status
        if status.state in FINAL_STATES or time.monotonic() >= deadline:
            return str(pb.DispatchState.Name(status.state))
        time.sleep(0.1)


def cert(args: argparse.Namespace) -> str:
    """A throwaway self-signed server certificate for localhost and 127.0.0.1, valid one day;
    readable by the container's uid (the key is worth nothing outside this run)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smart-dispatch image smoke test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o755)
    (out / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (out / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    for path in (out / "cert.pem", out / "key.pem"):
        path.chmod(0o644)
    return f"throwaway certificate for localhost, 127.0.0.1 in {out}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("wait-serving", "refuses-plaintext", "decide", "dispatch"):
        command = sub.add_parser(name)
        command.add_argument("--target", required=True, help="host:port")
        command.add_argument("--tls-ca", type=Path, help="trust this certificate: speak TLS")
        command.add_argument("--timeout", type=float, default=30.0, help="seconds")
    hook = sub.choices["dispatch"]
    hook.add_argument("--sink-host", required=True, help="the host as the container sees it")
    hook.add_argument("--secret-env", required=True, help="env var with the webhook secret")
    sub.add_parser("cert").add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    commands = {
        "wait-serving": wait_serving,
        "refuses-plaintext": refuses_plaintext,
        "decide": decide,
        "dispatch": dispatch,
        "cert": cert,
    }
    try:
        print(commands[args.command](args))
    except SmokeFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"FAILED: {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
