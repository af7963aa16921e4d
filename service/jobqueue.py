"""The job queue: durable entries, leases that lapse, and the job slots each client holds.

:class:`RedisQueue` (a Redis Stream and its consumer group, shared by every replica) or :class:`MemoryQueue` (one
replica without Redis). :meth:`take` hands an entry (job id, store scope, client) to one consumer under a lease:
first one whose lease lapsed (its taker crashed, was killed, or lost Redis for longer than the lease), else a new
one, waiting up to ``block_s`` (waiting work waits here, not in retries). The taker renews the lease while it
works (False once another consumer took the entry over) and acks the entry once the job's terminal state is
written, so every job ends at least once. Redis: ``XREADGROUP`` takes, ``XAUTOCLAIM`` takes lapsed entries over,
a renewal is ``XCLAIM … JUSTID`` after ``XPENDING`` showed the entry still ours; no scripts, as the Redis ACL
(``docker/redis/start-redis.sh``) allows no ``EVAL``. Redis failures raise :class:`~service.store.StoreUnavailable`.

Job slots: :meth:`admit` takes one of ``limit`` slots, at most ``quota`` per client, or names the count it would
exceed (Redis: one ``MULTI`` adds, then counts; over a count the job takes itself out again, so concurrent
submissions never overshoot); :meth:`release` frees it; a lost job's slot frees itself after ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from .store import StoreUnavailable

STREAM = "kind:jobs:queue"
GROUP = "kind-jobs"
SLOTS = "kind:jobs:slots"


@dataclasses.dataclass
class Lease:
    entry_id: str
    job_id: str
    scope: str
    client: str
    consumer: str


Refusal = Literal["all", "client"] | None  # admit's answer: which count a refused job would exceed, if any


@dataclasses.dataclass
class _Held:
    lease: Lease
    lease_s: float
    until: float


@dataclasses.dataclass
class MemoryQueue:
    """The queue in this process; leases follow ``clock``."""

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
    """The queue in a Redis Stream with one consumer group."""

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
        # take the slot, then count: a submission over the limit sees itself counted and gives its slot back
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
