"""The job queue: durable entries, leases that lapse, and the job slots each client holds.

Two backends with one interface: :class:`RedisQueue` (a Redis Stream and its consumer group, shared by every
replica) and :class:`MemoryQueue` (in-process, for a single replica without Redis). An entry names a job
(id, store scope, client). :meth:`take` hands the next entry to one consumer under a lease: first an entry whose
lease lapsed (its taker crashed, was killed, or lost Redis for longer than the lease), else a new one, waiting
up to ``block_s`` for one to arrive — waiting work waits here, not in retries. The taker renews the lease while
it works (:meth:`renew` answers False once another consumer has taken the entry over) and acknowledges it when
the job's terminal state is written (:meth:`ack`), so every job ends at least once.

With Redis: ``XREADGROUP`` takes new entries, ``XAUTOCLAIM`` takes entries idle for longer than the lease, and a
renewal is an ``XCLAIM … JUSTID`` by the owner (which resets the entry's idle time) after ``XPENDING`` showed it
still owns the entry. No scripts: the Redis ACL (``docker/redis/start-redis.sh``) allows no ``EVAL``. Redis
failures surface as :class:`~service.store.StoreUnavailable`: transient, the caller retries.

Job slots: :meth:`admit` reserves one of ``limit`` slots for a job, at most ``quota`` of them per client (with
Redis: one ``MULTI`` adds the job to both sorted sets and counts them; over either count it takes itself out
again, so concurrent submissions never overshoot), and :meth:`release` frees it when the job ends; a slot whose
job was lost frees itself after ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .store import StoreUnavailable

STREAM = "kind:jobs:queue"
GROUP = "kind-jobs"
SLOTS = "kind:jobs:slots"


@dataclass
class Lease:
    """One entry handed to one consumer: the entry's id in the queue and its fields."""

    entry_id: str
    job_id: str
    scope: str
    client: str
    consumer: str


class Full(Exception):
    """No job slot: ``whole`` when every slot is taken, else this client holds its share."""

    def __init__(self, whole: bool) -> None:
        super().__init__("all job slots are taken" if whole else "this client holds its share of the job slots")
        self.whole = whole


class JobQueue(Protocol):
    backend: str

    async def push(self, job_id: str, scope: str, client: str) -> None: ...

    async def take(self, consumer: str, lease_s: float, block_s: float) -> Lease | None: ...

    async def renew(self, lease: Lease) -> bool: ...

    async def ack(self, lease: Lease) -> None: ...

    async def let_go(self, lease: Lease, lease_s: float) -> None: ...

    async def admit(self, job_id: str, client: str, limit: int, quota: int, ttl_s: float) -> None: ...

    async def release(self, job_id: str, client: str) -> None: ...

    async def close(self) -> None: ...


@dataclass
class _Held:
    fields: dict[str, str]
    consumer: str
    until: float


@dataclass
class MemoryQueue:
    """The queue in this process (see the module docstring); leases follow ``clock``."""

    clock: Any = time.monotonic
    backend: str = "memory"
    _new: collections.deque[tuple[str, dict[str, str]]] = field(default_factory=collections.deque)
    _held: dict[str, _Held] = field(default_factory=dict)
    _leases: dict[str, float] = field(default_factory=dict)
    _slots: dict[str, tuple[str, float]] = field(default_factory=dict)  # job id → (client, expiry)
    _count: int = 0
    _arrived: asyncio.Event | None = None  # made in the event loop that takes

    def _event(self) -> asyncio.Event:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        return self._arrived

    async def push(self, job_id: str, scope: str, client: str) -> None:
        self._count += 1
        self._new.append((str(self._count), {"job": job_id, "scope": scope, "client": client}))
        self._event().set()

    async def take(self, consumer: str, lease_s: float, block_s: float) -> Lease | None:
        end = self.clock() + block_s
        while True:
            now = self.clock()
            for entry_id, held in self._held.items():
                if held.until <= now:
                    return self._lease(entry_id, held.fields, consumer, lease_s)
            if self._new:
                entry_id, fields = self._new.popleft()
                return self._lease(entry_id, fields, consumer, lease_s)
            if now >= end:
                return None
            arrived = self._event()
            arrived.clear()
            with contextlib.suppress(TimeoutError):  # a lapsed lease is noticed within a second anyway
                await asyncio.wait_for(arrived.wait(), min(end - now, 1.0))

    def _lease(self, entry_id: str, fields: dict[str, str], consumer: str, lease_s: float) -> Lease:
        self._held[entry_id] = _Held(fields, consumer, self.clock() + lease_s)
        self._leases[entry_id] = lease_s
        return Lease(entry_id, fields["job"], fields["scope"], fields["client"], consumer)

    async def renew(self, lease: Lease) -> bool:
        held = self._held.get(lease.entry_id)
        if held is None or held.consumer != lease.consumer:
            return False
        held.until = self.clock() + self._leases[lease.entry_id]
        return True

    async def ack(self, lease: Lease) -> None:
        held = self._held.get(lease.entry_id)
        if held is not None and held.consumer == lease.consumer:
            del self._held[lease.entry_id]
            self._leases.pop(lease.entry_id, None)

    async def let_go(self, lease: Lease, lease_s: float) -> None:
        held = self._held.get(lease.entry_id)
        if held is not None and held.consumer == lease.consumer:
            held.until = self.clock()
            self._event().set()

    async def admit(self, job_id: str, client: str, limit: int, quota: int, ttl_s: float) -> None:
        now = time.time()
        for old in [k for k, (_, expiry) in self._slots.items() if expiry <= now]:
            del self._slots[old]
        if len(self._slots) >= limit:
            raise Full(whole=True)
        if sum(1 for c, _ in self._slots.values() if c == client) >= quota:
            raise Full(whole=False)
        self._slots[job_id] = (client, now + ttl_s)

    async def release(self, job_id: str, client: str) -> None:
        self._slots.pop(job_id, None)

    async def close(self) -> None:
        self._new.clear()
        self._held.clear()


def _client_slots(client: str) -> str:
    return f"{SLOTS}:{hashlib.sha256(client.encode()).hexdigest()[:24]}"


class RedisQueue:
    """The queue in a Redis Stream with one consumer group (see the module docstring)."""

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
        idle_ms = int(lease_s * 1000)
        claimed = await self._guard(self._client.xautoclaim(STREAM, GROUP, consumer, idle_ms, "0-0", count=1))
        entries = claimed[1]
        if not entries:
            read = await self._guard(
                self._client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1, block=int(block_s * 1000))
            )
            entries = read[0][1] if read else []
        for entry_id, raw in entries:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            if "job" in fields:
                return Lease(
                    entry_id.decode(), fields["job"], fields.get("scope", ""), fields.get("client", ""), consumer
                )
            await self._guard(self._client.xack(STREAM, GROUP, entry_id))  # not an entry of ours
        return None

    async def _owns(self, lease: Lease) -> bool:
        pending = await self._guard(
            self._client.xpending_range(STREAM, GROUP, lease.entry_id, lease.entry_id, 1, consumername=lease.consumer)
        )
        return bool(pending)

    async def renew(self, lease: Lease) -> bool:
        # checked, then claimed: another consumer taking the entry in between is seen at the next renewal
        if not await self._owns(lease):
            return False
        await self._guard(self._client.xclaim(STREAM, GROUP, lease.consumer, 0, [lease.entry_id], justid=True))
        return True

    async def ack(self, lease: Lease) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.xack(STREAM, GROUP, lease.entry_id)
        pipe.xdel(STREAM, lease.entry_id)
        await self._guard(pipe.execute())

    async def let_go(self, lease: Lease, lease_s: float) -> None:
        if await self._owns(lease):
            idle = int(lease_s * 1000) + 1
            claim = self._client.xclaim(STREAM, GROUP, lease.consumer, 0, [lease.entry_id], idle=idle, justid=True)
            await self._guard(claim)

    async def admit(self, job_id: str, client: str, limit: int, quota: int, ttl_s: float) -> None:
        # take the slot, then count: a submission over the limit sees itself counted and gives its slot back
        now = time.time()
        mine = _client_slots(client)
        pipe = self._client.pipeline(transaction=True)
        for key in (SLOTS, mine):
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {job_id: now + ttl_s})
            pipe.expireat(key, int(now + ttl_s) + 1)
            pipe.zcard(key)
        counts = await self._guard(pipe.execute())
        whole, own = counts[3], counts[7]
        if whole > limit or own > quota:
            await self.release(job_id, client)
            raise Full(whole=whole > limit)

    async def release(self, job_id: str, client: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(SLOTS, job_id)
        pipe.zrem(_client_slots(client), job_id)
        await self._guard(pipe.execute())

    async def close(self) -> None:
        await self._client.aclose()
