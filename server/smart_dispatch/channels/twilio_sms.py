"""SMS through Twilio's Programmable Messaging: the Messages resource (API 2010-04-01), HTTP
Basic auth with the Account SID and auth token, as a direct aiohttp request.

One attempt is one request:

    POST <api_base>/2010-04-01/Accounts/<AccountSid>/Messages.json
    Authorization: Basic base64(<AccountSid>:<AuthToken>)
    Content-Type: application/x-www-form-urlencoded
    To=+15558675310&From=+15017122661&Body=…&StatusCallback=<SD_PUBLIC_URL>/receipts/<name>
      → 201 {"sid": "SM…", "status": "queued", …}
      or 4xx/5xx {"code": 21211, "message": "The 'To' number … is not a valid phone number.",
                  "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}

`From` is the provider's `from` number or sender id, or `MessagingServiceSid` when
`messaging_service_sid` is set instead. The text is the content's `text` (sms.txt, or this
provider's variant in sms.yaml); a content whose `template_id` is a Twilio Content SID
(`HX` + 32 hex digits) is sent as `ContentSid` + `ContentVariables` (its `fields`, JSON) instead.
`StatusCallback` is set when the sidecar knows its public URL (SD_PUBLIC_URL, and the admin port
serves). `provider_message_id` is the message SID. Twilio de-duplicates nothing: a retried
attempt whose first answer was lost may send twice (at least once, as for every provider).

Errors: Twilio's `code` (HTTP status for a reply without one); see `ERRORS`, and
vendor_errors.py for the three kinds. HTTP 429 honours Retry-After (1 s without one); other
unknown codes: 5xx → provider, 4xx → permanent.

Receipts (`parse_receipts`): the status callback, form-encoded (`MessageSid`, `MessageStatus`,
`ErrorCode`, …), signed with X-Twilio-Signature = base64(HMAC-SHA1(auth token, the URL Twilio
called + every POST parameter's name and value, sorted by name)), checked against
SD_PUBLIC_URL + the request's path and query: a missing or wrong signature, or no SD_PUBLIC_URL
to check it against, is refused with 403. `delivered` and `read` are delivered; `undelivered`,
`failed` and `canceled` failed; the other statuses (`queued`, `sending`, `sent`, …) are not
final and ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl, urlencode

from smart_dispatch.channels.base import Delivery, ProviderError, SendResult
from smart_dispatch.channels.http_common import HttpOptions, HttpProvider, HttpReply, parse_retry_after
from smart_dispatch.channels.receipts import Receipt, ReceiptRejected, ReceiptRequest
from smart_dispatch.channels.vendor_errors import (
    INVALID_NUMBER,
    PERMANENT,
    PROVIDER,
    ErrorClass,
    limited,
    utc_now,
)

DEFAULT_API_BASE = "https://api.twilio.com"
SIGNATURE_HEADER = "X-Twilio-Signature"
CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")
DELIVERED = frozenset({"delivered", "read"})
FAILED = frozenset({"undelivered", "failed", "canceled"})

#: Error codes a message create answers with (and 30xxx delivery errors, should one come back).
ERRORS: Mapping[int, ErrorClass] = {
    # the recipient or the message
    21211: INVALID_NUMBER,  # invalid 'To' phone number
    21217: INVALID_NUMBER,  # phone number does not appear to be valid
    21401: INVALID_NUMBER,  # invalid phone number
    21421: INVALID_NUMBER,  # PhoneNumber is invalid
    21614: INVALID_NUMBER,  # 'To' number is not a valid mobile number
    21635: INVALID_NUMBER,  # 'To' number cannot be a landline
    30005: INVALID_NUMBER,  # unknown destination handset
    30006: INVALID_NUMBER,  # landline or unreachable carrier
    21214: PERMANENT,  # 'To' number cannot be reached
    21407: PERMANENT,  # this phone number type does not support SMS or MMS
    21602: PERMANENT,  # message body is required
    21604: PERMANENT,  # 'To' phone number is required
    21610: PERMANENT,  # the recipient replied STOP: unsubscribed
    21612: PERMANENT,  # 'To' is not currently reachable via SMS from 'From'
    21617: PERMANENT,  # the body exceeds 1600 characters
    21619: PERMANENT,  # a text message body or media url must be specified
    30003: PERMANENT,  # unreachable destination handset
    30004: PERMANENT,  # message blocked (by the recipient or the carrier)
    30007: PERMANENT,  # filtered by the carrier (content)
    30011: PERMANENT,  # MMS not supported by the receiving phone number
    30019: PERMANENT,  # content size exceeds the carrier's limit
    # the account, its numbers or Twilio
    20003: PROVIDER,  # authentication failed
    20005: PROVIDER,  # account not active
    20404: PROVIDER,  # the resource (account) was not found
    20500: PROVIDER,  # internal server error
    20503: PROVIDER,  # service unavailable
    21408: PROVIDER,  # permission to send to this region is not enabled
    21606: PROVIDER,  # 'From' is not a valid message-capable Twilio number
    21608: PROVIDER,  # trial account: the number is not verified
    21609: PROVIDER,  # invalid StatusCallback
    21659: PROVIDER,  # 'From' is not a Twilio phone number or sender id
    21660: PROVIDER,  # 'From' does not belong to the account
    21703: PROVIDER,  # the Messaging Service has no phone numbers
    21705: PROVIDER,  # the Messaging Service is invalid
    30001: PROVIDER,  # queue overflow
    30002: PROVIDER,  # account suspended
    30008: PROVIDER,  # unknown error
    30010: PROVIDER,  # the price exceeds the max price
    30032: PROVIDER,  # toll-free number not verified
    30034: PROVIDER,  # US A2P 10DLC: number not registered
    # limits
    20429: limited(1.0),  # too many requests
    14107: limited(60.0),  # SMS send rate limit exceeded
    21611: limited(60.0),  # the 'From' number has too many queued messages
    30022: limited(60.0),  # US A2P 10DLC throughput exceeded
    30023: limited(3600.0),  # US A2P 10DLC daily cap reached
}


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """X-Twilio-Signature for a request to `url` with POST `params`: base64 HMAC-SHA1 under the
    auth token of the URL followed by each parameter's name and value, sorted by name. Pure."""
    data = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


@dataclass(frozen=True, slots=True)
class TwilioConfig:
    """The account's SID and auth token (it also signs status callbacks); `sender` is the From
    number or alphanumeric sender id, or "" with `messaging_service_sid` instead."""

    account_sid: str
    auth_token: str = field(repr=False)
    sender: str = ""
    messaging_service_sid: str = ""
    api_base: str = DEFAULT_API_BASE


class TwilioProvider(HttpProvider):
    """Messages create, see the module docstring."""

    receipt_ack = ("text/plain", b"")

    def __init__(
        self,
        config: TwilioConfig,
        *,
        options: HttpOptions | None = None,
        channel: str = "sms",
        name: str = "twilio",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(channel=channel, name=name, options=options or HttpOptions())
        if bool(config.sender) == bool(config.messaging_service_sid):
            raise ValueError("give the sender (from) or a messaging_service_sid, one of them")
        self.config = config
        self._url = f"{config.api_base.rstrip('/')}/2010-04-01/Accounts/{config.account_sid}/Messages.json"
        credentials = f"{config.account_sid}:{config.auth_token}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode()
        self._clock = clock
        self.status_callback = ""
        """Where Twilio posts status callbacks ("" for nowhere): see `receipts_at`."""

    def receipts_at(self, url: str) -> None:
        self.status_callback = url

    async def send(self, delivery: Delivery) -> SendResult:
        content = delivery.content.for_provider(self.name)
        number = self.phone_number(delivery)
        form: dict[str, str] = {"To": number}
        if self.config.messaging_service_sid:
            form["MessagingServiceSid"] = self.config.messaging_service_sid
        else:
            form["From"] = self.config.sender
        if CONTENT_SID.fullmatch(content.template_id):
            form["ContentSid"] = content.template_id
            form["ContentVariables"] = json.dumps({str(k): str(v) for k, v in content.fields.items()})
        elif content.text:
            form["Body"] = content.text
        else:
            raise self.error("the content has no text", retryable=False, code="no_text")
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        headers = {
            "Authorization": self._authorization,
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        reply = await self.request("POST", self._url, headers=headers, content=urlencode(form).encode())
        if reply.ok:
            sid = reply.json_text("sid")
            if not sid:
                raise self.error("malformed reply: no sid", retryable=True, code="malformed_reply")
            return SendResult(self.name, sid)
        raise self._error(reply)

    def _error(self, reply: HttpReply) -> ProviderError:
        body = reply.json_object()
        try:
            code = int(body.get("code") or 0)
        except (TypeError, ValueError):
            code = 0
        message = str(body.get("message", "")) or reply.snippet()
        kind = ERRORS.get(code)
        if kind is None and reply.status == 429:
            kind = limited(1.0)
        elif kind is None:
            kind = PROVIDER if reply.status >= 500 or reply.status == 408 else PERMANENT
        hint = parse_retry_after(reply.headers.get("Retry-After")) if kind.kind != "permanent" else None
        return kind.error(
            f"HTTP {reply.status}: {code or ''} {message[:200]}".replace("  ", " "),
            provider=self.name,
            channel=self.channel,
            code=str(code or reply.status),
            now=self._clock(),
            retry_after_s=hint,
        )

    def parse_receipts(self, request: ReceiptRequest) -> list[Receipt | None]:
        if not request.url:
            raise ReceiptRejected(403, "SD_PUBLIC_URL is not set: the signature cannot be checked")
        try:
            params = parse_qsl(request.body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise ReceiptRejected(400, "the body is not form-encoded text") from None
        given = request.headers.get(SIGNATURE_HEADER, "")
        expected = twilio_signature(self.config.auth_token, request.url, params)
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise ReceiptRejected(403, f"missing or wrong {SIGNATURE_HEADER}")
        fields = dict(params)
        sid = fields.get("MessageSid") or fields.get("SmsSid") or ""
        status = (fields.get("MessageStatus") or fields.get("SmsStatus") or "").lower()
        if not sid:
            raise ReceiptRejected(400, "no MessageSid")
        if status not in DELIVERED | FAILED:
            return [None]
        detail = status + (f" {fields['ErrorCode']}" if fields.get("ErrorCode") else "")
        return [Receipt(sid, status in DELIVERED, None, detail)]
