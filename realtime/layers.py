"""The Redis channel layer, with a connection pool that waits and a receive buffer that shrinks.

- redis-py 8's asyncio `ConnectionPool` raises `MaxConnectionsError` when all its connections are
  in use. When a 10,000-tab session logs out, every socket leaves its groups at once, and the layer
  ran out of connections at any size we gave it: sockets died with 1011 and group memberships were
  left behind. A `BlockingConnectionPool` makes the extra operations wait their turn.
- channels-redis keeps a per-channel queue in `receive_buffer` and, on some paths, leaves it there
  after the consumer is gone (django/channels_redis#384, #426): one entry per socket that ever
  connected, so memory never came back after tabs closed. An empty queue is dropped here when its
  consumer's receive is cancelled, which is how every consumer ends.
"""

from __future__ import annotations

import asyncio

from channels_redis.core import RedisChannelLayer
from redis.asyncio import BlockingConnectionPool


class BlockingPoolRedisChannelLayer(RedisChannelLayer):
    def create_pool(self, index: int) -> BlockingConnectionPool:
        """Runs once per shard and event loop. Hosts are dicts with an "address" URL; the rest
        are pool and connection options (`max_connections`, `timeout` to wait for one, ...)."""
        host = dict(self.hosts[index])
        return BlockingConnectionPool.from_url(host.pop("address"), **host)

    async def receive(self, channel: str) -> dict:
        try:
            return await super().receive(channel)
        except asyncio.CancelledError:
            queue = self.receive_buffer.get(channel)
            if queue is not None and queue.empty():
                del self.receive_buffer[channel]
            raise
