"""SMS through Tencent Cloud SMS: `SendSms` (API 3.0, version 2021-01-11), signed with
TC3-HMAC-SHA256, as a direct aiohttp request.

One attempt is one request:

    POST <endpoint>/
    Content-Type: application/json; charset=utf-8
    Host, X-TC-Action: SendSms, X-TC-Version: 2021-01-11, X-TC-Timestamp (unix s), X-TC-Region
    Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/<date>/sms/tc3_request,
                   SignedHeaders=content-type;host;x-tc-action, Signature=<…>
    {"PhoneNumberSet": ["+8613711112222"], "SmsSdkAppId": "1400006666", "SignName": "…",
     "TemplateId": "1110", "TemplateParamSet": ["12345"], "SessionContext": "<idempotency key>"}
      → {"Response": {"SendStatusSet": [{"SerialNo": "…", "PhoneNumber": "+86…", "Code": "Ok",
         "Message": "send success", …}], "RequestId": "…"}}
      or {"Response": {"Error": {"Code": "AuthFailure.SignatureFailure", "Message": "…"}, …}}

The signature (`tc3_authorization`): CanonicalRequest = method, `/`, the query ("" for POST),
the signed headers (content-type, host, x-tc-action) lowercased, names and values, as
`name:value` lines, their names joined by `;`, and the hex
SHA-256 of the body, joined by newlines; StringToSign = "TC3-HMAC-SHA256\\n" + timestamp +
"\\n" + "<UTC date>/<service>/tc3_request" + "\\n" + hex(SHA-256(CanonicalRequest)); the key is
HMAC-SHA256 chained from "TC3" + SecretKey over the date, the service and "tc3_request"; the
signature is the hex HMAC-SHA256 of StringToSign under it.

From the content (templates.py `sms.yaml`, the variant of this provider's name first):
`template_id` → TemplateId, `sign_name` (else the provider's `sign_name`) → SignName, `fields`
→ TemplateParamSet in order (keys that are all numbers are sorted as numbers: `1`, `2`, … are
Tencent's {1}, {2}). Numbers without a `+` country code are sent as they are (Tencent reads
them as mainland China numbers). `provider_message_id` is the SerialNo.

Errors: `Response.Error.Code`, or the number's own `Code` in SendStatusSet (HTTP 200 either
way); see `ERRORS`, and vendor_errors.py for the three kinds. Unknown codes go by their family:
`InternalError*`, `AuthFailure*`, `UnauthorizedOperation*`, `ResourceUnavailable*` → provider;
`RequestLimitExceeded*` → rate limited (1 s), `LimitExceeded*` → rate limited (60 s); others
permanent.

Receipts (`parse_receipts`): the SMS delivery status callback (set in the SMS console to
`<SD_PUBLIC_URL>/receipts/<name>?token=<receipt token>`): a JSON array of
`{"user_receive_time", "nationcode", "mobile", "report_status": "SUCCESS" | "FAIL", "errmsg",
"description", "sid"}`; `sid` is the SerialNo. Tencent signs nothing: with `receipt_token` set,
a push without `?token=` equal to it is refused (403). The acknowledgement is
`{"result": 0, "errmsg": "OK"}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from smart_dispatch.channels.base import Delivery, ProviderError, SendResult
from smart_dispatch.channels.http_common import HttpOptions, HttpProvider, HttpReply, encode_json, signed_host
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

DEFAULT_ENDPOINT = "https://sms.tencentcloudapi.com"
DEFAULT_REGION = "ap-guangzhou"
SERVICE = "sms"
ACTION = "SendSms"
VERSION = "2021-01-11"
ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"

#: SendSms's documented error codes (the SMS API's and the API 3.0 common ones).
ERRORS: Mapping[str, ErrorClass] = {
    # the recipient or the message
    "InvalidParameterValue.IncorrectPhoneNumber": INVALID_NUMBER,
    "InvalidParameterValue.ContentLengthLimit": PERMANENT,
    "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter": PERMANENT,
    "InvalidParameterValue.TemplateParameterFormatError": PERMANENT,
    "InvalidParameterValue.TemplateParameterLengthLimit": PERMANENT,
    "InvalidParameter.DirtyWordFound": PERMANENT,
    "FailedOperation.ContainSensitiveWord": PERMANENT,
    "FailedOperation.PhoneNumberInBlacklist": PERMANENT,
    "FailedOperation.PhoneNumberOnBlacklist": PERMANENT,
    "FailedOperation.FailResolvePacket": PERMANENT,
    "FailedOperation.JsonParseFail": PERMANENT,
    "FailedOperation.OtherError": PERMANENT,
    "FailedOperation.ParametersOtherError": PERMANENT,
    "InternalError.JsonParseFail": PERMANENT,
    "InvalidParameter": PERMANENT,
    "InvalidParameterValue": PERMANENT,
    "InvalidParameter.InvalidParameters": PERMANENT,
    "MissingParameter": PERMANENT,
    "MissingParameter.EmptyPhoneNumberSet": PERMANENT,
    "LimitExceeded.PhoneNumberCountLimit": PERMANENT,
    "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber": PERMANENT,
    "UnsupportedOperation.UnsuportedRegion": PERMANENT,
    # the account, credentials, signature or template at Tencent Cloud, or an outage
    "AuthFailure.SignatureFailure": PROVIDER,
    "AuthFailure.SignatureExpire": PROVIDER,
    "AuthFailure.SecretIdNotFound": PROVIDER,
    "AuthFailure.InvalidSecretId": PROVIDER,
    "AuthFailure.InvalidAuthorization": PROVIDER,
    "AuthFailure.TokenFailure": PROVIDER,
    "AuthFailure.MFAFailure": PROVIDER,
    "AuthFailure.UnauthorizedOperation": PROVIDER,
    "UnauthorizedOperation.RequestIpNotInWhitelist": PROVIDER,
    "UnauthorizedOperation.RequestPermissionDeny": PROVIDER,
    "UnauthorizedOperation.SdkAppIdIsDisabled": PROVIDER,
    "UnauthorizedOperation.SerivceSuspendDueToArrears": PROVIDER,
    "UnauthorizedOperation.SmsSdkAppIdVerifyFail": PROVIDER,
    "UnauthorizedOperation.IndividualUserMarketingSmsPermissionDeny": PROVIDER,
    "FailedOperation.InsufficientBalanceInSmsPackage": PROVIDER,
    "FailedOperation.SignatureIncorrectOrUnapproved": PROVIDER,
    "FailedOperation.TemplateIncorrectOrUnapproved": PROVIDER,
    "FailedOperation.MissingSignatureList": PROVIDER,
    "FailedOperation.MissingTemplateList": PROVIDER,
    "InvalidParameterValue.SdkAppIdNotExist": PROVIDER,
    "InvalidParameter.AppidAndBizId": PROVIDER,
    "InternalError": PROVIDER,
    "InternalError.OtherError": PROVIDER,
    "InternalError.RequestTimeException": PROVIDER,
    "InternalError.RestApiInterfaceNotExist": PROVIDER,
    "InternalError.SendAndRecvFail": PROVIDER,
    "InternalError.SigFieldMissing": PROVIDER,
    "InternalError.SigVerificationFail": PROVIDER,
    "InternalError.Timeout": PROVIDER,
    "InternalError.UnknownError": PROVIDER,
    "ResourceUnavailable": PROVIDER,
    "ServiceUnavailable": PROVIDER,
    # limits
    "RequestLimitExceeded": limited(1.0),
    "RequestLimitExceeded.GlobalRegionUinLimitExceeded": limited(1.0),
    "RequestLimitExceeded.IPLimitExceeded": limited(1.0),
    "RequestLimitExceeded.UinLimitExceeded": limited(1.0),
    "LimitExceeded.DeliveryFrequencyLimit": limited(30.0),
    "LimitExceeded.PhoneNumberThirtySecondLimit": limited(30.0),
    "LimitExceeded.PhoneNumberOneHourLimit": limited(3600.0),
    "LimitExceeded.PhoneNumberDailyLimit": limited("day"),
    "LimitExceeded.PhoneNumberSameContentDailyLimit": limited("day"),
    "LimitExceeded.AppDailyLimit": limited("day"),
    "LimitExceeded.DailyLimit": limited("day"),
    "FailedOperation.MarketingSendTimeConstraint": limited(3600.0),  # marketing: 08:00-22:00 only
}


def tc3_authorization(
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    timestamp: int,
    headers: Mapping[str, str],
    body: bytes,
    method: str = "POST",
    query: str = "",
) -> str:
    """The Authorization header of a request signed with TC3-HMAC-SHA256 over `headers` (they
    must include content-type and host; names and values are lowercased, values trimmed). Pure."""
    signed = {name.lower(): value.strip().lower() for name, value in headers.items()}
    names = sorted(signed)
    canonical = "\n".join(
        (
            method.upper(),
            "/",
            query,
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        )
    )
    date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    scope = f"{date}/{service}/tc3_request"
    to_sign = f"{ALGORITHM}\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"TC3{secret_key}".encode()
    for part in (date, service, "tc3_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )


@dataclass(frozen=True, slots=True)
class TencentSmsConfig:
    """A CAM key pair (SecretId, SecretKey) and the SMS application's `sdk_app_id`; `sign_name`
    is used when the template gives none; `receipt_token` ("" for none) guards the receipt URL."""

    secret_id: str
    secret_key: str = field(repr=False)
    sdk_app_id: str = ""
    sign_name: str = ""
    region: str = DEFAULT_REGION
    endpoint: str = DEFAULT_ENDPOINT
    receipt_token: str = field(default="", repr=False)


class TencentSmsProvider(HttpProvider):
    """SendSms, see the module docstring. `clock` gives the current UTC time."""

    receipt_ack = ("application/json", b'{"result":0,"errmsg":"OK"}')

    def __init__(
        self,
        config: TencentSmsConfig,
        *,
        options: HttpOptions | None = None,
        channel: str = "sms",
        name: str = "tencentcloud_sms",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(channel=channel, name=name, options=options or HttpOptions())
        self.config = config
        self._url = config.endpoint.rstrip("/") + "/"
        self._host = signed_host(self._url)
        self._clock = clock

    def receipts_at(self, url: str) -> None:
        return None  # the callback URL is set in the SMS console

    async def send(self, delivery: Delivery) -> SendResult:
        content = delivery.content.for_provider(self.name)
        number = self.phone_number(delivery)
        sign_name = content.sign_name or self.config.sign_name
        if not content.template_id:
            raise self.error(
                "the template has no template_code for this provider (sms.yaml)",
                retryable=False,
                code="no_template",
            )
        payload: dict[str, Any] = {
            "PhoneNumberSet": [number],
            "SmsSdkAppId": self.config.sdk_app_id,
            "TemplateId": content.template_id,
            "TemplateParamSet": template_params(content.fields),
            "SessionContext": delivery.idempotency_key,
        }
        if sign_name:
            payload["SignName"] = sign_name
        body = encode_json(payload)
        now = self._clock()
        timestamp = int(now.timestamp())
        signed = {"content-type": CONTENT_TYPE, "host": self._host, "x-tc-action": ACTION}
        authorization = tc3_authorization(
            secret_id=self.config.secret_id,
            secret_key=self.config.secret_key,
            service=SERVICE,
            timestamp=timestamp,
            headers=signed,
            body=body,
        )
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Host": self._host,
            "X-TC-Action": ACTION,
            "X-TC-Version": VERSION,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Region": self.config.region,
            "Authorization": authorization,
        }
        reply = await self.request("POST", self._url, headers=headers, content=body)
        self.check(reply)  # API 3.0 answers 200; anything else is the gateway's or a proxy's
        response = reply.json_object().get("Response")
        if not isinstance(response, dict):
            raise self.error("malformed reply", retryable=True, code="malformed_reply")
        error = response.get("Error")
        if isinstance(error, dict):
            raise self._error(reply, str(error.get("Code", "")), str(error.get("Message", "")), now)
        statuses = response.get("SendStatusSet")
        status = statuses[0] if isinstance(statuses, list) and statuses else None
        if not isinstance(status, dict):
            raise self.error("malformed reply: no SendStatusSet", retryable=True, code="malformed_reply")
        code = str(status.get("Code", ""))
        if code.lower() == "ok":
            return SendResult(self.name, str(status.get("SerialNo", "")))
        raise self._error(reply, code, str(status.get("Message", "")), now)

    def _error(self, reply: HttpReply, code: str, message: str, now: datetime) -> ProviderError:
        kind = ERRORS.get(code) or _family(code)
        return kind.error(
            f"SendSms: {code}: {message[:200]}",
            provider=self.name,
            channel=self.channel,
            code=code or "malformed_reply",
            now=now,
        )

    def parse_receipts(self, request: ReceiptRequest) -> list[Receipt | None]:
        token = self.config.receipt_token
        if token and not hmac.compare_digest(request.query.get("token", "").encode(), token.encode()):
            raise ReceiptRejected(403, "missing or wrong ?token=")
        try:
            reports = json.loads(request.body)
        except ValueError:
            raise ReceiptRejected(400, "the body is not JSON") from None
        if isinstance(reports, dict):  # a single report, not wrapped in an array
            reports = [reports]
        if not isinstance(reports, list) or not all(isinstance(item, dict) for item in reports):
            raise ReceiptRejected(400, "the body is not a JSON array of reports")
        receipts: list[Receipt | None] = []
        for report in reports:
            sid = report.get("sid")
            if not isinstance(sid, str) or not sid:
                raise ReceiptRejected(400, "a report without sid")
            status = str(report.get("report_status", "")).upper()
            if status not in ("SUCCESS", "FAIL"):
                receipts.append(None)
                continue
            at = _china_time(report.get("user_receive_time"))
            receipts.append(Receipt(sid, status == "SUCCESS", at, str(report.get("errmsg", ""))))
        return receipts


def template_params(fields: Mapping[str, Any]) -> list[str]:
    """TemplateParamSet: the values in order; keys that are all numbers sorted as numbers. Pure."""
    keys = list(fields)
    if keys and all(str(k).isdigit() for k in keys):
        keys.sort(key=lambda k: int(str(k)))
    return [str(fields[k]) for k in keys]


def _family(code: str) -> ErrorClass:
    head = code.split(".", 1)[0]
    if head in ("InternalError", "AuthFailure", "UnauthorizedOperation", "ResourceUnavailable"):
        return PROVIDER
    if head == "RequestLimitExceeded":
        return limited(1.0)
    if head == "LimitExceeded":
        return limited(60.0)
    if not code:
        return PROVIDER  # a reply without a code: malformed
    return PERMANENT


def _china_time(value: object) -> datetime | None:
    try:
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
    except ValueError:
        return None
