"""The Redis channel layer, with a connection pool that waits and a receive buffer that shrinks.

- redis-py 8's asyncio `ConnectionPool` raises `MaxConnectionsError` when all its connections are
  in use. When a 10,000-tab session logs out, every socket leaves its groups at once, and the layer
  ran out of connections at any size we gave it: sockets died with 1011 and group memberships were
  left behind. A `BlockingConnectionPool` makes the extra operations wait their turn.
- channels-redis keeps a per-channel queue in `receive_buffer` and, on some paths, leaves it there
  after the consumer is gone (django/channels_redis#384, #426): one entry per socket that ever
  connected, so memory never came back after tabs closed. An empty queue is dropped here when its
  consumer's receive is cancelled, which is how every consumer ends.
- The project needs a few group operations beyond the channel-layer API (join or leave several
  groups in one round trip, drop a whole group, count members across processes). The functions
  at the end of this module do them for any Redis layer and for Channels' in-memory layer, so
  callers never ask which layer they have.
- When Redis is unreachable, channels-redis raises in whichever consumer holds the receive lock,
  and every socket of the process dies with 1011 in turn. Here a receive that loses Redis waits
  instead: one probe per process pings Redis every `RETRY_SECONDS` and wakes them all when it
  answers, then runs the recovery callbacks (consumers rejoin their groups, which a restarted or
  flushed Redis has lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from channels_redis.core import RedisChannelLayer
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

# What an unreachable, restarting or overloaded Redis raises.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
RETRY_SECONDS = 1.0


class BlockingPoolRedisChannelLayer(RedisChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._redis_back: asyncio.Event | None = None  # set while Redis is unreachable
        self._probe: asyncio.Task | None = None
        self.recovery_callbacks: set[Callable[[], Awaitable[None]]] = set()
        self._sentinel_key = f"{self.prefix}:live-sentinel:{self.client_prefix}"
        self._sentinel_set = False

    async def redis_was_reset(self) -> bool:
        """Whether Redis lost this process's data (a restart or a flush) since the last call.

        A restart is invisible otherwise: redis-py reconnects by itself and the blocking receive
        goes on, while every group membership is gone. A sentinel key that disappears tells."""
        created = await self.connection(0).set(self._sentinel_key, 1, nx=True)
        first, self._sentinel_set = not self._sentinel_set, True
        return bool(created) and not first

    def create_pool(self, index: int) -> BlockingConnectionPool:
        """Runs once per shard and event loop. Hosts are dicts with an "address" URL; the rest
        are pool and connection options (`max_connections`, `timeout` to wait for one, ...)."""
        host = dict(self.hosts[index])
        return BlockingConnectionPool.from_url(host.pop("address"), **host)

    async def receive(self, channel: str) -> dict:
        while True:
            try:
                return await super().receive(channel)
            except asyncio.CancelledError:
                queue = self.receive_buffer.get(channel)
                if queue is not None and queue.empty():
                    del self.receive_buffer[channel]
                raise
            except REDIS_DOWN:
                await self._wait_for_redis()

    async def _wait_for_redis(self) -> None:
        if self._redis_back is None:
            logger.warning("Redis is unreachable; sockets stay open and wait for it")
            self._redis_back = asyncio.Event()
            self._probe = asyncio.create_task(self._probe_until_back(self._redis_back))
        await self._redis_back.wait()

    async def _probe_until_back(self, back: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            try:
                await self.connection(0).ping()
                break
            except REDIS_DOWN:
                continue
        logger.warning("Redis is reachable again; sockets rejoin their groups")
        self._redis_back = None
        back.set()
        for callback in list(self.recovery_callbacks):
            try:
                await callback()
            except Exception:
                logger.exception("a recovery callback failed")


# --- Group operations beyond the channel-layer API, for Redis and in-memory layers ----------------


def _keys_by_shard(layer: RedisChannelLayer, groups: list[str]) -> dict[int, list[str]]:
    shards: dict[int, list[str]] = {}
    for group in groups:
        assert layer.require_valid_group_name(group), "Group name not valid"
        shards.setdefault(layer.consistent_hash(group), []).append(layer._group_key(group))
    return shards


async def add_to_groups(layer, groups: list[str], channel: str) -> None:
    """`group_add` for several groups, in one round trip per Redis shard (a socket joins up to
    three at connect; one at a time cost six round trips)."""
    if not isinstance(layer, RedisChannelLayer):
        for group in groups:
            await layer.group_add(group, channel)
        return
    now = time.time()
    for index, keys in _keys_by_shard(layer, groups).items():
        async with layer.connection(index).pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zadd(key, {channel: now})
                pipe.expire(key, layer.group_expiry)
            await pipe.execute()


async def discard_from_groups(layer, groups: list[str], channel: str) -> None:
    """`group_discard` for several groups, in one round trip per Redis shard."""
    if not isinstance(layer, RedisChannelLayer):
        for group in groups:
            await layer.group_discard(group, channel)
        return
    for index, keys in _keys_by_shard(layer, groups).items():
        async with layer.connection(index).pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrem(key, channel)
            await pipe.execute()


async def clear_group(layer, group: str) -> None:
    """Drop a whole group (an ended login's) with one command, not one per member."""
    if isinstance(layer, RedisChannelLayer):
        await layer.connection(layer.consistent_hash(group)).delete(layer._group_key(group))
    else:
        getattr(layer, "groups", {}).pop(group, None)


async def group_sizes(layer, groups: list[str]) -> list[int]:
    """How many sockets each group holds right now, across every process."""
    if not isinstance(layer, RedisChannelLayer):
        return [len(getattr(layer, "groups", {}).get(group, ())) for group in groups]
    # A group is a sorted set of channel names scored by join time, shared by every process;
    # members older than group_expiry are dead (channels-redis's own rule).
    oldest = time.time() - layer.group_expiry

    async def size(group: str) -> int:
        connection = layer.connection(layer.consistent_hash(group))
        return await connection.zcount(layer._group_key(group), oldest, "+inf")

    return list(await asyncio.gather(*(size(group) for group in groups)))
