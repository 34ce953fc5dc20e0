"""Django's Redis cache, with one connection pool per process.

Django keeps a cache instance per async context (`caches` is context-local). Under Channels every
socket runs in a context of its own, and the session lookup at connect (`cached_db`, `cache`)
gave each socket its own `RedisCache`, its own pool and one Redis connection for as long as the
socket lived: 10,000 tabs reached Redis's 10,000-client limit in the benchmark. The client (and
its thread-safe redis-py pools) is shared here by every instance with the same configuration.
Sockets now also share one instance (made at startup in asgi_project/asgi.py); sync threads still
make their own, and share the client.

Django's client also makes a new redis-py `Redis` for every command: 61 µs here, against 93 µs
for a whole `GET` round trip on loopback (mostly its table of response callbacks). A `Redis` is
thread-safe (each command takes a connection from the pool), so the client here keeps one per
pool.
"""

from __future__ import annotations

import threading

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_clients: dict[str, object] = {}
_lock = threading.Lock()


class ReusingRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._redis_by_pool: dict[object, object] = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._redis_by_pool.get(pool)
        if client is None:
            client = self._redis_by_pool.setdefault(pool, self._client(connection_pool=pool))
        return client


class SharedRedisCache(RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient

    @cached_property
    def _cache(self):
        key = repr((self._servers, sorted(self._options.items())))
        with _lock:
            if key not in _clients:
                _clients[key] = self._class(self._servers, **self._options)
            return _clients[key]
