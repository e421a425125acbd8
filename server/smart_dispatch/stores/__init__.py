"""One factory for the state stores: a URL selects the backend of counters and lists alike.

memory://                       embedded, in-process (default)
redis://host:port/db            one Redis server
rediss://host:port/db           one Redis server over TLS
redis+cluster://host:port       Redis Cluster (any node as seed)

`base` holds the options and the bundle, `memory` and `redis` one builder each (the Redis one
also documents the client's timeouts and the URL forms). A backend is imported only when its
scheme is asked for.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from smart_dispatch.errors import ConfigurationError
from smart_dispatch.stores.base import StoreOptions, Stores

__all__ = ["SCHEMES", "StoreOptions", "Stores", "stores_from_url"]

SCHEMES: tuple[str, ...] = ("memory", "redis", "rediss", "redis+cluster")


def stores_from_url(url: str, options: StoreOptions | None = None) -> Stores:
    """Build the stores for `url`. Unknown schemes raise `ConfigurationError` naming the known."""
    options = options or StoreOptions()
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from smart_dispatch.stores.memory import memory_stores

        return memory_stores(url, options)
    if scheme in ("redis", "rediss", "redis+cluster"):
        from smart_dispatch.stores.redis import redis_stores

        return redis_stores(url, options)
    raise ConfigurationError(f"unknown store URL scheme {scheme!r} in {url!r}; known: {', '.join(SCHEMES)}")
