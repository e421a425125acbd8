"""Loopback fakes of the SMS vendors' real APIs: Alibaba Cloud SendSms, Tencent Cloud SendSms and
Twilio's Messages resource.

Each fake checks a request the way its vendor documents it, computed here on its own (not with
the provider's code): Alibaba Cloud's signature V3 and Tencent Cloud's TC3-HMAC-SHA256 from the
canonical request, Twilio's Basic auth. A request that fails the check gets the vendor's real
error reply. Otherwise the next scenario of `script` answers (default "ok"):

    ok            the vendor's success reply, with a fresh message id
    permanent     an invalid number (Aliyun isv.MOBILE_NUMBER_ILLEGAL, Tencent
                  InvalidParameterValue.IncorrectPhoneNumber, Twilio 21211)
    retryable     an outage (Aliyun ServiceUnavailable 503, Tencent InternalError.Timeout,
                  Twilio 20503)
    rate_limited  a limit (Aliyun isv.BUSINESS_LIMIT_CONTROL per minute, Tencent
                  LimitExceeded.PhoneNumberThirtySecondLimit, Twilio 429 with Retry-After: 7)
    slow          no answer for `slow_s` seconds (then ok)

`receipt(...)` builds the receipt push the vendor would send for a message id: its URL's path and
query, headers (Twilio's X-Twilio-Signature over the public URL it was given) and body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

from tests.support.sinks import Received

_ids = itertools.count(1)


def _request_id() -> str:
    return f"0a1b2c3d-{next(_ids):04d}-4e5f-8a9b-0c1d2e3f4a5b"


def _rfc3986(text: str) -> str:
    """Percent-encoding as Alibaba Cloud documents it, byte by byte: A-Z a-z 0-9 - _ . ~ kept."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if (char.isascii() and char.isalnum()) or char in "-_.~":
            out.append(char)
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _hmac_sha256(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class VendorFake:
    """What every fake has: the scenario script, the requests it accepted, its slowness."""

    script: deque[str] = field(default_factory=deque)
    accepted: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why requests were refused
    slow_s: float = 5.0

    def scenario(self) -> str:
        return self.script.popleft() if self.script else "ok"


# -- Alibaba Cloud -------------------------------------------------------------------------------


@dataclass
class FakeAliyun(VendorFake):
    """dysmsapi SendSms (RPC style, parameters in the query) behind signature V3."""

    access_key_id: str = "LTAI5tTestAccessKey"
    access_key_secret: str = "aliyun-fixed-test-secret"
    nonces: set[str] = field(default_factory=set)

    async def __call__(self, request: Received) -> web.StreamResponse:
        problem = self.check(request)
        if problem is not None:
            self.refused.append(problem[0])
            code, message, status = problem
            body = {
                "RequestId": _request_id(),
                "HostId": "dysmsapi.aliyuncs.com",
                "Code": code,
                "Message": message,
            }
            return web.json_response(body, status=status)
        self.accepted.append(request)
        scenario = self.scenario()
        if scenario == "slow":
            await asyncio.sleep(self.slow_s)
        if scenario == "permanent":
            return self._reply("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        if scenario == "retryable":
            message = "The request has failed due to a temporary failure of the server."
            return self._reply("ServiceUnavailable", message, status=503)
        if scenario == "rate_limited":
            return self._reply("isv.BUSINESS_LIMIT_CONTROL", "触发分钟级流控Permits:1")
        body = {
            "Code": "OK",
            "Message": "OK",
            "BizId": f"9006197469{next(_ids):09d}^0",
            "RequestId": _request_id(),
        }
        return web.json_response(body)

    def _reply(self, code: str, message: str, status: int = 200) -> web.Response:
        return web.json_response(
            {"Code": code, "Message": message, "RequestId": _request_id()}, status=status
        )

    def check(self, request: Received) -> tuple[str, str, int] | None:
        """The gateway's check of a V3-signed request: None when it passes."""
        auth = request.headers.get("Authorization", "")
        algorithm, _, rest = auth.partition(" ")
        parts = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
        if algorithm != "ACS3-HMAC-SHA256" or set(parts) != {"Credential", "SignedHeaders", "Signature"}:
            return "IncompleteSignature", "The request signature does not conform to Aliyun standards.", 400
        if parts["Credential"] != self.access_key_id:
            return "InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404
        signed = parts["SignedHeaders"].split(";")
        headers = {name.lower(): value for name, value in request.headers.items()}
        required = {"host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce"}
        present = {name for name in headers if name.startswith("x-acs-")} | {"host"}
        if signed != sorted(signed) or not required <= set(signed) or not present <= set(signed):
            return "IncompleteSignature", "Every x-acs-* header and host must be signed.", 400
        if headers.get("x-acs-content-sha256") != _sha256_hex(request.body):
            return "ContentSHA256NotMatch", "The x-acs-content-sha256 does not match the body.", 400
        if (headers["x-acs-action"], headers["x-acs-version"]) != ("SendSms", "2017-05-25"):
            return "InvalidAction.NotFound", "Specified api is not found.", 404
        signed_at = datetime.strptime(headers["x-acs-date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if abs((datetime.now(UTC) - signed_at).total_seconds()) > 900:
            return "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.", 400
        query = "&".join(f"{_rfc3986(k)}={_rfc3986(v)}" for k, v in sorted(request.query.items()))
        canonical = "\n".join(
            [
                request.method,
                request.path,
                query,
                "".join(f"{name}:{headers[name].strip()}\n" for name in signed),
                parts["SignedHeaders"],
                _sha256_hex(request.body),
            ]
        )
        to_sign = "ACS3-HMAC-SHA256\n" + _sha256_hex(canonical.encode())
        expected = hmac.new(self.access_key_secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, parts["Signature"]):
            return "SignatureDoesNotMatch", "Specified signature does not match our calculation.", 400
        nonce = headers["x-acs-signature-nonce"]
        if nonce in self.nonces:
            return "SignatureNonceUsed", "Specified signature nonce was used already.", 400
        self.nonces.add(nonce)
        for key in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not request.query.get(key):
                return "MissingParameter", f"{key} is mandatory for this action.", 400
        return None

    def receipt(self, message_id: str, delivered: bool, token: str = "") -> tuple[str, dict[str, str], bytes]:
        """SmsReport, HTTP batch push: (path and query suffix, headers, body)."""
        report = {
            "phone_number": "1381111****",
            "send_time": "2026-12-01 09:00:00",
            "report_time": "2026-12-01 09:00:03",
            "success": delivered,
            "err_code": "DELIVERED" if delivered else "MK:0001",
            "err_msg": "用户接收成功" if delivered else "停机或空号",
            "sms_size": "1",
            "biz_id": message_id,
            "out_id": "d-1:0",
        }
        query = f"?token={token}" if token else ""
        return query, {"Content-Type": "application/json"}, json.dumps([report], ensure_ascii=False).encode()


# -- Tencent Cloud -------------------------------------------------------------------------------


@dataclass
class FakeTencent(VendorFake):
    """sms SendSms 2021-01-11 behind TC3-HMAC-SHA256."""

    secret_id: str = "AKIDfakeTencentTestSecretId000"
    secret_key: str = "tencent-fixed-test-secret-key"
    sdk_app_id: str = "1400006666"

    async def __call__(self, request: Received) -> web.StreamResponse:
        problem = self.check(request)
        if problem is not None:
            self.refused.append(problem[0])
            return self._error(*problem)
        self.accepted.append(request)
        payload = request.json()
        number = payload["PhoneNumberSet"][0]
        scenario = self.scenario()
        if scenario == "slow":
            await asyncio.sleep(self.slow_s)
        if scenario == "retryable":
            return self._error("InternalError.Timeout", "请求下发短信超时")
        code, message = {
            "permanent": ("InvalidParameterValue.IncorrectPhoneNumber", "incorrect number format"),
            "rate_limited": (
                "LimitExceeded.PhoneNumberThirtySecondLimit",
                "phone number thirty second limit",
            ),
        }.get(scenario, ("Ok", "send success"))
        status = {
            "SerialNo": f"5000:10457106691570536578494{next(_ids):05d}" if code == "Ok" else "",
            "PhoneNumber": number,
            "Fee": 1 if code == "Ok" else 0,
            "SessionContext": payload.get("SessionContext", ""),
            "Code": code,
            "Message": message,
            "IsoCode": "CN",
        }
        return web.json_response({"Response": {"SendStatusSet": [status], "RequestId": _request_id()}})

    def _error(self, code: str, message: str) -> web.Response:
        return web.json_response(
            {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": _request_id()}}
        )

    def check(self, request: Received) -> tuple[str, str] | None:
        """API 3.0's check of a TC3-signed request: None when it passes."""
        headers = {name.lower(): value for name, value in request.headers.items()}
        auth = headers.get("authorization", "")
        algorithm, _, rest = auth.partition(" ")
        parts = dict(item.strip().split("=", 1) for item in rest.split(",") if "=" in item)
        if algorithm != "TC3-HMAC-SHA256" or set(parts) != {"Credential", "SignedHeaders", "Signature"}:
            return "AuthFailure.InvalidAuthorization", "Authorization does not conform to the standard."
        secret_id, date, service, terminator = parts["Credential"].split("/")
        if secret_id != self.secret_id:
            return "AuthFailure.SecretIdNotFound", "The SecretId is not found."
        timestamp = int(headers.get("x-tc-timestamp", "0"))
        if abs(time.time() - timestamp) > 300:
            return "AuthFailure.SignatureExpire", "Signature expired."
        if date != datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d") or (service, terminator) != (
            "sms",
            "tc3_request",
        ):
            return "AuthFailure.SignatureFailure", "The credential scope is wrong."
        signed = parts["SignedHeaders"].split(";")
        if not {"content-type", "host"} <= set(signed):
            return "AuthFailure.SignatureFailure", "content-type and host must be signed."
        if headers.get("x-tc-action") != "SendSms" or headers.get("x-tc-version") != "2021-01-11":
            return "InvalidAction", "The action or version does not exist."
        canonical = "\n".join(
            [
                request.method,
                "/",
                "",
                "".join(f"{name}:{headers[name].strip().lower()}\n" for name in signed),
                parts["SignedHeaders"],
                _sha256_hex(request.body),
            ]
        )
        scope = f"{date}/sms/tc3_request"
        to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{_sha256_hex(canonical.encode())}"
        key = _hmac_sha256(
            _hmac_sha256(_hmac_sha256(f"TC3{self.secret_key}".encode(), date), "sms"), "tc3_request"
        )
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, parts["Signature"]):
            return (
                "AuthFailure.SignatureFailure",
                "The provided credentials could not be validated. Please check your signature is correct.",
            )
        payload = request.json()
        if payload.get("SmsSdkAppId") != self.sdk_app_id:
            return "InvalidParameterValue.SdkAppIdNotExist", "SdkAppId does not exist."
        if not payload.get("PhoneNumberSet"):
            return "MissingParameter.EmptyPhoneNumberSet", "The phone number set is empty."
        return None

    def receipt(self, message_id: str, delivered: bool, token: str = "") -> tuple[str, dict[str, str], bytes]:
        """The SMS status callback: (path and query suffix, headers, body)."""
        report = {
            "user_receive_time": "2026-12-01 09:00:03",
            "nationcode": "86",
            "mobile": "13xxxxxxxxx",
            "report_status": "SUCCESS" if delivered else "FAIL",
            "errmsg": "DELIVRD" if delivered else "MK:0005",
            "description": "用户短信送达成功" if delivered else "空号",
            "sid": message_id,
        }
        query = f"?token={token}" if token else ""
        return query, {"Content-Type": "application/json"}, json.dumps([report], ensure_ascii=False).encode()


# -- Twilio --------------------------------------------------------------------------------------


@dataclass
class FakeTwilio(VendorFake):
    """Messages create (2010-04-01) behind Basic auth; keeps each message's StatusCallback."""

    account_sid: str = "AC" + "0123456789abcdef" * 2
    auth_token: str = "twilio-fixed-test-auth-token"
    callbacks: dict[str, str] = field(default_factory=dict)  # message sid -> StatusCallback

    async def __call__(self, request: Received) -> web.StreamResponse:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization", "") != f"Basic {expected}":
            self.refused.append("20003")
            return self._error(20003, "Authenticate", 401)
        if request.path != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            self.refused.append("20404")
            return self._error(20404, "The requested resource was not found", 404)
        form = dict(parse_qsl(request.body.decode()))
        if not form.get("To"):
            return self._error(21604, "A 'To' phone number is required.", 400)
        if not (form.get("Body") or form.get("ContentSid")):
            return self._error(21602, "Message body is required.", 400)
        self.accepted.append(request)
        scenario = self.scenario()
        if scenario == "slow":
            await asyncio.sleep(self.slow_s)
        if scenario == "permanent":
            return self._error(21211, f"The 'To' number {form['To']} is not a valid phone number.", 400)
        if scenario == "retryable":
            return self._error(20503, "Service Unavailable", 503)
        if scenario == "rate_limited":
            return self._error(20429, "Too Many Requests", 429, {"Retry-After": "7"})
        sid = f"SM{next(_ids):032x}"
        if form.get("StatusCallback"):
            self.callbacks[sid] = form["StatusCallback"]
        body: dict[str, Any] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": form["To"],
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": form.get("Body", ""),
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "error_code": None,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        return web.json_response(body, status=201)

    def _error(
        self, code: int, message: str, status: int, headers: dict[str, str] | None = None
    ) -> web.Response:
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return web.json_response(body, status=status, headers=headers)

    def sign(self, url: str, params: dict[str, str]) -> str:
        """X-Twilio-Signature as Twilio documents it."""
        data = url
        for name in sorted(params):
            data += name + params[name]
        digest = hmac.new(self.auth_token.encode(), data.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    def receipt(
        self, message_id: str, delivered: bool, status: str = ""
    ) -> tuple[str, dict[str, str], bytes]:
        """The status callback Twilio posts to the message's StatusCallback (path and query
        suffix relative to the public receipts URL: "", headers, form body), signed."""
        url = self.callbacks[message_id]
        params = {
            "MessageSid": message_id,
            "SmsSid": message_id,
            "AccountSid": self.account_sid,
            "MessageStatus": status or ("delivered" if delivered else "undelivered"),
            "SmsStatus": status or ("delivered" if delivered else "undelivered"),
            "To": "+15558675310",
            "From": "+15017122661",
            "ApiVersion": "2010-04-01",
        }
        if not delivered and not status:
            params["ErrorCode"] = "30003"
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": self.sign(url, params),
            "I-Twilio-Idempotency-Token": f"{next(_ids):08d}",
        }
        return urlsplit(url).query, headers, urlencode(params).encode()
