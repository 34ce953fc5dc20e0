"""The Redis channel layer, with a connection pool that waits instead of raising.

redis-py 8's asyncio `ConnectionPool` raises `MaxConnectionsError` when all its connections are
in use. When a 10,000-tab session logs out, every socket leaves its groups at once, and the layer
ran out of connections at any size we gave it: sockets died with 1011 and group memberships were
left behind. A `BlockingConnectionPool` makes the extra operations wait their turn.
"""

from __future__ import annotations

from channels_redis.core import RedisChannelLayer
from redis.asyncio import BlockingConnectionPool


class BlockingPoolRedisChannelLayer(RedisChannelLayer):
    def create_pool(self, index: int) -> BlockingConnectionPool:
        """Runs once per shard and event loop. Hosts are dicts with an "address" URL; the rest
        are pool and connection options (`max_connections`, `timeout` to wait for one, ...)."""
        host = dict(self.hosts[index])
        return BlockingConnectionPool.from_url(host.pop("address"), **host)
