"""Image store: stored uploads and derived results, by key.

In-process by default (an LRU bounded by total bytes, entries expire after a TTL); Redis when
``KIND_REDIS_URL`` is set, so several replicas share stored images. Redis failures surface as
:class:`StoreUnavailable`, which the routes answer with 503; routes that do not need the store keep working.
The routes see either through :class:`SignedStore`, which signs and verifies every entry, scopes the
names per client and charges what it stores to the client the request came from.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The backing store cannot be reached or refused the operation."""


class Store(Protocol):
    backend: str

    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def delete(self, key: str) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class MemoryStore:
    """LRU by bytes with a TTL; nothing in it suspends, so the event loop's tasks share it without a lock."""

    backend = "memory"

    def __init__(self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes, self.ttl_s, self.clock = max_bytes, ttl_s, clock
        self.used = 0
        self._items: collections.OrderedDict[str, tuple[bytes, float]] = collections.OrderedDict()

    async def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            raise StoreUnavailable(f"{len(data)} bytes exceed the store capacity of {self.max_bytes} bytes")
        await self.delete(key)
        self._items[key] = (data, self.clock() + self.ttl_s)
        self.used += len(data)
        while self.used > self.max_bytes:
            await self.delete(next(iter(self._items)))

    async def get(self, key: str) -> bytes | None:
        data, expiry = self._items.get(key, (None, 0.0))
        if data is None or self.clock() >= expiry:
            await self.delete(key)
            return None
        self._items.move_to_end(key)
        return data

    async def delete(self, key: str) -> None:
        data, _ = self._items.pop(key, (b"", 0.0))
        self.used -= len(data)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._items.clear()
        self.used = 0


class RedisStore:
    """Keys live under ``kind:`` with the TTL set by Redis itself (SET … EX)."""

    backend = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float, password: str | None = None) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.ttl_s = ttl_s
        # one immediate retry on a fresh connection: after a Redis restart, pooled connections are stale
        self._client = aioredis.Redis.from_url(
            url,
            password=password,  # from a secret, not the URL; a password inside the URL wins
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )

    async def _guard(self, call: Awaitable[Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await call
        except (RedisError, OSError) as exc:
            log.warning("redis call failed: %s", exc)
            raise StoreUnavailable("the image store (Redis) is unavailable; try again later") from None

    async def put(self, key: str, data: bytes) -> None:
        await self._guard(self._client.set(f"kind:{key}", data, ex=self.ttl_s))

    async def get(self, key: str) -> bytes | None:
        value = await self._guard(self._client.get(f"kind:{key}"))
        return bytes(value) if value is not None else None

    async def delete(self, key: str) -> None:
        await self._guard(self._client.delete(f"kind:{key}"))

    async def ping(self) -> bool:
        try:
            return bool(await self._guard(self._client.ping()))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self._client.aclose()


SIGNATURE = hashlib.sha256().digest_size
IMAGE_PREFIX = "img:"  # stored uploads: img:<sha256 of the bytes>


async def _hash(size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, off the event loop when it hashes more than a MiB."""
    return await asyncio.to_thread(fn, *args) if size > 1 << 20 else fn(*args)


class SignedStore:
    """The store as the routes see it: what is read back is checked, and names are scoped per client.

    Image entries, ``img:<sha256>``, are content-addressed: their bytes must hash to their id. Every other
    value (derived results, job records) is kept as ``HMAC-SHA256(key, name ‖ 0 ‖ data) ‖ data``. An entry that
    fails its check (written by anyone without the key, or moved from another name) reads as missing, so a
    compromised Redis can drop or replay entries, never make the service serve forged images or unpack forged
    results. ``scope`` prefixes every name: with auth on, each token sees only what it stored. ``charge`` is
    called with every key and the bytes stored under it before they are written (it raises to refuse them):
    uploads, derived results and job records all count against the share of the client who caused them.
    """

    def __init__(
        self, backend: Store, key: bytes, scope: str = "", charge: Callable[[str, int], None] | None = None
    ) -> None:
        self.inner, self.backend = backend, backend.backend
        self._key, self.scope, self._charge = key, scope, charge

    def scoped(self, scope: str, charge: Callable[[str, int], None] | None = None) -> SignedStore:
        return SignedStore(self.inner, self._key, scope, charge)

    def _name(self, key: str) -> str:
        return f"{self.scope}/{key}" if self.scope else key

    def _sign(self, name: str, data: bytes) -> bytes:
        mac = hmac.new(self._key, name.encode() + b"\0", hashlib.sha256)
        mac.update(data)
        return mac.digest()

    def _verify(self, key: str, name: str, value: bytes) -> bytes | None:
        if key.startswith(IMAGE_PREFIX):
            return value if hashlib.sha256(value).hexdigest() == key[len(IMAGE_PREFIX) :] else None
        tag, data = value[:SIGNATURE], value[SIGNATURE:]
        if len(tag) < SIGNATURE or not hmac.compare_digest(tag, self._sign(name, data)):
            return None
        return data

    async def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        if not key.startswith(IMAGE_PREFIX):
            data = await _hash(len(data), self._sign, name, data) + data
        if self._charge is not None:
            self._charge(key, len(data))
        await self.inner.put(name, data)

    async def get(self, key: str) -> bytes | None:
        name = self._name(key)
        value = await self.inner.get(name)
        if value is None:
            return None
        data = await _hash(len(value), self._verify, key, name, value)
        if data is None:
            log.warning("stored entry %s failed verification (tampered, or signed with another key): ignored", key)
        return data

    async def delete(self, key: str) -> None:
        await self.inner.delete(self._name(key))

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
