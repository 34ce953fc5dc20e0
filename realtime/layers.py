"""The Redis channel layer, with a connection pool that waits and a receive buffer that shrinks.

- redis-py 8's asyncio `ConnectionPool` raises `MaxConnectionsError` when all its connections are
  in use. When a 10,000-tab session logs out, every socket leaves its groups at once, and the layer
  ran out of connections at any size we gave it: sockets died with 1011 and group memberships were
  left behind. A `BlockingConnectionPool` makes the extra operations wait their turn.
- channels-redis has every consumer of a process that waits for a message race for one lock, with
  two new tasks per consumer each time any of them gets a message, and it keeps a queue in
  `receive_buffer` for channels whose consumer has gone (django/channels_redis#384, #426). Here
  one reader task per process takes the process's messages from Redis and puts each in its
  channel's queue; a consumer just waits on its queue, which exists from `new_channel` until its
  receive is cancelled (how every consumer ends). Messages for a channel without a queue are
  dropped. That queue is a `ChannelQueue`, not channels-redis's `asyncio.Queue`: an idle socket's
  queue is empty, and `asyncio.Queue`'s three deques and an `Event` cost 3 KiB of it per socket.
  Under Daphne that queue is the socket's input queue from the server (`new_channel_into`), so
  the consumer waits on one queue for its client's messages and its events alike. The reader
  pops without channels-redis's backup queue (`_pop`), and `group_send` takes one round trip
  instead of four (on one Redis; two per shard on several).
- The project needs a few group operations beyond the channel-layer API (join or leave several
  groups in one round trip, drop a whole group, count members across processes). The functions
  at the end of this module do them for any Redis layer and for Channels' in-memory layer, so
  callers never ask which layer they have.
- When Redis is unreachable, channels-redis raises in whichever consumer holds the receive lock,
  and every socket of the process dies with 1011 in turn. Here the reader waits instead (as does
  a receive on a channel of its own in Redis): one probe per process pings Redis every
  `RETRY_SECONDS` and wakes them all when it answers, then runs the recovery callbacks (consumers
  rejoin their groups, which a restarted or flushed Redis has lost).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from channels_redis.core import RedisChannelLayer
from channels_redis.serializers import MsgPackSerializer
from redis.asyncio import BlockingConnectionPool
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from realtime import memory

logger = logging.getLogger(__name__)

# What an unreachable, restarting or overloaded Redis raises.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
RETRY_SECONDS = 1.0


# channels-redis's group send script, which also drops the expired messages of each key first
# (it did that in a round trip of its own): KEYS are message keys, ARGV their messages, then their
# capacities, then the time and the message expiry. A key already holding its capacity of
# messages gets nothing (a consumer that stopped reading).
_GROUP_SEND_LUA = """
local now, expiry = tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV])
local over_capacity = 0
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, math.floor(now) - expiry)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
"""


# A whole `group_send_many` in one script, where every key lives on one Redis (`_in_one_script`):
# KEYS are the groups messaged, one per message in order, then the groups to delete; ARGV is the
# layer's key prefix, the time, the oldest live member's time, the message expiry and capacity,
# then each message serialized up to its channel list (`_heads`). Per group: drop the expired
# members, read the rest; then delete the ended groups; then per message and process channel
# (the member's name up to its "!"), `_GROUP_SEND_LUA`'s rules, with the message completed by
# the list of that process's members (msgpack, by Redis's own cmsgpack). Returns how many process
# channels were over capacity. The process channels' keys are not in KEYS, which only a
# Redis Cluster would refuse; the layer has one plain Redis when it takes this way.
_GROUP_SEND_ONE_TRIP_LUA = """
local prefix, now, oldest = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local expiry, capacity = tonumber(ARGV[4]), tonumber(ARGV[5])
local sends = #ARGV - 5
local members = {}
for i = 1, sends do
    if members[KEYS[i]] == nil then
        redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, oldest)
        members[KEYS[i]] = redis.call('ZRANGE', KEYS[i], 0, -1)
    end
end
for i = sends + 1, #KEYS do
    redis.call('DEL', KEYS[i])
end
local over_capacity = 0
for i = 1, sends do
    local channels, order = {}, {}
    for _, channel in ipairs(members[KEYS[i]]) do
        local bang = string.find(channel, '!', 1, true)
        local key = prefix .. (bang and string.sub(channel, 1, bang) or channel)
        if channels[key] == nil then
            channels[key] = {}
            order[#order + 1] = key
        end
        table.insert(channels[key], channel)
    end
    for _, key in ipairs(order) do
        redis.call('ZREMRANGEBYSCORE', key, 0, math.floor(now) - expiry)
        if redis.call('ZCOUNT', key, '-inf', '+inf') < capacity then
            redis.call('ZADD', key, now, ARGV[5 + i] .. cmsgpack.pack(channels[key]))
            redis.call('EXPIRE', key, expiry)
        else
            over_capacity = over_capacity + 1
        end
    end
end
return over_capacity
"""


@functools.cache
def _driver_info() -> DriverInfo:
    return DriverInfo()


# The joins of one batch (`_Joins`): KEYS are group keys, one per join in the order asked; ARGV is
# the time, the group expiry, the oldest live member's time, then per join its channel and
# whether to count. Returns the counts asked for, in order; each group's expiry is set once.
_JOIN_LUA = """
local now, expiry, oldest = ARGV[1], ARGV[2], ARGV[3]
local counts, expiring = {}, {}
for i = 1, #KEYS do
    redis.call('ZADD', KEYS[i], now, ARGV[2 + 2 * i])
    if ARGV[3 + 2 * i] == '1' then
        counts[#counts + 1] = redis.call('ZCOUNT', KEYS[i], oldest, '+inf')
    end
    expiring[KEYS[i]] = true
end
for key in pairs(expiring) do
    redis.call('EXPIRE', key, expiry)
end
return counts
"""


class ChannelQueue:
    """Messages waiting for one reader, and the reader waiting for them: `asyncio.Queue`'s
    `put_nowait` and `get` for a single reader, in about 150 bytes instead of 3 KiB while empty
    (as an idle socket's queues are; `realtime.daphne_fixes` uses it for Daphne's input queue
    too). When `capacity` messages wait, the oldest is dropped, as channels-redis's
    `BoundedQueue` does (a consumer that stopped reading); `None` keeps them all."""

    __slots__ = ("_items", "_waiter", "capacity")

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._items: collections.deque | None = None  # only while messages wait
        self._waiter: asyncio.Future | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def put_nowait(self, message: Any) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
            return
        if self._items is None:
            self._items = collections.deque()
        if self.capacity is not None and len(self._items) >= self.capacity:
            self._items.popleft()
        self._items.append(message)

    async def get(self) -> Any:
        if self._items:
            message = self._items.popleft()
            if not self._items:
                self._items = None  # Daphne's first message waits in one; an empty one is 760 B
            return message
        if self._waiter is not None:
            raise RuntimeError("a ChannelQueue has one reader")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            return await self._waiter
        finally:
            self._waiter = None


_layers: weakref.WeakSet = weakref.WeakSet()  # every BlockingPoolRedisChannelLayer of the process


@memory.at_trim
def _compact_receive_buffers() -> None:
    """After a wave of sockets, each layer's map of this process's channels is rebuilt for the
    channels left: it kept a table sized for every socket of the wave."""
    for layer in _layers:
        layer.receive_buffer = memory.compacted(layer.receive_buffer)


class BlockingPoolRedisChannelLayer(RedisChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _layers.add(self)
        self.receive_buffer = collections.defaultdict(
            functools.partial(ChannelQueue, self.capacity)
        )
        self._redis_back: asyncio.Event | None = None  # set while Redis is unreachable
        self._probe: asyncio.Task | None = None
        self.recovery_callbacks: set[Callable[[], Awaitable[None]]] = set()
        self._sentinel_key = f"{self.prefix}:live-sentinel:{self.client_prefix}"
        self._sentinel_set = False
        self._reader: asyncio.Task | None = None

    async def redis_was_reset(self) -> bool:
        """Whether Redis lost this process's data (a restart or a flush) since the last call.

        A restart is invisible otherwise: redis-py reconnects by itself and the blocking receive
        goes on, while every group membership is gone. A sentinel key that disappears tells."""
        created = await self.connection(0).set(self._sentinel_key, 1, nx=True)
        first, self._sentinel_set = not self._sentinel_set, True
        return bool(created) and not first

    def create_pool(self, index: int) -> BlockingConnectionPool:
        """Runs once per shard and event loop. Hosts are dicts with an "address" URL; the rest
        are pool and connection options (`max_connections`, `timeout` to wait for one, ...).

        Every new connection resolved redis-py's version for `CLIENT SETINFO` from the package's
        metadata (`importlib.metadata`): 0.9 ms of the event loop each, 4% of it in a storm of
        logouts that opened connections (py-spy). It is resolved once here."""
        host = dict(self.hosts[index])
        host.setdefault("driver_info", _driver_info())
        return BlockingConnectionPool.from_url(host.pop("address"), **host)

    async def new_channel(self, prefix: str = "specific.") -> str:
        channel = await super().new_channel(prefix)
        self.receive_buffer[channel]  # receives from now on (a defaultdict: this creates it)
        return channel

    async def receive(self, channel: str) -> dict:
        if "!" not in channel:  # a channel of its own in Redis: channels-redis's plain receive
            while True:
                try:
                    return await super().receive(channel)
                except REDIS_DOWN:
                    await self._wait_for_redis()
        # A channel of this process: one reader task takes every message from Redis and puts it
        # in its channel's queue, where the consumer waits. channels-redis has every waiting
        # consumer race for a lock instead, with two new tasks each time any of them gets a
        # message: when 1,000 tabs got their logouts at once, that took a third of the process.
        assert self.require_valid_channel_name(channel)
        queue = self.receive_buffer[channel]
        self._ensure_reader(self.non_local_name(channel))
        try:
            return await queue.get()
        except asyncio.CancelledError:
            # The consumer is gone (or its caller gave up): its queue goes, and messages that
            # arrive for it later are dropped instead of kept for nobody.
            self.stop_delivering(channel)
            raise

    async def new_channel_into(self, queue: ChannelQueue, prefix: str = "specific.") -> str:
        """A new channel of this process whose messages the reader puts straight into `queue`,
        a consumer's own input queue from its server (realtime.consumers): no `receive` is
        needed for it. `stop_delivering(channel)` ends that; until then the queue is unbounded
        (its consumer reads it all the time, as it must for its client's messages)."""
        channel = await RedisChannelLayer.new_channel(self, prefix)
        self.receive_buffer[channel] = queue
        self._ensure_reader(self.non_local_name(channel))
        return channel

    def stop_delivering(self, channel: str) -> None:
        """Forget a channel's queue: messages that arrive for it later are dropped."""
        self.receive_buffer.pop(channel, None)
        if not self.receive_buffer and self._reader is not None:
            self._reader.cancel()  # nothing to read for; the next receive starts another
            self._reader = None

    def _ensure_reader(self, process_channel: str) -> None:
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done() or self._reader.get_loop() is not loop:
            self._reader = loop.create_task(self._read(process_channel))

    async def _read(self, process_channel: str) -> None:
        """Move this process's messages from Redis into the channels' queues, one at a time
        (a logout to a group is one message naming every local member)."""
        while True:
            try:
                channels, message = await self._pop(process_channel)
            except REDIS_DOWN:
                await self._wait_for_redis()
                continue
            except Exception:
                logger.exception("could not read this process's messages from Redis")
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for channel in channels if isinstance(channels, list) else [channels]:
                queue = self.receive_buffer.get(channel)
                if queue is not None:  # else its consumer has gone
                    queue.put_nowait(message)  # a full queue drops its oldest

    async def _pop(self, process_channel: str) -> tuple[list[str] | str, dict]:
        """The next message for this process's channels, and the channels it is for:
        channels-redis's `receive_single` without its backup queue.

        That copied each message to a backup before handing it over, deleted the copy afterwards,
        and put back what was left before the next pop: three more round trips per message, one
        of them before the message reached any socket. The backup guards a message popped by a
        receive that is then cancelled. Only this process reads its channel (the name is its own,
        `client_prefix`), and its reader is cancelled only when no socket is left to deliver to,
        or when the process ends: in both cases nobody would read the backup."""
        connection = self.connection(self.consistent_hash(process_channel))
        key = self.prefix + process_channel
        while True:
            popped = await connection.bzpopmin(key, timeout=self.brpop_timeout)
            if popped is not None:
                break
        message = self.deserialize(popped[1])
        return message.pop("__asgi_channel__", process_channel), message

    async def group_send(self, group: str, message: dict) -> None:
        """channels-redis's `group_send` in one round trip instead of four (`group_send_many`)."""
        await self.group_send_many([(group, message)])

    async def group_send_many(
        self, sends: list[tuple[str, dict]], drop: Collection[str] = ()
    ) -> None:
        """Several group messages, however many, in one round trip on one Redis and two per
        shard on several; the groups in `drop` are deleted once their members are read (ended
        logins' groups).

        On one Redis, one script does it all (`_GROUP_SEND_ONE_TRIP_LUA`): once its request is
        written, Redis delivers, whatever this process does next. With two round trips, the
        second waited for this process to read the first reply: when twenty logouts arrived at
        once, their messages to the other processes went out only as the requests' own work
        let the event loop through, 20 to 480 ms after their logouts had begun
        (docs/performance.md, "A group message in one round trip").

        On several shards, first, per shard of the groups, one pipeline drops each group's
        expired members and reads the rest. Then, per shard of the messages, one script (by its
        SHA, not its text) drops each message key's expired messages and adds the new one where
        the key has room (`_GROUP_SEND_LUA`). The keys and the messages are made by
        channels-redis's own `_map_channel_keys_to_connection`: one message per process and
        group, naming its sockets. channels-redis took four round trips per group; a logout
        (its login's message, the sessions pages' notice, the group's deletion) had taken five."""
        groups = [group for group, _ in sends]
        expired = int(time.time()) - self.group_expiry
        if self._in_one_script():
            keys = [key for keys in _keys_by_shard(self, [*groups, *drop]).values() for key in keys]
            args = [self.prefix, time.time(), expired, self.expiry, self.capacity]
            script = self.connection(0).register_script(_GROUP_SEND_ONE_TRIP_LUA)
            over_capacity = await script(keys=keys, args=args + self._heads(sends))
            self._log_over_capacity(over_capacity, groups)
            return
        members: dict[str, list[bytes]] = {}
        for index, keys in _keys_by_shard(self, list(dict.fromkeys([*groups, *drop]))).items():
            async with self.connection(index).pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zremrangebyscore(key, min=0, max=expired)
                    pipe.zrange(key, 0, -1)
                for group in drop:
                    if self.consistent_hash(group) == index:
                        pipe.delete(self._group_key(group))
                replies = await pipe.execute()
            members.update(zip(keys, replies[1 : 2 * len(keys) : 2], strict=True))
        # Per shard of the messages: the keys, then their messages, then their capacities.
        scripts: dict[int, tuple[list[str], list[bytes], list[int]]] = {}
        for group, message in sends:
            channels = [member.decode("utf8") for member in members[self._group_key(group)]]
            by_shard, packed, capacity = self._map_channel_keys_to_connection(channels, message)
            for index, keys in by_shard.items():
                shard_keys, shard_messages, shard_capacities = scripts.setdefault(
                    index, ([], [], [])
                )
                shard_keys.extend(keys)
                shard_messages.extend(packed[key] for key in keys)
                shard_capacities.extend(capacity[key] for key in keys)
        for index, (keys, shard_messages, shard_capacities) in scripts.items():
            script = self.connection(index).register_script(_GROUP_SEND_LUA)
            args = [*shard_messages, *shard_capacities, time.time(), self.expiry]
            over_capacity = await script(keys=keys, args=args)
            self._log_over_capacity(over_capacity, groups)

    def _in_one_script(self) -> bool:
        """Whether `group_send_many` can be one script: every key on one Redis, and messages in
        channels-redis's default format (msgpack, not encrypted) with one capacity for all."""
        serializer = self._serializer
        return (
            self.ring_size == 1
            and not self.channel_capacity
            and isinstance(serializer, MsgPackSerializer)
            and serializer.crypter is None
        )

    def _heads(self, sends: list[tuple[str, dict]]) -> list[bytes]:
        """Each message serialized as channels-redis does it (its random prefix, then msgpack)
        with its channel list left off: the map's last key, `__asgi_channel__`, packed with a nil
        value that is then cut, for the script to append each process's channels."""
        heads = []
        for _, message in sends:
            packed = self.serialize({**message, "__asgi_channel__": None})
            assert packed.endswith(b"\xc0"), "msgpack packs None as 0xc0"
            heads.append(packed[:-1])
        return heads

    @staticmethod
    def _log_over_capacity(over_capacity: int, groups: list[str]) -> None:
        if over_capacity:
            logger.info(
                "%s process channels over capacity in groups %s", over_capacity, ", ".join(groups)
            )

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
    """`group_add` for several groups. Sockets of a process that join at the same moment (a burst
    of connects, every socket rejoining after Redis came back) share one round trip per Redis
    shard (`_Joins`); a socket joining alone had cost six round trips, one group at a time."""
    await _add(layer, groups, channel, count=False)


async def join_and_count(layer, groups: list[str], channel: str) -> list[int]:
    """`add_to_groups`, and how many sockets each group then holds across every process (this
    one included), in the same round trip: a connect checks its socket limits with it, where
    counting first cost a round trip of its own."""
    return await _add(layer, groups, channel, count=True)


async def _add(layer, groups: list[str], channel: str, *, count: bool) -> list[int]:
    if not isinstance(layer, RedisChannelLayer):
        for group in groups:
            await layer.group_add(group, channel)
        return await group_sizes(layer, groups) if count else []
    sizes = await _Joins.current(layer).add(groups, channel, count)
    return [sizes[layer._group_key(group)] for group in groups] if count else []


async def discard_from_groups(layer, groups: list[str], channel: str) -> None:
    """`group_discard` for several groups. Sockets of a process that leave at the same moment
    (a logout closing a thousand tabs) share one round trip per Redis shard: one `ZREM` per group
    naming all of them (`_Discards`)."""
    if not isinstance(layer, RedisChannelLayer):
        for group in groups:
            await layer.group_discard(group, channel)
        return
    await _Discards.current(layer).add(groups, channel)


class _Batch:
    """Group operations asked for in one turn of the event loop, sent together after it: one
    round trip per Redis shard (`_send_shard`), whose outcome every asker awaits."""

    _sending: set[asyncio.Task] = set()  # keeps batches alive until sent

    def __init__(self, layer: RedisChannelLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer, self.loop = layer, loop
        self.waiters: list[asyncio.Future] = []
        loop.call_soon(self._send)  # after every operation asked for in this turn

    _open_attribute: str  # the layer's attribute holding this kind's batch until it is sent

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._open_attribute = f"_live_{cls.__name__}"  # made once, not for every join or leave

    @classmethod
    def current(cls, layer: RedisChannelLayer):
        """The batch of this kind still open in this turn, or a new one."""
        loop = asyncio.get_running_loop()
        batch = getattr(layer, cls._open_attribute, None)
        if batch is None or batch.loop is not loop:
            batch = cls(layer, loop)
            setattr(layer, cls._open_attribute, batch)
        return batch

    def _wait(self) -> asyncio.Future:
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def _send(self) -> None:
        # The layer forgets the batch as it is sent, so later operations start a new one. Kept
        # until the next batch replaced it, the last batch of a wave of closes held thousands of
        # channel names and waiters, scattered among the closed sockets' freed memory, which
        # glibc then could not give back.
        if getattr(self.layer, self._open_attribute, None) is self:
            setattr(self.layer, self._open_attribute, None)
        task = self.loop.create_task(self._run())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _shards(self):
        raise NotImplementedError

    async def _send_shard(self, index: int) -> None:
        """Send this batch's operations on Redis shard `index` and take the replies."""
        raise NotImplementedError

    def _result(self, position: int):
        """What the `position`-th waiter gets once every shard has answered."""

    async def _run(self) -> None:
        try:
            for index in self._shards():
                await self._send_shard(index)
        except asyncio.CancelledError:
            for waiter in self.waiters:
                waiter.cancel()
            raise
        except Exception as error:
            for waiter in self.waiters:
                if not waiter.done():  # a waiter cancelled meanwhile (its socket gone) is skipped
                    waiter.set_exception(error)
        else:
            for position, waiter in enumerate(self.waiters):
                if not waiter.done():
                    waiter.set_result(self._result(position))


class _Discards(_Batch):
    """Leaves: one `ZREM` per group naming every channel leaving it.

    One pipeline per socket had every closing socket take a pooled Redis connection (making new
    ones, each reading redis-py's package metadata) for its own two `ZREM`s: when 3,000 tabs of a
    session closed, that was a fifth of the process (py-spy)."""

    def __init__(self, layer: RedisChannelLayer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(layer, loop)
        self.members: dict[int, dict[str, list[str]]] = {}  # shard -> group key -> channels

    def add(self, groups: list[str], channel: str) -> asyncio.Future:
        for index, keys in _keys_by_shard(self.layer, groups).items():
            shard = self.members.setdefault(index, {})
            for key in keys:
                shard.setdefault(key, []).append(channel)
        return self._wait()

    def _shards(self):
        return self.members

    async def _send_shard(self, index: int) -> None:
        async with self.layer.connection(index).pipeline(transaction=False) as pipe:
            for key, channels in self.members[index].items():
                pipe.zrem(key, *channels)
            await pipe.execute()


class _Joins(_Batch):
    """Joins, in one script call per shard (`_JOIN_LUA`): per socket and group a `ZADD` (and a
    `ZCOUNT` when it asks how many members the group then has), in the order asked, so each
    count is what it would be alone; then one `EXPIRE` per group.

    With a pipeline per socket, a burst of connects spent a fifth of the event loop's time in
    redis-py (taking a pooled connection, writing, reading the replies): py-spy, 4,000 tabs.
    A pipeline per batch still spent most of that on each command's packing and reply; a
    script is one command and one reply."""

    def __init__(self, layer: RedisChannelLayer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(layer, loop)
        self.now = time.time()
        # shard -> (waiter position, group key, channel, counted) in the order asked
        self.joins: dict[int, list[tuple[int, str, str, bool]]] = {}
        self.sizes: list[dict[str, int]] = []  # per waiter: group key -> members

    def add(self, groups: list[str], channel: str, count: bool) -> asyncio.Future:
        position = len(self.waiters)
        for index, keys in _keys_by_shard(self.layer, groups).items():
            self.joins.setdefault(index, []).extend((position, k, channel, count) for k in keys)
        self.sizes.append({})
        return self._wait()

    def _shards(self):
        return self.joins

    async def _send_shard(self, index: int) -> None:
        joins = self.joins[index]
        oldest = self.now - self.layer.group_expiry  # older members are dead (as in group_sizes)
        args: list = [self.now, self.layer.group_expiry, oldest]
        for _, _, channel, count in joins:
            args += [channel, int(count)]
        script = self.layer.connection(index).register_script(_JOIN_LUA)
        counts = iter(await script(keys=[key for _, key, _, _ in joins], args=args))
        for position, key, _, count in joins:
            if count:
                self.sizes[position][key] = next(counts)

    def _result(self, position: int) -> dict[str, int]:
        return self.sizes[position]


async def send_to_groups(layer, sends: list[tuple[str, dict]], drop: Collection[str] = ()) -> None:
    """A message to each of several groups, then the groups in `drop` deleted (ended logins'):
    on the project's Redis layer in one round trip (`group_send_many`)."""
    if isinstance(layer, BlockingPoolRedisChannelLayer):
        await layer.group_send_many(sends, drop)
        return
    for group, message in sends:
        await layer.group_send(group, message)
    await clear_groups(layer, list(drop))


async def clear_groups(layer, groups: list[str]) -> None:
    """Drop whole groups (ended logins') with one command per Redis shard, not one per member."""
    if not isinstance(layer, RedisChannelLayer):
        for group in groups:
            getattr(layer, "groups", {}).pop(group, None)
        return
    for index, keys in _keys_by_shard(layer, groups).items():
        await layer.connection(index).delete(*keys)


async def group_sizes(layer, groups: list[str]) -> list[int]:
    """How many sockets each group holds right now, across every process."""
    if not isinstance(layer, RedisChannelLayer):
        return [len(getattr(layer, "groups", {}).get(group, ())) for group in groups]
    # A group is a sorted set of channel names scored by join time, shared by every process;
    # members older than group_expiry are dead (channels-redis's own rule).
    oldest = time.time() - layer.group_expiry
    sizes: dict[str, int] = {}
    for index, keys in _keys_by_shard(layer, groups).items():  # one round trip per shard
        async with layer.connection(index).pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zcount(key, oldest, "+inf")
            sizes.update(zip(keys, await pipe.execute(), strict=True))
    return [sizes[layer._group_key(group)] for group in groups]
