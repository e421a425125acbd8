"""Several providers for one channel: the second SMS gateway before e-mail.

`FailoverProvider` is a provider made of others, tried in order (or, when any has a `weight`, in
a weighted random order per message, so traffic is shared). A provider whose own circuit breaker
is open is skipped; one that fails retryably (timeout, 5xx, 429) or is over its rate hands the
message to the next at once (when all are over their rates, the message waits for the first free
slot). A permanent error (a bad number, a rejected message) is the message's, not the
provider's: it ends the attempt, as it would with one provider. When every provider failed
retryably, the attempt failed retryably (the sender pool's retry and fallback take over), with
each provider's error in the message. The delivered attempt names the provider that delivered it.
Each provider gets the content variant that targets it by name (`Content.variants`: a template
can give each SMS provider its own template code, signature and parameters).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from smart_dispatch.channels.base import Delivery, Provider, ProviderError, SendResult
from smart_dispatch.dispatch.resilience import CircuitBreaker, CircuitOpenError
from smart_dispatch.ratelimit.provider import OverRate


class FailoverProvider(Provider):
    def __init__(
        self,
        channel: str,
        providers: Sequence[Provider],
        weights: Sequence[float] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not providers:
            raise ValueError("a failover provider needs at least one provider")
        self.channel = channel
        self.name = "+".join(p.name for p in providers)
        self.providers = tuple(providers)
        self.weights = tuple(weights) if weights else None
        self._rand = rand
        self.breakers = {p.name: CircuitBreaker() for p in providers}

    def order(self) -> list[Provider]:
        """This message's order: as listed, or weighted at random (Efraimidis-Spirakis keys)."""
        if self.weights is None:
            return list(self.providers)
        keyed = [(self._rand() ** (1.0 / w), i) for i, w in enumerate(self.weights)]
        return [self.providers[i] for _, i in sorted(keyed, reverse=True)]

    async def send(self, delivery: Delivery) -> SendResult:
        failures: list[ProviderError] = []
        for provider in self.order():
            breaker = self.breakers[provider.name]
            if not breaker.allow():
                failures.append(CircuitOpenError(provider.name, self.channel))
                continue
            try:
                result = await provider.send(delivery.for_provider(provider.name))
            except OverRate as exc:  # its rate has no slot now: the next provider may
                breaker.release()
                failures.append(exc)
                continue
            except ProviderError as exc:
                if not exc.retryable:
                    breaker.release()
                    raise
                breaker.record_failure()
                failures.append(exc)
                continue
            except BaseException:
                breaker.release()
                raise
            breaker.record_success()
            return result
        waits = [f.wait_s for f in failures if isinstance(f, OverRate)]
        if waits:  # come back when the first of them has a slot
            raise OverRate(self.name, self.channel, min(waits))
        if all(isinstance(f, CircuitOpenError) for f in failures):
            raise CircuitOpenError(self.name, self.channel)
        last = failures[-1]
        raise ProviderError(
            "every provider failed: " + "; ".join(str(f) for f in failures),
            provider=last.provider,
            channel=self.channel,
            retryable=True,
            retry_after_s=min((f.retry_after_s for f in failures if f.retry_after_s), default=None),
            code=last.code,
        )

    async def close(self) -> None:
        for provider in self.providers:
            await provider.close()
