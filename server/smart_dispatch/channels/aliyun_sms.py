"""SMS through Alibaba Cloud Short Message Service: `SendSms` (dysmsapi, version 2017-05-25),
signed with Alibaba Cloud's API signature V3 (ACS3-HMAC-SHA256), as a direct aiohttp request.

One attempt is one request (RPC style: the parameters in the query, the body empty):

    POST <endpoint>/?OutId=…&PhoneNumbers=…&SignName=…&TemplateCode=…&TemplateParam=…
    host, x-acs-action: SendSms, x-acs-version: 2017-05-25, x-acs-date (UTC, ISO 8601),
    x-acs-signature-nonce (random, once per request), x-acs-content-sha256 (of the empty body)
    Authorization: ACS3-HMAC-SHA256 Credential=<AccessKeyId>,SignedHeaders=<…>,Signature=<…>
      → {"Code": "OK", "Message": "OK", "BizId": "9006197469364984400", "RequestId": "…"}

The signature (`acs3_authorization`): CanonicalRequest = method, canonical URI (`/`), the query
sorted by name with names and values percent-encoded per RFC 3986 (UTF-8; only A-Z a-z 0-9 - _ .
~ left as they are), every `host` / `x-acs-*` / `content-type` header lowercased and trimmed as
`name:value` lines, their names joined by `;`, and the hex SHA-256 of the body, joined by
newlines; StringToSign = "ACS3-HMAC-SHA256\\n" + hex(SHA-256(CanonicalRequest)); Signature =
hex(HMAC-SHA256(AccessKeySecret, StringToSign)).

From the content (templates.py `sms.yaml`, the variant of this provider's name first):
`template_id` → TemplateCode, `sign_name` (else the provider's `sign_name`) → SignName,
`fields` → TemplateParam (a JSON object of strings). OutId is the delivery's idempotency key
(Aliyun returns it in receipts; it does not de-duplicate by it). `provider_message_id` is BizId.

Errors (`Code` of the JSON reply; the gateway's own codes come with HTTP 4xx/5xx): see `ERRORS`
and vendor_errors.py for the three kinds. An unknown `isv.*` code is permanent, an unknown
`isp.*` code retryable, any other unknown code classified by the HTTP status as for every HTTP
provider.

Receipts (`parse_receipts`): Alibaba Cloud's "HTTP batch push" of SmsReport (set the receipt URL
in the SMS console to `<SD_PUBLIC_URL>/receipts/<name>?token=<receipt token>`): a JSON array
of `{"phone_number", "send_time", "report_time", "success", "err_code", "err_msg", "sms_size",
"biz_id", "out_id"}`; `biz_id` is the message id, `success` tells delivered from failed. Alibaba
signs nothing: with `receipt_token` set, a push without `?token=` equal to it is refused (403).
The acknowledgement is `{"code": 0, "msg": "接收成功"}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from smart_dispatch.channels.base import Delivery, ProviderError, SendResult
from smart_dispatch.channels.http_common import (
    HttpOptions,
    HttpProvider,
    HttpReply,
    parse_retry_after,
    signed_host,
)
from smart_dispatch.channels.receipts import Receipt, ReceiptRejected, ReceiptRequest
from smart_dispatch.channels.vendor_errors import (
    CHINA,
    INVALID_NUMBER,
    PERMANENT,
    PROVIDER,
    ErrorClass,
    limited,
    utc_now,
)

DEFAULT_ENDPOINT = "https://dysmsapi.aliyuncs.com"
ACTION = "SendSms"
VERSION = "2017-05-25"
ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

#: SendSms's documented error codes (the SMS API's `isv.*` / `isp.*` and the API gateway's).
ERRORS: Mapping[str, ErrorClass] = {
    # the recipient or the message
    "isv.MOBILE_NUMBER_ILLEGAL": INVALID_NUMBER,
    "isv.MOBILE_COUNT_OVER_LIMIT": PERMANENT,
    "isv.TEMPLATE_MISSING_PARAMETERS": PERMANENT,
    "isv.TEMPLATE_PARAMS_ILLEGAL": PERMANENT,
    "isv.INVALID_JSON_PARAM": PERMANENT,
    "isv.INVALID_PARAMETERS": PERMANENT,
    "isv.PARAM_LENGTH_LIMIT": PERMANENT,
    "isv.PARAM_NOT_SUPPORT_URL": PERMANENT,
    "isv.SMS_CONTENT_ILLEGAL": PERMANENT,
    "isv.BLACK_KEY_CONTROL_LIMIT": PERMANENT,
    "isv.DOMESTIC_NUMBER_NOT_SUPPORTED": PERMANENT,
    "isv.SMS_TEST_NUMBER_LIMIT": PERMANENT,
    "MissingParameter": PERMANENT,
    "InvalidParameter": PERMANENT,
    # the account, credentials, signature or template at Alibaba Cloud, or an outage
    "isv.SMS_TEMPLATE_ILLEGAL": PROVIDER,
    "isv.SMS_SIGNATURE_ILLEGAL": PROVIDER,
    "isv.SMS_SIGN_ILLEGAL": PROVIDER,
    "isv.SIGN_STATE_ILLEGAL": PROVIDER,
    "isv.SMS_SIGNATURE_SCENE_ILLEGAL": PROVIDER,
    "isv.EXTEND_CODE_ERROR": PROVIDER,
    "isv.DENY_IP_RANGE": PROVIDER,
    "isv.OUT_OF_SERVICE": PROVIDER,
    "isv.AMOUNT_NOT_ENOUGH": PROVIDER,
    "isv.PRODUCT_UN_SUBSCRIPT": PROVIDER,
    "isv.PRODUCT_UNSUBSCRIBE": PROVIDER,
    "isv.ACCOUNT_NOT_EXISTS": PROVIDER,
    "isv.ACCOUNT_ABNORMAL": PROVIDER,
    "isv.SECURITY_FROZEN_ACCOUNT": PROVIDER,
    "isp.RAM_PERMISSION_DENY": PROVIDER,
    "isp.SYSTEM_ERROR": PROVIDER,
    "SignatureDoesNotMatch": PROVIDER,
    "IncompleteSignature": PROVIDER,
    "SignatureNonceUsed": PROVIDER,
    "InvalidTimeStamp.Expired": PROVIDER,
    "InvalidAccessKeyId.NotFound": PROVIDER,
    "InvalidAccessKeyId.Inactive": PROVIDER,
    "Forbidden.RAM": PROVIDER,
    "Forbidden.AccessKeyDisabled": PROVIDER,
    "InternalError": PROVIDER,
    "ServiceUnavailable": PROVIDER,
    "UnknownError": PROVIDER,
    # limits
    "isv.BUSINESS_LIMIT_CONTROL": limited(60.0),  # per number: 分钟级 / 小时级 / 天级, see _business_limit
    "isv.DAY_LIMIT_CONTROL": limited("day"),
    "isv.MONTH_LIMIT_CONTROL": limited("month"),
    "Throttling": limited(1.0),
    "Throttling.User": limited(1.0),
    "Throttling.Api": limited(1.0),
}


def percent_encode(value: str) -> str:
    """RFC 3986 percent-encoding of UTF-8 text, only A-Z a-z 0-9 - _ . ~ left as they are. Pure."""
    return quote(value, safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """The query sorted by name, names and values percent-encoded, joined with & (also what is
    sent). Pure."""
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def acs3_authorization(
    *,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    access_key_id: str,
    access_key_secret: str,
) -> str:
    """The Authorization header of a request signed with signature V3 (module docstring).
    `headers` must hold `host`, every `x-acs-*` header (x-acs-content-sha256 included) and a
    `content-type` if one is sent. Pure."""
    signed = {
        name.lower(): value.strip()
        for name, value in headers.items()
        if name.lower() in ("host", "content-type") or name.lower().startswith("x-acs-")
    }
    names = sorted(signed)
    canonical = "\n".join(
        (
            method.upper(),
            "/".join(percent_encode(part) for part in path.split("/")) or "/",
            canonical_query(query),
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        )
    )
    to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(access_key_secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={access_key_id},SignedHeaders={';'.join(names)},Signature={signature}"


@dataclass(frozen=True, slots=True)
class AliyunSmsConfig:
    """An AccessKey pair (a RAM user's, allowed `dysms:SendSms`); `sign_name` is the signature
    used when the template gives none; `receipt_token` ("" for none) guards the receipt URL."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    sign_name: str = ""
    endpoint: str = DEFAULT_ENDPOINT
    receipt_token: str = field(default="", repr=False)


class AliyunSmsProvider(HttpProvider):
    """SendSms, see the module docstring. `clock` gives the current UTC time; `nonce` a fresh
    signature nonce."""

    receipt_ack = (
        "application/json",
        json.dumps({"code": 0, "msg": "接收成功"}, ensure_ascii=False).encode(),
    )

    def __init__(
        self,
        config: AliyunSmsConfig,
        *,
        options: HttpOptions | None = None,
        channel: str = "sms",
        name: str = "aliyun_sms",
        clock: Callable[[], datetime] = utc_now,
        nonce: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        super().__init__(channel=channel, name=name, options=options or HttpOptions())
        self.config = config
        self._url = config.endpoint.rstrip("/") + "/"
        self._host = signed_host(self._url)
        self._clock = clock
        self._nonce = nonce

    def receipts_at(self, url: str) -> None:
        return None  # the receipt URL is set in the SMS console

    async def send(self, delivery: Delivery) -> SendResult:
        content = delivery.content.for_provider(self.name)
        number = self.phone_number(delivery)
        sign_name = content.sign_name or self.config.sign_name
        if not content.template_id or not sign_name:
            raise self.error(
                "the template has no template_code / sign_name for this provider (sms.yaml)",
                retryable=False,
                code="no_template",
            )
        query = {
            "PhoneNumbers": number,
            "SignName": sign_name,
            "TemplateCode": content.template_id,
            "OutId": delivery.idempotency_key,
        }
        if content.fields:
            query["TemplateParam"] = json.dumps(
                {str(k): str(v) for k, v in content.fields.items()}, ensure_ascii=False, separators=(",", ":")
            )
        now = self._clock()
        headers = {
            "host": self._host,
            "x-acs-action": ACTION,
            "x-acs-version": VERSION,
            "x-acs-date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "x-acs-signature-nonce": self._nonce(),
            "x-acs-content-sha256": EMPTY_SHA256,
        }
        headers["Authorization"] = acs3_authorization(
            method="POST",
            path="/",
            query=query,
            headers=headers,
            body=b"",
            access_key_id=self.config.access_key_id,
            access_key_secret=self.config.access_key_secret,
        )
        reply = await self.request("POST", f"{self._url}?{canonical_query(query)}", headers=headers)
        body = reply.json_object()
        code = str(body.get("Code", ""))
        if reply.ok and code == "OK":
            return SendResult(self.name, str(body.get("BizId", "")))
        raise self._error(reply, code, str(body.get("Message", ""))[:200], now)

    def _error(self, reply: HttpReply, code: str, message: str, now: datetime) -> ProviderError:
        if not code:
            self.check(reply)  # not the API's JSON: classified by status (raises unless 2xx)
            return self.error("malformed reply", retryable=True, code="malformed_reply")
        kind = ERRORS.get(code)
        if code == "isv.BUSINESS_LIMIT_CONTROL":
            kind = _business_limit(message)
        elif kind is None and code.startswith("isv."):
            kind = PERMANENT
        elif kind is None and code.startswith("isp."):
            kind = PROVIDER
        elif kind is None:
            kind = PROVIDER if reply.status >= 500 or reply.status in (408, 429) else PERMANENT
        hint = parse_retry_after(reply.headers.get("Retry-After")) if kind.kind != "permanent" else None
        return kind.error(
            f"SendSms: {code}: {message}",
            provider=self.name,
            channel=self.channel,
            code=code,
            now=now,
            retry_after_s=hint,
        )

    def parse_receipts(self, request: ReceiptRequest) -> list[Receipt | None]:
        token = self.config.receipt_token
        if token and not hmac.compare_digest(request.query.get("token", "").encode(), token.encode()):
            raise ReceiptRejected(403, "missing or wrong ?token=")
        reports = _json_array(request.body)
        receipts: list[Receipt | None] = []
        for report in reports:
            biz_id = report.get("biz_id")
            if not isinstance(biz_id, str | int) or isinstance(biz_id, bool) or not str(biz_id):
                raise ReceiptRejected(400, "a report without biz_id")
            success = report.get("success")
            if not isinstance(success, bool):
                success = str(success).lower() == "true"
            receipts.append(
                Receipt(
                    str(biz_id),
                    success,
                    _china_time(report.get("report_time")),
                    str(report.get("err_code", "")),
                )
            )
        return receipts


def _business_limit(message: str) -> ErrorClass:
    """isv.BUSINESS_LIMIT_CONTROL's window from its message (触发分钟级/小时级/天级流控)."""
    if "天级" in message or "day" in message.lower():
        return limited("day")
    if "小时级" in message or "hour" in message.lower():
        return limited(3600.0)
    return limited(60.0)


def _json_array(body: bytes) -> list[Mapping[str, Any]]:
    try:
        value = json.loads(body)
    except ValueError:
        raise ReceiptRejected(400, "the body is not JSON") from None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ReceiptRejected(400, "the body is not a JSON array of reports")
    return value


def _china_time(value: object) -> datetime | None:
    """`2017-01-01 11:12:13` (China Standard Time) as an aware datetime; None when not one."""
    try:
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
    except ValueError:
        return None
