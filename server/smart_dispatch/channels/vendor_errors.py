"""How a vendor's error codes become `ProviderError`s: one table per vendor (aliyun_sms.py,
tencent_sms.py, twilio_sms.py), read through `ErrorClass.error`.

Three kinds, chosen so that the sender pool's retry, failover and fallback do the right thing:

    permanent     the message or its recipient is the problem (a bad number, a blocked recipient,
                  content the vendor refuses): no retry, no other provider of the channel; the
                  plan falls back to its next channel. `invalid_address` marks a number that is
                  itself invalid.
    provider      the vendor or our account with it is the problem (credentials, balance, a
                  template or signature it has not approved, an outage): retryable, so that
                  failover tries the channel's next provider at once and the breaker learns of
                  it; with one provider, the pool retries with backoff, then falls back.
    rate_limited  a vendor limit (throughput, per-number frequency, daily quota): retryable, with
                  a Retry-After: the vendor's own header when it sends one, else the limit's
                  window (`wait`: seconds, or "day" / "month": until the next one starts in the
                  vendor's time zone, China Standard Time for Aliyun and Tencent). The pool
                  honours it up to an hour (dispatch/resilience.py); failover moves on at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

from smart_dispatch.errors import ProviderError

Kind = Literal["permanent", "provider", "rate_limited"]
CHINA = timezone(timedelta(hours=8), "CST")


@dataclass(frozen=True, slots=True)
class ErrorClass:
    kind: Kind
    wait: float | Literal["day", "month"] = 0.0
    invalid_address: bool = False

    def error(
        self,
        problem: str,
        *,
        provider: str,
        channel: str,
        code: str,
        now: datetime,
        retry_after_s: float | None = None,
        zone: timezone = CHINA,
    ) -> ProviderError:
        """The `ProviderError` of this class; `retry_after_s` is the vendor's own hint (a header)."""
        if self.kind == "permanent":
            return ProviderError(
                problem,
                provider=provider,
                channel=channel,
                retryable=False,
                code=code,
                invalid_address=self.invalid_address,
            )
        if self.kind == "rate_limited" and retry_after_s is None:
            retry_after_s = window_s(self.wait, now, zone)
        return ProviderError(
            problem,
            provider=provider,
            channel=channel,
            retryable=True,
            retry_after_s=retry_after_s,
            code=code,
        )


PERMANENT = ErrorClass("permanent")
INVALID_NUMBER = ErrorClass("permanent", invalid_address=True)
PROVIDER = ErrorClass("provider")


def limited(wait: float | Literal["day", "month"]) -> ErrorClass:
    return ErrorClass("rate_limited", wait)


def window_s(wait: float | Literal["day", "month"], now: datetime, zone: timezone = CHINA) -> float:
    """Seconds from `now` until a limit of `wait` lets a send through again: `wait` itself, or
    until the next day / month starts in `zone`. Pure."""
    if not isinstance(wait, str):
        return float(wait)
    local = now.astimezone(zone)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if wait == "day":
        following = start + timedelta(days=1)
    else:
        following = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
    return max(1.0, (following - local).total_seconds())


def utc_now() -> datetime:
    return datetime.now(UTC)
