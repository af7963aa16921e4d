"""Shared state, in this process or in Redis (``KIND_REDIS_URL``, shared by every replica): the image store and
the job queue with its leases and slots (docs/service.md, "Jobs"). Redis failures raise
:class:`StoreUnavailable` (503); no scripts, as the Redis ACL (``docker/redis/start-redis.sh``) allows no ``EVAL``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, TypeVar

from .problems import Problem

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreUnavailable(Problem):
    """The backing store cannot be reached or refused the operation (503)."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, "Service Unavailable", detail, kind="store-unavailable")


class Store(Protocol):
    backend: str

    async def put(self, key: str, data: bytes, *, new: bool = False) -> bool: ...
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

    async def put(self, key: str, data: bytes, *, new: bool = False) -> bool:
        """Store ``data`` under ``key``; with ``new``, only when ``key`` holds nothing (False: nothing stored)."""
        if len(data) > self.max_bytes:
            raise StoreUnavailable(f"{len(data)} bytes exceed the store capacity of {self.max_bytes} bytes")
        if new and await self.get(key) is not None:
            return False
        await self.delete(key)
        self._items[key] = (data, self.clock() + self.ttl_s)
        self.used += len(data)
        while self.used > self.max_bytes:
            await self.delete(next(iter(self._items)))
        return True

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
        # one immediate retry on a fresh connection: after a Redis restart, pooled connections are stale;
        # the password comes from a secret, not the URL (a password inside the URL wins)
        self._client = aioredis.Redis.from_url(
            url,
            password=password,
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

    async def put(self, key: str, data: bytes, *, new: bool = False) -> bool:
        return bool(await self._guard(self._client.set(f"kind:{key}", data, ex=self.ttl_s, nx=new)))

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

    Image entries, ``img:<sha256>``, must hash to their id; every other value is kept as
    ``HMAC-SHA256(key, name ‖ 0 ‖ data) ‖ data``. An entry that fails its check reads as missing, so a
    compromised Redis can drop or replay entries, never make the service serve forged images or unpack forged
    results. ``scope`` prefixes every name (with auth on, each token sees only what it stored); ``charge(key,
    size)`` is called before each write and raises to refuse it, so everything stored counts against the share
    of the client who caused it.
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

    async def put(self, key: str, data: bytes, *, new: bool = False) -> bool:
        """Store ``data``; with ``new``, only when ``key`` holds nothing yet (False: someone wrote it first)."""
        name = self._name(key)
        if not key.startswith(IMAGE_PREFIX):
            data = await _hash(len(data), self._sign, name, data) + data
        if self._charge is not None:
            self._charge(key, len(data))
        return await self.inner.put(name, data, new=new)

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


# -- the job queue ------------------------------------------------------------------------------------------

STREAM = "kind:jobs:queue"
GROUP = "kind-jobs"
SLOTS = "kind:jobs:slots"
Refusal = Literal["all", "client"] | None  # admit's answer: which count a refused job would exceed, if any


@dataclasses.dataclass
class Lease:
    entry_id: str
    job_id: str
    scope: str
    client: str
    consumer: str


@dataclasses.dataclass
class _Held:
    lease: Lease
    lease_s: float
    until: float


@dataclasses.dataclass
class MemoryQueue:
    """The queue in this process (one replica without Redis); leases follow ``clock``."""

    clock: Callable[[], float] = time.monotonic
    backend: str = "memory"
    _new: collections.deque[Lease] = dataclasses.field(default_factory=collections.deque)
    _held: dict[str, _Held] = dataclasses.field(default_factory=dict)
    _slots: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)  # job id → (client, expiry)
    _count: int = 0
    _arrived: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def push(self, job_id: str, scope: str, client: str) -> None:
        self._count += 1
        self._new.append(Lease(str(self._count), job_id, scope, client, ""))
        self._arrived.set()

    async def take(self, consumer: str, lease_s: float, block_s: float) -> Lease | None:
        """An entry whose lease lapsed, else a new one, waiting up to ``block_s``; leased to ``consumer``."""
        end = self.clock() + block_s
        while True:
            now = self.clock()
            lapsed = next((held.lease for held in self._held.values() if held.until <= now), None)
            entry = lapsed or (self._new.popleft() if self._new else None)
            if entry is not None:
                lease = dataclasses.replace(entry, consumer=consumer)
                self._held[lease.entry_id] = _Held(lease, lease_s, now + lease_s)
                return lease
            if now >= end:
                return None
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):  # a lapsed lease is noticed within a second anyway
                await asyncio.wait_for(self._arrived.wait(), min(end - now, 1.0))

    def _mine(self, lease: Lease) -> _Held | None:
        held = self._held.get(lease.entry_id)
        return held if held is not None and held.lease.consumer == lease.consumer else None

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease; False once another consumer took the entry over."""
        if (held := self._mine(lease)) is None:
            return False
        held.until = self.clock() + held.lease_s
        return True

    async def ack(self, lease: Lease) -> None:
        if self._mine(lease) is not None:
            del self._held[lease.entry_id]

    async def let_go(self, lease: Lease, lease_s: float) -> None:
        if (held := self._mine(lease)) is not None:
            held.until = self.clock()
            self._arrived.set()

    async def admit(self, job_id: str, client: str, limit: int, quota: int, ttl_s: float) -> Refusal:
        """Take one of ``limit`` slots, at most ``quota`` per client, lost after ``ttl_s``; else the count exceeded."""
        now = time.time()
        self._slots = {job: slot for job, slot in self._slots.items() if slot[1] > now}
        if len(self._slots) >= limit:
            return "all"
        if sum(1 for c, _ in self._slots.values() if c == client) >= quota:
            return "client"
        self._slots[job_id] = (client, now + ttl_s)
        return None

    async def release(self, job_id: str, client: str) -> None:
        self._slots.pop(job_id, None)

    async def close(self) -> None:
        self._new.clear()
        self._held.clear()


def _client_slots(client: str) -> str:
    return f"{SLOTS}:{hashlib.sha256(client.encode()).hexdigest()[:24]}"


class RedisQueue:
    """The queue in a Redis Stream with one consumer group: ``XREADGROUP`` takes, ``XAUTOCLAIM`` takes lapsed
    entries over, ``XCLAIM … JUSTID`` renews; slots are sorted sets."""

    backend = "redis"

    def __init__(self, url: str, timeout_s: float, password: str | None = None, block_s: float = 1.0) -> None:
        import redis.asyncio as aioredis

        # a blocking read waits up to block_s on the socket: the timeout covers it
        self._client = aioredis.Redis.from_url(
            url, password=password, socket_timeout=timeout_s + block_s, socket_connect_timeout=timeout_s
        )
        self._group_ready = False

    async def _guard(self, call: Awaitable[Any]) -> Any:
        from redis.exceptions import RedisError, ResponseError

        try:
            return await call
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restarted without persistence): make the group again
                self._group_ready = False
            raise StoreUnavailable(f"the job queue (Redis) refused: {exc}") from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"the job queue (Redis) is unavailable: {exc}") from None

    async def _group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._guard(self._client.xgroup_create(STREAM, GROUP, id="0", mkstream=True))
        except StoreUnavailable as exc:
            if "BUSYGROUP" not in str(exc):  # another replica made it first
                raise
        self._group_ready = True

    async def push(self, job_id: str, scope: str, client: str) -> None:
        await self._group()
        await self._guard(self._client.xadd(STREAM, {"job": job_id, "scope": scope, "client": client}))

    async def take(self, consumer: str, lease_s: float, block_s: float) -> Lease | None:
        await self._group()
        claimed = await self._guard(self._client.xautoclaim(STREAM, GROUP, consumer, int(lease_s * 1000), count=1))
        entries = claimed[1]
        if not entries:
            read = await self._guard(
                self._client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1, block=int(block_s * 1000))
            )
            entries = read[0][1] if read else []
        for entry_id, raw in entries:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            if "job" in fields:
                scope, client = fields.get("scope", ""), fields.get("client", "")
                return Lease(entry_id.decode(), fields["job"], scope, client, consumer)
            await self._guard(self._client.xack(STREAM, GROUP, entry_id))  # not an entry of ours
        return None

    async def _owns(self, lease: Lease) -> bool:
        pending = await self._guard(
            self._client.xpending_range(STREAM, GROUP, lease.entry_id, lease.entry_id, 1, consumername=lease.consumer)
        )
        return bool(pending)

    async def _claim(self, lease: Lease, idle_ms: int | None = None) -> None:
        call = self._client.xclaim(STREAM, GROUP, lease.consumer, 0, [lease.entry_id], idle=idle_ms, justid=True)
        await self._guard(call)

    async def renew(self, lease: Lease) -> bool:
        # checked, then claimed: another consumer taking the entry in between is seen at the next renewal
        if not await self._owns(lease):
            return False
        await self._claim(lease)
        return True

    async def ack(self, lease: Lease) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.xack(STREAM, GROUP, lease.entry_id)
        pipe.xdel(STREAM, lease.entry_id)
        await self._guard(pipe.execute())

    async def let_go(self, lease: Lease, lease_s: float) -> None:
        if await self._owns(lease):  # idle past the lease: the next take claims it at once
            await self._claim(lease, int(lease_s * 1000) + 1)

    async def admit(self, job_id: str, client: str, limit: int, quota: int, ttl_s: float) -> Refusal:
        # take the slot, then count (one MULTI): a submission over the limit sees itself counted and gives its
        # slot back, so concurrent submissions never overshoot
        now = time.time()
        pipe = self._client.pipeline(transaction=True)
        for key in (SLOTS, _client_slots(client)):
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {job_id: now + ttl_s})
            pipe.expireat(key, int(now + ttl_s) + 1)
            pipe.zcard(key)
        counts = await self._guard(pipe.execute())
        whole, own = counts[3], counts[7]
        if whole <= limit and own <= quota:
            return None
        await self.release(job_id, client)
        return "all" if whole > limit else "client"

    async def release(self, job_id: str, client: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(SLOTS, job_id)
        pipe.zrem(_client_slots(client), job_id)
        await self._guard(pipe.execute())

    async def close(self) -> None:
        await self._client.aclose()


JobQueue = MemoryQueue | RedisQueue
